//! The partitions of the manifest (`manifests/aarch64.toml`, embedded at
//! build time), each an EL1 guest under its own stage-2 tables and VMID,
//! owning the PCI devices the manifest gives it.
//!
//! A partition's second stage maps its RAM at [`layout::RAM_BASE`] (Normal
//! memory) and every memory BAR of its devices at the BAR's own address
//! (Device-nGnRE), nothing else: any other access stops the partition.
//! Its devices are attached to nothing (blocked) until it asks.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use aarch64_cpu::registers::{ID_AA64MMFR0_EL1, Readable};
use sluice_boot::partition::{self, Placement, Runnable, SecondStage};
use sluice_kernel::abi::layout;
use sluice_kernel::pt::{ArmStage2, Gather, LeafSizes, PageTable, Perm};
use sluice_kernel::{Hpa, Iova};
use sluice_manifest::PartitionSpec;
use sluice_pci::{Ecam, PciFunction, PciSegment};
use sluice_smmuv3::StagePreference;

use crate::bootinfo::BootInfo;
use crate::machine::{self, Hv, Machine, PciMap};
use crate::platform::FrameTables;
use crate::vcpu::El1Vcpu;

/// The manifest and the programs, as the build script wrote them.
#[allow(unused_qualifications, clippy::unreadable_literal)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/partitions.rs"));
}
use generated::{PARTITIONS, PROGRAMS};

/// IPA size of every partition's second stage (1 TiB: RAM at 1 GiB and
/// the 32- and 64-bit PCI windows of `virt`).
const IPA_BITS: u32 = 40;
/// ELF e_machine of AArch64.
const EM_AARCH64: u16 = 183;

/// Boot every partition of the manifest, run them, print how each ended.
/// Returns whether every partition started and exited with code 0.
///
/// # Errors
///
/// The platform could not be brought up.
pub fn run(boot: &BootInfo) -> Result<bool, String> {
    let Machine { mut hv, pci, functions, map } = Machine::bring_up(boot, StagePreference::Auto)?;
    let (pa_bits, ps) = cpu_pa_range();
    partition::install_heap_budget(&mut hv);
    let mut runnable = Vec::new();
    let mut not_started = Vec::new();
    for (i, spec) in PARTITIONS.iter().enumerate() {
        match start(&mut hv, &pci, &functions, &map, spec, (i + 1) as u16, pa_bits, ps) {
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

/// The CPU's physical address size and its VTCR_EL2.PS code.
fn cpu_pa_range() -> (u32, u64) {
    let code = ID_AA64MMFR0_EL1.get() & 0xf;
    let bits = match code {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        _ => 48,
    };
    (bits, code.min(5))
}

/// Stage-2 tables from the core's engine: RAM Normal, BARs Device-nGnRE.
struct Stage2 {
    table: PageTable<ArmStage2>,
    mem: FrameTables,
}

impl SecondStage for Stage2 {
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, mmio: bool) -> Result<(), String> {
        let perm = if mmio { Perm::READ | Perm::WRITE | Perm::DEVICE } else { Perm::READ | Perm::WRITE };
        self.table.map(&mut self.mem, Iova(gpa), Hpa(hpa), len, perm, &mut Gather::new()).map_err(|e| format!("stage 2 at {gpa:#x}: {e:?}"))
    }
}

#[allow(clippy::too_many_arguments)]
fn start(
    hv: &mut Hv,
    pci: &PciSegment<Ecam>,
    functions: &[PciFunction],
    map: &PciMap,
    spec: &PartitionSpec,
    vmid: u16,
    pa_bits: u32,
    ps: u64,
) -> Result<Runnable<El1Vcpu>, String> {
    let place = |f: &PciFunction| -> Result<Placement, String> {
        let (unit, sid) = map.stream_id(f.bdf.rid())?;
        let mut bars = Vec::new();
        for bar in f.bars.iter().filter(|b| b.is_memory() && b.is_assigned()) {
            let cpu = map.bar_cpu(bar.address).ok_or_else(|| format!("device {} BAR{} {:#x} is in no window", f.bdf, bar.slot, bar.address))?;
            bars.push((bar.slot, cpu, bar.size));
        }
        // No platform reserved regions: MSIs would be ordinary writes
        // translated by the SMMU (none are given to partitions yet).
        Ok(Placement { unit, rid: sid, regions: Vec::new(), bars })
    };
    let mut mem = FrameTables::new();
    let fmt = ArmStage2::new(IPA_BITS, pa_bits, LeafSizes::SZ_2M | LeafSizes::SZ_1G).map_err(|e| format!("{e:?}"))?;
    let table = PageTable::new(fmt, &mut mem).map_err(|e| format!("stage 2: {e:?}"))?;
    let mut stage = Stage2 { table, mem };
    let (p, entry, boot) = partition::create(hv, pci, functions, spec, PROGRAMS, EM_AARCH64, &place, &mut stage, |line| println!("{line}"))?;
    // VTCR_EL2: RES1 bit 31, PS, TG0 4 KiB, SH0 inner, ORGN0/IRGN0
    // write-back, SL0 and T0SZ from the format.
    let vtcr = (1 << 31) | (ps << 16) | (0b11 << 12) | (0b01 << 10) | (0b01 << 8) | (u64::from(fmt.sl0()) << 6) | u64::from(fmt.t0sz());
    let root = stage.table.root().raw();
    println!("[{}] VMID {vmid}, stage-2 root {root:#x}", spec.name);
    // The stage-2 tables stay allocated for good: this version never tears
    // a partition down (the frames are not given back).
    let vcpu = El1Vcpu::new(entry, layout::STACK_TOP_GPA, layout::START_INFO_GPA, root, vmid, vtcr);
    Ok(Runnable { partition: p, name: spec.name.to_string(), vcpu, boot })
}

fn report_units(hv: &mut Hv) {
    machine::report_events(hv);
    for (i, u) in hv.units().iter().enumerate() {
        let s = u.stats();
        println!(
            "sluice: smmu{i}: {} commands ({} CMD_SYNC), TLBI {} range, {} leaf, {} domain; {} events, {} overflows, {} timeouts",
            s.commands,
            s.syncs,
            s.tlbi_range,
            s.tlbi_leaf,
            s.tlbi_domain,
            s.events,
            s.event_overflows,
            s.timeouts
        );
    }
}
