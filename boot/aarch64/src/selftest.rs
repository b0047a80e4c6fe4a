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
use sluice_kernel::hv::DeviceConfig;
use sluice_pci::edu::{self, Edu, EduMmio};
use sluice_smmuv3::StagePreference;

use crate::bootinfo::BootInfo;
use crate::machine::{self, Machine};
use crate::timer::GenericTimer;

/// Run the self-test; `Err` says what failed.
pub fn run(boot: &BootInfo) -> Result<(), String> {
    let stage = match boot.option("smmu-stage") {
        None | Some("auto") => StagePreference::Auto,
        Some("1") => StagePreference::Stage1,
        Some("2") => StagePreference::Stage2,
        Some(other) => return Err(format!("smmu-stage={other}: expected 1, 2 or auto")),
    };
    let Machine { mut hv, pci, functions, map } = Machine::bring_up(boot, stage)?;
    let edus: Vec<_> = sluice_pci::find(&functions, edu::VENDOR_ID, edu::DEVICE_ID).cloned().collect();
    if edus.len() < 2 {
        return Err(format!("two edu devices needed, found {}", edus.len()));
    }
    let parts = selftest::add_partitions(&mut hv)?;
    let mut devs = Vec::new();
    for (k, f) in edus.iter().take(2).enumerate() {
        let rid = f.bdf.rid();
        let (unit, sid) = map.stream_id(rid).map_err(|e| format!("edu {}: {e}", f.bdf))?;
        // No reserved regions of the platform: MSIs would be ordinary
        // writes translated by the SMMU (none are given to partitions yet).
        let id = hv
            .add_device(DeviceConfig { partition: parts[k], unit, rid: sid, dma_bits: 28, regions: Vec::new() })
            .map_err(|e| format!("device {}: {e:?}", f.bdf))?;
        let bar0_bus = edu::enable(&pci, f).map_err(|e| format!("edu {}: {e}", f.bdf))?;
        let bar0 = map.bar_cpu(bar0_bus).ok_or_else(|| format!("edu {}: BAR0 {bar0_bus:#x} is in no window", f.bdf))?;
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
        machine::report_events(&mut hv);
        return Err("malformed-entry mode: this run is meant to be rejected".into());
    }
    let unmaps = test.run(&mut hv, mapped, &mut |hv| hv.poll_faults())?;
    machine::report_events(&mut hv);
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
