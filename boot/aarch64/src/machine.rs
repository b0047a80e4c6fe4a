//! The aarch64 platform the hypervisor runs on: the SMMUs and the PCIe host
//! from the device tree, brought up under the core's [`Hypervisor`]. Both
//! the self-test and the partitions start here.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use sluice_kernel::hv::Hypervisor;
use sluice_pci::{AssignPolicy, Ecam, PciFunction, PciSegment};
use sluice_smmuv3::{SmmuV3Unit, Stage, StagePreference};

use crate::bootinfo::BootInfo;
use crate::dt::{PciHost, PciSpace, PciWindow};
use crate::platform::{self, FrameTables, IdentityRam};
use crate::timer::GenericTimer;

/// The SMMUv3 units the core drives.
pub type Unit = SmmuV3Unit<FrameTables, GenericTimer>;
/// The hypervisor core on this machine.
pub type Hv = Hypervisor<Unit, FrameTables, IdentityRam>;

/// What [`Machine::bring_up`] found and started.
#[derive(Debug)]
pub struct Machine {
    /// The core, with one unit per SMMU and no partitions yet.
    pub hv: Hv,
    /// PCI segment of the first host, over ECAM.
    pub pci: PciSegment<Ecam>,
    /// Its functions, BARs placed.
    pub functions: Vec<PciFunction>,
    /// Bus addresses and requester ids as the CPU and the SMMUs see them.
    pub map: PciMap,
}

/// The first PCIe host's address windows and `iommu-map`.
#[derive(Debug)]
pub struct PciMap {
    host: PciHost,
    windows: Vec<PciWindow>,
}

impl Machine {
    /// Take over every SMMU (with `stage` for its domains), enumerate the
    /// first PCIe host and place its memory BARs.
    ///
    /// # Errors
    ///
    /// No SMMU or PCIe host, or one could not be brought up.
    pub fn bring_up(boot: &BootInfo, stage: StagePreference) -> Result<Self, String> {
        let d = &boot.devices;
        if d.smmus.is_empty() {
            return Err("no arm,smmu-v3 node in the device tree (QEMU: -M virt,iommu=smmuv3)".into());
        }
        let host = d.pci_hosts.first().ok_or("no PCIe host in the device tree")?.clone();
        // Until every SMMU is probed, assume the worst (its first tables
        // are written before IDR0 is read); then clean only for
        // non-coherent ones.
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
                "smmu{i} at {:#x}: S1P {} S2P {} -> stage {}, OAS {} bits, SIDSIZE {} ({}), RIL {}, COHACC {}, dma-coherent {}",
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
        println!("smmu: table writes cleaned to memory with DC CVAC: {noncoherent} (IDR0.COHACC, dma-coherent)");

        // SAFETY: the device tree names this window as the host's ECAM
        // for these buses; the final EL2 map covers it as Device memory
        // (below 1 TiB) and nothing else uses it.
        let ecam = unsafe { Ecam::new(host.ecam_base as usize, host.segment, host.bus_start, host.bus_end) };
        let pci = PciSegment::new(ecam, host.segment, host.bus_start, host.bus_end);
        let mut functions = pci.enumerate();
        // 32-bit windows first: edu's BAR0 is a 32-bit BAR.
        let mut windows: Vec<PciWindow> = host.mmio_windows().cloned().collect();
        windows.sort_by_key(|w| w.space != PciSpace::Mem32);
        let bus_windows: Vec<_> = windows.iter().map(|w| w.pci_addr..w.pci_addr + w.size).collect();
        let report = pci.assign_bars(&mut functions, &bus_windows, AssignPolicy::UnassignedOnly).map_err(|e| format!("BARs: {e}"))?;
        println!("pci: {} functions on segment {}, {} BARs placed", functions.len(), host.segment, report.placed.len());
        let hv = Hypervisor::new(units, FrameTables::new(), IdentityRam::new());
        Ok(Self { hv, pci, functions, map: PciMap { host, windows } })
    }
}

impl PciMap {
    /// The CPU address of PCI bus address `bus`, through the host's windows.
    #[must_use]
    pub fn bar_cpu(&self, bus: u64) -> Option<u64> {
        self.windows.iter().find(|w| (w.pci_addr..w.pci_addr + w.size).contains(&bus)).map(|w| w.cpu_addr + (bus - w.pci_addr))
    }

    /// The SMMU index and StreamID of requester id `rid`.
    ///
    /// # Errors
    ///
    /// No `iommu-map` entry, or it names no SMMUv3.
    pub fn stream_id(&self, rid: u16) -> Result<(usize, u32), String> {
        let (smmu, sid) = self.host.stream_id(rid).ok_or_else(|| format!("requester {rid:#06x}: no iommu-map entry"))?;
        Ok((smmu.ok_or_else(|| format!("requester {rid:#06x}: its iommu-map does not name an SMMUv3"))?, sid))
    }
}

/// Print the event records the SMMUs wrote, raw (`SMMU-EVENT` lines), for
/// the harnesses to compare with QEMU's trace.
pub fn report_events(hv: &mut Hv) {
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
