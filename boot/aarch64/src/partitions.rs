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
use alloc::vec;
use alloc::vec::Vec;

use aarch64_cpu::registers::{ID_AA64MMFR0_EL1, Readable};
use sluice_boot::frames;
use sluice_boot::partition::{self, Runnable};
use sluice_kernel::abi::{StartDevice, layout};
use sluice_kernel::hv::{DeviceConfig, PartitionConfig};
use sluice_kernel::memmap::RamRange;
use sluice_kernel::pt::{ArmStage2, Gather, LeafSizes, PageTable, Perm};
use sluice_kernel::{Gpa, Hpa, Iova};
use sluice_manifest::PartitionSpec;
use sluice_pci::{Bdf, CommandRegister, Ecam, PciFunction, PciSegment};
use sluice_smmuv3::StagePreference;

use crate::bootinfo::BootInfo;
use crate::machine::{Hv, Machine, PciMap};
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
    let mut runnable = Vec::new();
    let mut not_started = Vec::new();
    let mut claimed: Vec<Bdf> = Vec::new();
    for (i, spec) in PARTITIONS.iter().enumerate() {
        match start(&mut hv, &pci, &functions, &map, spec, (i + 1) as u16, pa_bits, ps, &mut claimed) {
            Ok(r) => runnable.push(r),
            Err(why) => {
                println!("[{}] partition NOT STARTED: {why}", spec.name);
                not_started.push((spec.name, why));
            }
        }
    }
    let all_ok = partition::run_and_report(&mut hv, &mut runnable, &not_started, |line| println!("{line}"));
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
    claimed: &mut Vec<Bdf>,
) -> Result<Runnable<El1Vcpu>, String> {
    // Everything is checked before anything is made.
    let program = PROGRAMS.iter().find(|(n, _)| *n == spec.program).map(|(_, b)| *b).ok_or_else(|| format!("program {} is not in the image", spec.program))?;
    let mut devs = Vec::new();
    for a in spec.devices {
        let bdf = Bdf::new(a.bus, a.dev, a.func);
        let f = functions
            .iter()
            .find(|f| f.segment == a.segment && f.bdf == bdf)
            .ok_or_else(|| format!("device {a} does not exist on this machine"))?;
        if claimed.contains(&bdf) {
            return Err(format!("device {a} already belongs to another partition"));
        }
        let (unit, sid) = map.stream_id(bdf.rid())?;
        devs.push((f, unit, sid));
    }
    if spec.ram_host.is_some() {
        return Err("a fixed host RAM placement (ram_host) is not supported on this platform yet".into());
    }
    let pages = usize::try_from(spec.ram_bytes / 4096).map_err(|_| "RAM size")?;
    let hpa = frames::alloc_zeroed(pages).ok_or_else(|| format!("no {} MiB of RAM left", spec.ram_bytes >> 20))?;
    let cfg = PartitionConfig {
        name: spec.name.to_string(),
        ram: vec![RamRange { gpa: Gpa(layout::RAM_BASE), len: spec.ram_bytes, hpa: Hpa(hpa) }],
        pin_limit: spec.pin_limit,
        max_areas: 1 << 16,
    };
    let p = hv.add_partition(cfg).map_err(|e| format!("{e:?}"))?;

    // Stage 2: RAM, then each device's memory BARs at their own address.
    let mut mem = FrameTables::new();
    let fmt = ArmStage2::new(IPA_BITS, pa_bits, LeafSizes::SZ_2M | LeafSizes::SZ_1G).map_err(|e| format!("{e:?}"))?;
    let mut s2 = PageTable::new(fmt, &mut mem).map_err(|e| format!("stage 2: {e:?}"))?;
    let mut gather = Gather::new();
    s2.map(&mut mem, Iova(layout::RAM_BASE), Hpa(hpa), spec.ram_bytes, Perm::READ | Perm::WRITE, &mut gather)
        .map_err(|e| format!("stage 2 RAM: {e:?}"))?;
    let mut start_devices = Vec::new();
    for (f, unit, sid) in devs {
        let is_edu = f.vendor_id == sluice_pci::edu::VENDOR_ID && f.device_id == sluice_pci::edu::DEVICE_ID;
        let dma_bits = if is_edu { 28 } else { 64 };
        let id = hv
            .add_device(DeviceConfig { partition: p, unit, rid: sid, dma_bits, regions: Vec::new() })
            .map_err(|e| format!("device {}: {e:?}", f.bdf))?;
        let mut bar0 = (0, 0);
        for bar in f.bars.iter().filter(|b| b.is_memory() && b.is_assigned()) {
            let cpu = map.bar_cpu(bar.address).ok_or_else(|| format!("device {} BAR{} {:#x} is in no window", f.bdf, bar.slot, bar.address))?;
            let len = bar.size.next_multiple_of(4096);
            s2.map(&mut mem, Iova(cpu), Hpa(cpu), len, Perm::READ | Perm::WRITE | Perm::DEVICE, &mut gather)
                .map_err(|e| format!("stage 2 BAR {cpu:#x}: {e:?}"))?;
            if bar.slot == 0 {
                bar0 = (cpu, bar.size);
            }
        }
        pci.update_command(f.bdf, CommandRegister::MEMORY_ENABLE | CommandRegister::BUS_MASTER_ENABLE, true)
            .map_err(|e| format!("device {}: {e:?}", f.bdf))?;
        start_devices.push(StartDevice {
            dev_id: id,
            seg_bdf: StartDevice::encode_seg_bdf(f.segment, f.bdf.bus(), f.bdf.dev(), f.bdf.func()),
            bar0_gpa: bar0.0,
            bar0_size: bar0.1,
            dma_bits,
            reserved: 0,
        });
        println!(
            "[{}] device {} (StreamID {sid:#x} on smmu{unit}) as device {id}, BAR0 {:#x}+{:#x}",
            spec.name,
            f.bdf,
            bar0.0,
            bar0.1
        );
        claimed.push(f.bdf);
    }
    let entry = partition::load_program(hv, p, program, EM_AARCH64)?;
    partition::write_start_info(hv, p, spec.name, spec.ram_bytes, &start_devices)?;
    // VTCR_EL2: RES1 bit 31, PS, TG0 4 KiB, SH0 inner, ORGN0/IRGN0
    // write-back, SL0 and T0SZ from the format.
    let vtcr = (1 << 31) | (ps << 16) | (0b11 << 12) | (0b01 << 10) | (0b01 << 8) | (u64::from(fmt.sl0()) << 6) | u64::from(fmt.t0sz());
    println!(
        "[{}] {} MiB RAM at GPA {:#x} (host {hpa:#x}), program {} ({} bytes, entry {entry:#x}), VMID {vmid}, stage-2 root {:#x}",
        spec.name,
        spec.ram_bytes >> 20,
        layout::RAM_BASE,
        spec.program,
        program.len(),
        s2.root().raw()
    );
    // The stage-2 tables stay allocated for good: this version never tears
    // a partition down (the frames are not given back).
    let vcpu = El1Vcpu::new(entry, layout::STACK_TOP_GPA, layout::START_INFO_GPA, s2.root().raw(), vmid, vtcr);
    Ok(Runnable { partition: p, name: spec.name.to_string(), vcpu })
}

fn report_units(hv: &mut Hv) {
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
