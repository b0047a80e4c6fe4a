//! The x86_64 platform the hypervisor runs on: ACPI (DMAR, MCFG), PCI over
//! ECAM, one VT-d unit per DRHD under the core's [`Hypervisor`]. Both the
//! self-test and the partitions start here.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use sluice_acpi::{AcpiTables, Dmar, PhysRead, PhysReadError};
use sluice_kernel::abi::resv_type;
use sluice_kernel::hv::{Hypervisor, Region};
use sluice_kernel::iova::Range;
use sluice_pci::{Ecam, PciFunction, PciSegment};
use sluice_vtd::VtdUnit;

use crate::bootinfo::BootInfo;
use crate::paging::{self, Cache};
use crate::platform::{FrameTables, IdentityRam};
use crate::tsc::Tsc;

/// The VT-d units the core drives.
pub type Unit = VtdUnit<FrameTables, Tsc>;
/// The hypervisor core on this machine.
pub type Hv = Hypervisor<Unit, FrameTables, IdentityRam>;

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

/// What [`Machine::bring_up`] found and started.
#[derive(Debug)]
pub struct Machine {
    /// The core, one unit per DRHD, no partitions yet.
    pub hv: Hv,
    /// PCI segment 0 over ECAM.
    pub pci: PciSegment<Ecam>,
    /// Its functions.
    pub functions: Vec<PciFunction>,
    /// The DMAR, for device scopes and RMRRs.
    pub dmar: Dmar,
}

impl Machine {
    /// ACPI, PCI segment 0, every VT-d unit on.
    ///
    /// # Errors
    ///
    /// Missing tables, or a unit could not be brought up.
    pub fn bring_up(boot: &BootInfo) -> Result<Self, String> {
        let rsdp = boot.rsdp_pa.ok_or("no RSDP from the boot loader")?;
        let acpi = AcpiTables::from_rsdp_address(&Firmware, rsdp).map_err(|e| format!("ACPI: {e}"))?;
        let dmar = acpi.dmar(&Firmware).map_err(|e| format!("DMAR: {e}"))?;
        let mcfg = acpi.mcfg(&Firmware).map_err(|e| format!("MCFG: {e}"))?;
        println!("DMAR: host address width {}, {} DRHD, {} RMRR", dmar.host_address_width, dmar.drhds.len(), dmar.rmrrs.len());

        // PCI segment 0 over ECAM.
        let ecam = mcfg.iter().find(|r| r.segment == 0).ok_or("no ECAM for segment 0")?;
        let (start, len) = ecam.window();
        paging::map_identity(start, len, Cache::Mmio).map_err(|e| format!("map ECAM: {e:?}"))?;
        // SAFETY: the MCFG says this window is segment 0's ECAM for these
        // buses; it is identity-mapped just above and nothing else uses it.
        let ecam_access = unsafe { Ecam::new(start as usize, 0, ecam.bus_start, ecam.bus_end) };
        let pci = PciSegment::new(ecam_access, 0, ecam.bus_start, ecam.bus_end);
        let functions = pci.enumerate();
        println!("PCI: {} functions on segment 0", functions.len());
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
                "unit {i} at {:#x}: cap {:#x} ecap {:#x}: {}-level tables, {} domains, CM {}, QI {}, PSI {} (MAMV {}), {} fault records",
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
        println!("table writes flushed with CLFLUSH: {noncoherent} (ECAP.C)");

        let hv = Hypervisor::new(units, FrameTables::new(), IdentityRam::new());
        Ok(Self { hv, pci, functions, dmar })
    }
}

/// The VT-d unit of function `f` and its reserved regions (the MSI window
/// and the RMRRs of its scope).
///
/// # Errors
///
/// No unit covers it.
pub fn placement(dmar: &Dmar, pci: &PciSegment<Ecam>, f: &PciFunction) -> Result<(usize, Vec<Region>), String> {
    let bridges = |seg: u16, b: sluice_acpi::Bdf| {
        (seg == 0).then_some(())?;
        let buses = pci.bridge_buses(sluice_pci::Bdf::from_rid(b.rid())).ok()?;
        Some(sluice_acpi::BridgeBuses { secondary: buses.secondary, subordinate: buses.subordinate })
    };
    let abdf = sluice_acpi::Bdf::from_rid(f.bdf.rid());
    let unit = dmar.unit_for(0, abdf, &bridges).ok_or_else(|| format!("{} has no VT-d unit", f.bdf))?;
    let mut regions = vec![Region { range: Range::new(MSI_WINDOW.0, MSI_WINDOW.1).ok_or("MSI window")?, kind: resv_type::MSI }];
    for (base, limit) in dmar.rmrrs_for(0, abdf, &bridges) {
        regions.push(Region { range: Range::new(base & !0xfff, limit | 0xfff).ok_or("bad RMRR")?, kind: resv_type::DIRECT });
    }
    Ok((unit, regions))
}

/// Print the fault records the units wrote, raw (`VTD-FAULT` lines), for
/// the harnesses to compare with QEMU's trace.
pub fn report_faults(hv: &mut Hv) {
    for u in hv.machine().units.iter_mut() {
        for f in u.take_raw_faults() {
            println!("VTD-FAULT sid={:#06x} reason={} addr={:#x} write={}", f.sid, f.reason, f.addr, u8::from(!f.read));
        }
    }
}
