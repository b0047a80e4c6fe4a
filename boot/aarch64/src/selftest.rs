//! The SMMUv3 self-test (`./qemu-run.sh aarch64 --selftest`).
//!
//! Brings up the platform the way the hypervisor does for partitions: the
//! PCIe host from the device tree (ECAM; BARs placed in its MMIO windows,
//! since nobody else does on `virt` with `-kernel`), one [`SmmuV3Unit`] per
//! `arm,smmu-v3` node, StreamIDs through the host's `iommu-map`, the core's
//! [`Hypervisor`] on top with two partitions owning one edu device each.
//! Then the scenario shared with x86_64 ([`sluice_boot::selftest`]): DMA
//! both ways through A's HWPT, the fault after UNMAP with StreamID and
//! address, B's blocked device.
//!
//! `smmu-stage=1|2|auto` (default auto: stage 2 when the SMMU has it)
//! picks the stage; QEMU's `-global arm-smmuv3.stage=1` makes an SMMU
//! without stage 2, which exercises the stage-1 fallback.
//! `tests/qemu/aarch64-selftest.sh` compares the `SMMU-EVENT` lines printed
//! here with QEMU's trace.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use sluice_boot::selftest::{self, BlockedDma, Isolation};
use sluice_kernel::hv::{DeviceConfig, Hypervisor};
use sluice_pci::edu::{self, Edu, EduMmio};
use sluice_pci::{AssignPolicy, Ecam, PciSegment};
use sluice_smmuv3::{SmmuV3Unit, Stage, StagePreference};

use crate::bootinfo::BootInfo;
use crate::dt::PciSpace;
use crate::platform::{self, FrameTables, IdentityRam};
use crate::timer::GenericTimer;

type Unit = SmmuV3Unit<FrameTables, GenericTimer>;
type Hv = Hypervisor<Unit, FrameTables, IdentityRam>;

/// Run the self-test; `Err` says what failed.
pub fn run(boot: &BootInfo) -> Result<(), String> {
    let stage = match boot.option("smmu-stage") {
        None | Some("auto") => StagePreference::Auto,
        Some("1") => StagePreference::Stage1,
        Some("2") => StagePreference::Stage2,
        Some(other) => return Err(format!("smmu-stage={other}: expected 1, 2 or auto")),
    };
    let d = &boot.devices;
    if d.smmus.is_empty() {
        return Err("no arm,smmu-v3 node in the device tree (QEMU: -M virt,iommu=smmuv3)".into());
    }
    let host = d.pci_hosts.first().ok_or("no PCIe host in the device tree")?;

    // Until every SMMU is probed, assume the worst (its first tables are
    // written before IDR0 is read); then clean only for non-coherent ones.
    platform::set_noncoherent_walks(true);
    let mut units = Vec::new();
    for (i, node) in d.smmus.iter().enumerate() {
        if node.size < sluice_smmuv3::regs::MMIO_SIZE as u64 {
            return Err(format!("smmu{i}: register window {:#x} is smaller than two 64 KiB pages", node.size));
        }
        // SAFETY: the device tree names these two 64 KiB pages as an
        // SMMUv3's registers; the final EL2 map covers them as Device
        // memory (below 1 TiB), and only this unit uses them.
        let unit = unsafe { SmmuV3Unit::new(node.base as usize, stage, FrameTables::new(), GenericTimer) }
            .map_err(|e| format!("smmu{i} at {:#x}: {e:?}", node.base))?;
        let c = unit.caps();
        println!(
            "selftest: smmu{i} at {:#x}: S1P {} S2P {} -> stage {}, OAS {} bits, SIDSIZE {} ({}), RIL {}, COHACC {}, dma-coherent {}",
            node.base,
            c.s1p,
            c.s2p,
            if unit.stage() == Stage::Two { 2 } else { 1 },
            c.oas_bits,
            c.sid_bits,
            if unit.two_level() { "2-level stream table" } else { "linear stream table" },
            c.ril,
            c.cohacc,
            node.dma_coherent
        );
        units.push(unit);
    }
    let noncoherent = units.iter().zip(&d.smmus).any(|(u, n)| !u.caps().cohacc || !n.dma_coherent);
    platform::set_noncoherent_walks(noncoherent);
    println!("selftest: table writes cleaned to memory with DC CVAC: {noncoherent} (IDR0.COHACC, dma-coherent)");

    // PCI over ECAM; memory BARs placed in the host's windows.
    // SAFETY: the device tree names this window as the host's ECAM for
    // these buses; the final EL2 map covers it as Device memory (below
    // 1 TiB) and nothing else uses it.
    let ecam = unsafe { Ecam::new(host.ecam_base as usize, host.segment, host.bus_start, host.bus_end) };
    let pci = PciSegment::new(ecam, host.segment, host.bus_start, host.bus_end);
    let mut functions = pci.enumerate();
    // 32-bit windows first: edu's BAR0 is a 32-bit BAR.
    let mut windows: Vec<_> = host.mmio_windows().collect();
    windows.sort_by_key(|w| w.space != PciSpace::Mem32);
    let bus_windows: Vec<_> = windows.iter().map(|w| w.pci_addr..w.pci_addr + w.size).collect();
    let report = pci.assign_bars(&mut functions, &bus_windows, AssignPolicy::UnassignedOnly).map_err(|e| format!("BARs: {e}"))?;
    println!("selftest: PCI: {} functions on segment {}, {} BARs placed", functions.len(), host.segment, report.placed.len());
    let to_cpu = |bus: u64| {
        windows.iter().find(|w| (w.pci_addr..w.pci_addr + w.size).contains(&bus)).map(|w| w.cpu_addr + (bus - w.pci_addr))
    };
    let edus: Vec<_> = sluice_pci::find(&functions, edu::VENDOR_ID, edu::DEVICE_ID).cloned().collect();
    if edus.len() < 2 {
        return Err(format!("two edu devices needed, found {}", edus.len()));
    }

    let mut hv: Hv = Hypervisor::new(units, FrameTables::new(), IdentityRam::new());
    let parts = selftest::add_partitions(&mut hv)?;
    let mut devs = Vec::new();
    for (k, f) in edus.iter().take(2).enumerate() {
        let rid = f.bdf.rid();
        let (smmu, sid) = host.stream_id(rid).ok_or_else(|| format!("edu {}: no iommu-map entry", f.bdf))?;
        let unit = smmu.ok_or_else(|| format!("edu {}: its iommu-map does not name an SMMUv3", f.bdf))?;
        // No reserved regions of the platform: MSIs would be ordinary
        // writes translated by the SMMU (none are given to partitions yet).
        let id = hv
            .add_device(DeviceConfig { partition: parts[k], unit, rid: sid, dma_bits: 28, regions: Vec::new() })
            .map_err(|e| format!("device {}: {e:?}", f.bdf))?;
        let bar0_bus = edu::enable(&pci, f).map_err(|e| format!("edu {}: {e}", f.bdf))?;
        let bar0 = to_cpu(bar0_bus).ok_or_else(|| format!("edu {}: BAR0 {bar0_bus:#x} is in no window", f.bdf))?;
        if !crate::paging::is_mapped(bar0, edu::BAR0_SIZE) {
            return Err(format!("edu {}: BAR0 {bar0:#x} is not mapped", f.bdf));
        }
        // SAFETY: BAR0 of this edu, inside the host's MMIO window, which
        // the final EL2 map covers as Device memory; only this test drives
        // the device.
        let dev = Edu::new(unsafe { EduMmio::new(bar0 as usize) });
        dev.check().map_err(|e| format!("edu {}: {e}", f.bdf))?;
        println!(
            "selftest: edu {} rid {rid:#06x} -> smmu{unit} StreamID {sid:#x}, partition {}, device id {id}, BAR0 {bar0:#x}",
            f.bdf,
            ["A", "B"][k]
        );
        devs.push((dev, id));
    }

    let test = Isolation {
        parts,
        edu: [&devs[0].0, &devs[1].0],
        dev_ids: [devs[0].1, devs[1].1],
        clock: &GenericTimer,
        out: |line| println!("{line}"),
        blocked: BlockedDma::Silent,
    };
    let mapped = test.setup(&mut hv)?;
    if boot.option("selftest") == Some("malformed") {
        // An output address just above the SMMU's OAS: the entry is one no
        // correct engine writes, and the SMMU must refuse to use it.
        let oas = hv.units()[0].caps().oas_bits.min(47);
        let what = selftest::corrupt_leaf(&mut hv, mapped.iova, 1 << oas)?;
        println!("selftest: malformed: set output-address bit {oas} in the {what}");
        devs[0].0.dma_from_ram(sluice_kernel::Iova(mapped.iova), 0, 64, &GenericTimer, selftest::EDU_TIMEOUT_US).map_err(|e| format!("edu DMA: {e}"))?;
        hv.poll_faults();
        report_events(&mut hv);
        return Err("malformed-entry mode: this run is meant to be rejected".into());
    }
    let unmaps = test.run(&mut hv, mapped, &mut |hv| hv.poll_faults())?;
    report_events(&mut hv);
    for (i, u) in hv.units().iter().enumerate() {
        let s = u.stats();
        println!(
            "selftest: smmu{i}: {} commands ({} CMD_SYNC), {} config invalidations, TLBI: {} range, {} leaf, {} domain; {} waits, {} timeouts, {} command errors, {} events, {} overflows, {} global errors",
            s.commands,
            s.syncs,
            s.config_invalidations,
            s.tlbi_range,
            s.tlbi_leaf,
            s.tlbi_domain,
            s.waits,
            s.timeouts,
            s.command_errors,
            s.events,
            s.event_overflows,
            s.global_errors
        );
    }
    println!("selftest: unmaps={unmaps}");
    println!("selftest: PASS");
    Ok(())
}

/// The event records the SMMUs wrote, raw, for the harness to compare
/// with QEMU's trace.
fn report_events(hv: &mut Hv) {
    for u in hv.machine().units.iter_mut() {
        for e in u.take_raw_events() {
            println!(
                "SMMU-EVENT type={:#04x} sid={:#x} addr={:#x} read={} stage2={}",
                e.kind(),
                e.sid(),
                e.input_addr(),
                u8::from(e.read()),
                u8::from(e.stage2())
            );
        }
    }
}
