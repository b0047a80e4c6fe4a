//! The VT-d self-test (`./qemu-run.sh x86_64 --selftest`).
//!
//! Brings up the platform the way the hypervisor will for partitions: ACPI
//! (DMAR, MCFG), PCI over ECAM, one [`VtdUnit`] per DRHD, the core's
//! [`Hypervisor`] on top, two partitions with one edu device each; then
//! the scenario shared with aarch64 ([`sluice_boot::selftest`]): DMA both
//! ways through A's HWPT, the fault after UNMAP, B's blocked device.
//! `tests/qemu/x86_64-selftest.sh` checks QEMU's own trace against the
//! `VTD-FAULT` lines printed here.
//!
//! `selftest=malformed` instead writes a reserved bit into a leaf entry on
//! purpose, to prove the harness notices malformed entries.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use sluice_boot::selftest::{self, BlockedDma, Isolation, EDU_TIMEOUT_US};

use sluice_acpi::{AcpiTables, PhysRead, PhysReadError};
use sluice_kernel::abi::resv_type;
use sluice_kernel::hv::{DeviceConfig, Hypervisor, Region};
use sluice_kernel::iova::Range;
use sluice_kernel::Iova;
use sluice_pci::edu::{self, Edu, EduMmio};
use sluice_pci::{Ecam, PciSegment};
use sluice_vtd::VtdUnit;

use crate::bootinfo::BootInfo;
use crate::paging::{self, Cache};
use crate::platform::{FrameTables, IdentityRam};
use crate::tsc::Tsc;

type Unit = VtdUnit<FrameTables, Tsc>;
type Hv = Hypervisor<Unit, FrameTables, IdentityRam>;

/// The VT-d interrupt address range: never DMA-mappable.
const MSI_WINDOW: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

struct Firmware;

impl PhysRead for Firmware {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        if buf.is_empty() {
            return Ok(());
        }
        if !paging::is_mapped(pa, buf.len() as u64) {
            return Err(PhysReadError { pa, len: buf.len() });
        }
        buf.copy_from_slice(crate::platform::phys_bytes(pa, buf.len()));
        Ok(())
    }
}

/// Run the self-test; `Err` says what failed.
pub fn run(boot: &BootInfo) -> Result<(), String> {
    let malformed = boot.option("selftest") == Some("malformed");
    let rsdp = boot.rsdp_pa.ok_or("no RSDP from the boot loader")?;
    let acpi = AcpiTables::from_rsdp_address(&Firmware, rsdp).map_err(|e| format!("ACPI: {e}"))?;
    let dmar = acpi.dmar(&Firmware).map_err(|e| format!("DMAR: {e}"))?;
    let mcfg = acpi.mcfg(&Firmware).map_err(|e| format!("MCFG: {e}"))?;
    println!("selftest: DMAR: host address width {}, {} DRHD, {} RMRR", dmar.host_address_width, dmar.drhds.len(), dmar.rmrrs.len());

    // PCI segment 0 over ECAM.
    let ecam = mcfg.iter().find(|r| r.segment == 0).ok_or("no ECAM for segment 0")?;
    let (start, len) = ecam.window();
    paging::map_identity(start, len, Cache::Mmio).map_err(|e| format!("map ECAM: {e:?}"))?;
    // SAFETY: the MCFG says this window is segment 0's ECAM for these
    // buses; it is identity-mapped just above and nothing else uses it.
    let ecam_access = unsafe { Ecam::new(start as usize, 0, ecam.bus_start, ecam.bus_end) };
    let pci = PciSegment::new(ecam_access, 0, ecam.bus_start, ecam.bus_end);
    let functions = pci.enumerate();
    println!("selftest: PCI: {} functions on segment 0", functions.len());
    let edus: Vec<_> = sluice_pci::find(&functions, edu::VENDOR_ID, edu::DEVICE_ID).cloned().collect();
    if edus.len() < 2 {
        return Err(format!("two edu devices needed, found {}", edus.len()));
    }

    // One VT-d unit per DRHD.
    let mut units = Vec::new();
    // Until every unit is probed, assume the worst: a unit's root table is
    // written before its capabilities are known. Afterwards, flush table
    // writes only if some unit's walks do not snoop (ECAP.C = 0).
    crate::platform::set_noncoherent_walks(true);
    for (i, drhd) in dmar.drhds.iter().enumerate() {
        paging::map_identity(drhd.register_base, drhd.register_size(), Cache::Mmio).map_err(|e| format!("map DRHD: {e:?}"))?;
        // SAFETY: the DMAR names this page as a remapping unit's register
        // block; it is mapped above and only this driver instance uses it.
        let unit = unsafe { VtdUnit::new(drhd.register_base as usize, u32::from(dmar.host_address_width), FrameTables::new(), Tsc) }
            .map_err(|e| format!("VT-d unit {i} at {:#x}: {e:?}", drhd.register_base))?;
        let c = unit.caps();
        println!(
            "selftest: unit {i} at {:#x}: cap {:#x} ecap {:#x}: {}-level tables, {} domains, CM {}, QI {}, PSI {} (MAMV {}), {} fault records",
            drhd.register_base,
            c.cap,
            c.ecap,
            unit.format().context_aw() + 2,
            c.domains,
            c.caching_mode,
            c.queued_invalidation,
            c.psi,
            c.mamv,
            c.fault_records
        );
        units.push(unit);
    }
    if units.is_empty() {
        return Err("no VT-d unit".into());
    }
    let noncoherent = units.iter().any(|u| !u.caps().coherent);
    crate::platform::set_noncoherent_walks(noncoherent);
    println!("selftest: table writes flushed with CLFLUSH: {noncoherent} (ECAP.C)");

    let mut hv: Hv = Hypervisor::new(units, FrameTables::new(), IdentityRam::new());
    let parts = selftest::add_partitions(&mut hv)?;
    let bridges = |seg: u16, b: sluice_acpi::Bdf| {
        (seg == 0).then_some(())?;
        let buses = pci.bridge_buses(sluice_pci::Bdf::from_rid(b.rid())).ok()?;
        Some(sluice_acpi::BridgeBuses { secondary: buses.secondary, subordinate: buses.subordinate })
    };
    let mut devs = Vec::new();
    for (k, f) in edus.iter().take(2).enumerate() {
        let rid = f.bdf.rid();
        let abdf = sluice_acpi::Bdf::from_rid(rid);
        let unit = dmar.unit_for(0, abdf, &bridges).ok_or_else(|| format!("edu {} has no VT-d unit", f.bdf))?;
        let mut regions = vec![Region { range: Range::new(MSI_WINDOW.0, MSI_WINDOW.1).ok_or("MSI window")?, kind: resv_type::MSI }];
        for (base, limit) in dmar.rmrrs_for(0, abdf, &bridges) {
            regions.push(Region { range: Range::new(base & !0xfff, limit | 0xfff).ok_or("bad RMRR")?, kind: resv_type::DIRECT });
        }
        let id = hv
            .add_device(DeviceConfig { partition: parts[k], unit, rid: u32::from(rid), dma_bits: 28, regions })
            .map_err(|e| format!("device {}: {e:?}", f.bdf))?;
        let bar0 = edu::enable(&pci, f).map_err(|e| format!("edu {}: {e}", f.bdf))?;
        paging::map_identity(bar0, edu::BAR0_SIZE, Cache::Mmio).map_err(|e| format!("map edu BAR0: {e:?}"))?;
        // SAFETY: BAR0 of this edu, mapped just above; only this test
        // drives the device.
        let dev = Edu::new(unsafe { EduMmio::new(bar0 as usize) });
        dev.check().map_err(|e| format!("edu {}: {e}", f.bdf))?;
        println!("selftest: edu {} rid {rid:#06x} -> unit {unit}, partition {}, device id {id}, BAR0 {bar0:#x}", f.bdf, ["A", "B"][k]);
        devs.push((dev, id));
    }
    let test = Isolation {
        parts,
        edu: [&devs[0].0, &devs[1].0],
        dev_ids: [devs[0].1, devs[1].1],
        clock: &Tsc,
        out: |line| println!("{line}"),
        blocked: BlockedDma::Faults,
    };
    let mapped = test.setup(&mut hv)?;
    if malformed {
        return corrupt_leaf(&mut hv, &devs[0].0, mapped.iova);
    }
    let unmaps = test.run(&mut hv, mapped, &mut |hv| hv.poll_faults())?;

    // What the units recorded, raw, for the harness to compare with QEMU.
    report_raw_faults(&mut hv);
    for (i, u) in hv.units().iter().enumerate() {
        let s = u.stats();
        println!(
            "selftest: unit {i}: invalidations: {} context, {} page-selective, {} domain-selective, {} global; {} waits, {} timeouts, {} faults, {} overflows",
            s.context_invalidations, s.iotlb_pages, s.iotlb_domain, s.iotlb_global, s.waits, s.timeouts, s.faults, s.overflows
        );
    }
    println!("selftest: unmaps={unmaps}");
    println!("selftest: PASS");
    Ok(())
}

fn report_raw_faults(hv: &mut Hv) {
    for u in hv.machine().units.iter_mut() {
        for f in u.take_raw_faults() {
            println!("VTD-FAULT sid={:#06x} reason={} addr={:#x} write={}", f.sid, f.reason, f.addr, u8::from(!f.read));
        }
    }
}

/// `selftest=malformed`: set bit 11 (SNP, reserved when ECAP.SC is 0) in
/// the leaf mapping `iova` and DMA through it. QEMU must report the
/// malformed entry; the harness checks that it noticed.
fn corrupt_leaf(hv: &mut Hv, dev: &Edu<EduMmio>, iova: u64) -> Result<(), String> {
    let what = selftest::corrupt_leaf(hv, iova, 1 << 11)?;
    println!("selftest: malformed: set bit 11 in the {what}");
    dev.dma_from_ram(Iova(iova), 0, 64, &Tsc, EDU_TIMEOUT_US).map_err(|e| format!("edu DMA: {e}"))?;
    report_raw_faults(hv);
    Err("malformed-entry mode: this run is meant to be rejected".to_string())
}
