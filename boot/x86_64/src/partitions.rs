//! The partitions of the manifest (`manifests/x86_64.toml`, embedded at
//! build time), each an SVM guest with its own nested page table and ASID,
//! owning the PCI devices the manifest gives it.
//!
//! A partition's nested page table maps its RAM at [`layout::RAM_BASE`]
//! and every memory BAR of its devices at the BAR's own address
//! (uncached), nothing else: any other access stops the partition. Its
//! devices are attached to nothing (blocked) until it asks.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use sluice_acpi::Dmar;
use sluice_boot::partition::{self, Placement, Runnable, SecondStage};
use sluice_kernel::abi::layout;
use sluice_manifest::PartitionSpec;
use sluice_pci::{Ecam, PciFunction, PciSegment};

use crate::bootinfo::BootInfo;
use crate::machine::{self, Hv, Machine};
use crate::paging::{self, Cache};
use crate::svm::{self, Npt, SvmVcpu};

/// The manifest and the programs, as the build script wrote them.
#[allow(unused_qualifications, clippy::unreadable_literal)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/partitions.rs"));
}
use generated::{PARTITIONS, PROGRAMS};

/// ELF e_machine of x86-64.
const EM_X86_64: u16 = 62;

/// Boot every partition of the manifest, run them, print how each ended.
/// Returns whether every partition started and exited with code 0.
///
/// # Errors
///
/// The platform could not be brought up.
pub fn run(boot: &BootInfo) -> Result<bool, String> {
    let Machine { mut hv, pci, functions, dmar } = Machine::bring_up(boot)?;
    svm::enable().map_err(String::from)?;
    partition::install_heap_budget(&mut hv);
    let mut runnable = Vec::new();
    let mut not_started = Vec::new();
    for (i, spec) in PARTITIONS.iter().enumerate() {
        match start(&mut hv, &pci, &functions, &dmar, spec, (i + 1) as u32) {
            Ok(r) => runnable.push(r),
            Err(why) => {
                println!("[{}] partition NOT STARTED: {why}", spec.name);
                not_started.push((spec.name, why));
            }
        }
    }
    let all_ok = partition::run_and_report(&mut hv, &mut runnable, &not_started, &pci, |line| println!("{line}"));
    report_units(&mut hv);
    Ok(all_ok)
}

/// The nested page table, refusing BARs the guest's own page tables
/// (0..4 GiB) cannot reach, and mapping BARs into the hypervisor's map too
/// (uncached).
struct Nested(Npt);

impl SecondStage for Nested {
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, mmio: bool) -> Result<(), String> {
        if mmio {
            if gpa.checked_add(len).is_none_or(|end| end > 1 << 32) {
                return Err(format!("device registers at {gpa:#x} are above the partition's 4 GiB"));
            }
            paging::map_identity(hpa, len, Cache::Mmio).map_err(|e| format!("map {hpa:#x}: {e:?}"))?;
        }
        self.0.map(gpa, hpa, len, mmio).map_err(|e| format!("NPT at {gpa:#x}: {e}"))
    }
}

fn start(
    hv: &mut Hv,
    pci: &PciSegment<Ecam>,
    functions: &[PciFunction],
    dmar: &Dmar,
    spec: &PartitionSpec,
    asid: u32,
) -> Result<Runnable<SvmVcpu>, String> {
    let place = |f: &PciFunction| -> Result<Placement, String> {
        let (unit, regions) = machine::placement(dmar, pci, f)?;
        let bars = f.bars.iter().filter(|b| b.is_memory() && b.is_assigned()).map(|b| (b.slot, b.address, b.size)).collect();
        Ok(Placement { unit, rid: u32::from(f.bdf.rid()), regions, bars })
    };
    let mut stage = Nested(Npt::new().map_err(String::from)?);
    let (p, entry, boot) = partition::create(hv, pci, functions, spec, PROGRAMS, EM_X86_64, &place, &mut stage, |line| println!("{line}"))?;
    let cr3 = svm::guest_page_tables(|gpa, bytes| {
        hv.write_guest(p, gpa, bytes)
            .map_err(|e| format!("guest page tables: {e:?}"))
    })?;
    let ncr3 = stage.0.root();
    println!("[{}] ASID {asid}, nested root {ncr3:#x}", spec.name);
    // The nested tables stay allocated for good: this version never tears
    // a partition down (the frames are not given back).
    let vcpu = SvmVcpu::new(
        entry,
        layout::STACK_TOP_GPA,
        layout::START_INFO_GPA,
        cr3,
        ncr3,
        asid,
    )
    .map_err(String::from)?;
    Ok(Runnable {
        partition: p,
        name: spec.name.to_string(),
        vcpu,
        boot,
    })
}

fn report_units(hv: &mut Hv) {
    machine::report_faults(hv);
    for (i, u) in hv.units().iter().enumerate() {
        let s = u.stats();
        println!(
            "sluice: VT-d unit {i}: invalidations: {} context, {} page-selective, {} domain-selective; {} faults, {} overflows, {} timeouts",
            s.context_invalidations, s.iotlb_pages, s.iotlb_domain, s.faults, s.overflows, s.timeouts
        );
    }
}
