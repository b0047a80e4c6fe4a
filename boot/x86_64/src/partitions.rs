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
use alloc::vec;
use alloc::vec::Vec;

use sluice_boot::frames;
use sluice_boot::partition::{self, Runnable};
use sluice_kernel::abi::{StartDevice, layout};
use sluice_kernel::hv::{DeviceConfig, PartitionConfig};
use sluice_kernel::memmap::RamRange;
use sluice_kernel::{Gpa, Hpa};
use sluice_manifest::PartitionSpec;
use sluice_acpi::Dmar;
use sluice_pci::{Bdf, CommandRegister, Ecam, PciFunction, PciSegment};

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
    let mut runnable = Vec::new();
    let mut not_started = Vec::new();
    let mut claimed: Vec<Bdf> = Vec::new();
    for (i, spec) in PARTITIONS.iter().enumerate() {
        match start(&mut hv, &pci, &functions, &dmar, spec, (i + 1) as u32, &mut claimed) {
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

#[allow(clippy::too_many_arguments)]
fn start(
    hv: &mut Hv,
    pci: &PciSegment<Ecam>,
    functions: &[PciFunction],
    dmar: &Dmar,
    spec: &PartitionSpec,
    asid: u32,
    claimed: &mut Vec<Bdf>,
) -> Result<Runnable<SvmVcpu>, String> {
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
        let (unit, regions) = machine::placement(dmar, pci, f)?;
        devs.push((f, unit, regions));
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

    // Nested paging: RAM, then each device's memory BARs at their own
    // address.
    let mut npt = Npt::new().map_err(String::from)?;
    npt.map(layout::RAM_BASE, hpa, spec.ram_bytes, false).map_err(|e| format!("NPT RAM: {e}"))?;
    let mut start_devices = Vec::new();
    for (f, unit, regions) in devs {
        let is_edu = f.vendor_id == sluice_pci::edu::VENDOR_ID && f.device_id == sluice_pci::edu::DEVICE_ID;
        let dma_bits = if is_edu { 28 } else { 64 };
        let id = hv
            .add_device(DeviceConfig { partition: p, unit, rid: u32::from(f.bdf.rid()), dma_bits, regions })
            .map_err(|e| format!("device {}: {e:?}", f.bdf))?;
        let mut bar0 = (0, 0);
        for bar in f.bars.iter().filter(|b| b.is_memory() && b.is_assigned()) {
            let cpu = bar.address;
            let len = bar.size.next_multiple_of(4096);
            if cpu >= 1 << 32 || (cpu < layout::RAM_BASE + spec.ram_bytes && layout::RAM_BASE < cpu + len) {
                return Err(format!("device {} BAR{} at {cpu:#x} is outside the partition's 4 GiB or inside its RAM", f.bdf, bar.slot));
            }
            npt.map(cpu, cpu, len, true).map_err(|e| format!("NPT BAR {cpu:#x}: {e}"))?;
            paging::map_identity(cpu, len, Cache::Mmio).map_err(|e| format!("map BAR {cpu:#x}: {e:?}"))?;
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
            "[{}] device {} (requester {:#06x} on VT-d unit {unit}) as device {id}, BAR0 {:#x}+{:#x}",
            spec.name,
            f.bdf,
            f.bdf.rid(),
            bar0.0,
            bar0.1
        );
        claimed.push(f.bdf);
    }
    let entry = partition::load_program(hv, p, program, EM_X86_64)?;
    partition::write_start_info(hv, p, spec.name, spec.ram_bytes, &start_devices)?;
    let cr3 = svm::guest_page_tables(|gpa, bytes| hv.write_guest(p, gpa, bytes).map_err(|e| format!("guest page tables: {e:?}")))?;
    println!(
        "[{}] {} MiB RAM at GPA {:#x} (host {hpa:#x}), program {} ({} bytes, entry {entry:#x}), ASID {asid}, nested root {:#x}",
        spec.name,
        spec.ram_bytes >> 20,
        layout::RAM_BASE,
        spec.program,
        program.len(),
        npt.root()
    );
    // The nested tables stay allocated for good: this version never tears
    // a partition down (the frames are not given back).
    let vcpu = SvmVcpu::new(entry, layout::STACK_TOP_GPA, layout::START_INFO_GPA, cr3, npt.root(), asid).map_err(String::from)?;
    Ok(Runnable { partition: p, name: spec.name.to_string(), vcpu })
}

fn report_units(hv: &mut Hv) {
    for u in hv.machine().units.iter_mut() {
        for f in u.take_raw_faults() {
            println!("VTD-FAULT sid={:#06x} reason={} addr={:#x} write={}", f.sid, f.reason, f.addr, u8::from(!f.read));
        }
    }
    for (i, u) in hv.units().iter().enumerate() {
        let s = u.stats();
        println!(
            "sluice: VT-d unit {i}: invalidations: {} context, {} page-selective, {} domain-selective; {} faults, {} overflows, {} timeouts",
            s.context_invalidations, s.iotlb_pages, s.iotlb_domain, s.faults, s.overflows, s.timeouts
        );
    }
}
