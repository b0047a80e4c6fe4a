//! The VT-d self-test (`./qemu-run.sh x86_64 --selftest`).
//!
//! Brings up the platform the way the hypervisor will for partitions: ACPI
//! (DMAR, MCFG), PCI over ECAM, one [`VtdUnit`] per DRHD, the core's
//! [`Hypervisor`] on top. Two partitions are made (their RAM is real host
//! memory), each owning one edu device. Partition A's requests go through
//! the real hypercall decoder (structures in its RAM); its device then
//! DMAs through the HWPT the core wrote, both ways, and the bytes are
//! checked in RAM. After the unmap its DMA must fault, with the IOVA,
//! requester id and reason the partition then reads back with FAULT_READ,
//! and RAM must be untouched. B's device, never attached (blocked), must
//! fault on A's buffer IOVA too. `tests/qemu/x86_64-selftest.sh` checks
//! QEMU's own trace against the `VTD-FAULT` lines printed here.
//!
//! Faults are polled after every DMA, as the fault interrupt will do:
//! QEMU's unit has a single fault recording register and drops ("compresses")
//! every fault while it is full.
//!
//! `selftest=malformed` instead writes a reserved bit into a leaf entry on
//! purpose, to prove the harness notices malformed entries.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use sluice_acpi::{AcpiTables, PhysRead, PhysReadError};
use sluice_kernel::abi::{FaultRead, FaultRecord, IoasAlloc, IoasMap, IoasUnmap, DeviceAttach, fault_reason, map_flags, resv_type};
use sluice_kernel::hv::{DeviceConfig, Hypervisor, PartitionConfig, Region};
use sluice_kernel::hypercall::Outcome;
use sluice_kernel::iommu::{Flush, Iommu};
use sluice_kernel::iova::Range;
use sluice_kernel::memmap::RamRange;
use sluice_kernel::pt::TableMemory;
use sluice_kernel::{Gpa, Hpa, Iova};
use sluice_pci::edu::{self, Edu, EduMmio};
use sluice_pci::{Ecam, PciSegment};
use sluice_vtd::VtdUnit;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use crate::bootinfo::BootInfo;
use crate::paging::{self, Cache};
use crate::platform::{FrameTables, IdentityRam};
use crate::tsc::Tsc;
use crate::frames;

type Unit = VtdUnit<FrameTables, Tsc>;
type Hv = Hypervisor<Unit, FrameTables, IdentityRam>;

/// Partition RAM: 2 MiB each, at this guest-physical address.
const PART_GPA: u64 = 0x10_0000;
const PART_PAGES: usize = 512;
/// Where partition A keeps hypercall structures, and its DMA buffer.
const SCRATCH: u64 = PART_GPA;
const FAULTS: u64 = PART_GPA + 0x1000;
const BUFFER: u64 = PART_GPA + 0x10_0000;
/// edu DMA waits: a transfer takes ~100 ms of virtual time.
const EDU_TIMEOUT_US: u64 = 5_000_000;
/// The VT-d interrupt address range: never DMA-mappable.
const MSI_WINDOW: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

const IOAS_ALLOC: u64 = 0x81;
const IOAS_MAP: u64 = 0x85;
const IOAS_UNMAP: u64 = 0x86;
const DEVICE_ATTACH: u64 = 0xC1;
const FAULT_READ: u64 = 0xC4;

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

fn check(what: &str, ok: bool) -> Result<(), String> {
    if ok {
        println!("selftest: ok: {what}");
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
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
    check("two edu devices found", edus.len() >= 2)?;

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
    check("translation enabled on every unit", !units.is_empty())?;
    let noncoherent = units.iter().any(|u| !u.caps().coherent);
    crate::platform::set_noncoherent_walks(noncoherent);
    println!("selftest: table writes flushed with CLFLUSH: {noncoherent} (ECAP.C)");

    let mut hv: Hv = Hypervisor::new(units, FrameTables::new(), IdentityRam::new());
    let mut parts = Vec::new();
    for name in ["A", "B"] {
        let hpa = frames::alloc_zeroed(PART_PAGES).ok_or("no memory for partition RAM")?;
        let cfg = PartitionConfig { name: name.to_string(), ram: vec![RamRange { gpa: Gpa(PART_GPA), len: (PART_PAGES * 4096) as u64, hpa: Hpa(hpa) }], pin_limit: 64, max_areas: 64 };
        parts.push((hv.add_partition(cfg).map_err(|e| format!("partition {name}: {e:?}"))?, hpa));
    }
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
            .add_device(DeviceConfig { partition: parts[k].0, unit, rid: u32::from(rid), dma_bits: 28, regions })
            .map_err(|e| format!("device {}: {e:?}", f.bdf))?;
        let bar0 = edu::enable(&pci, f).map_err(|e| format!("edu {}: {e}", f.bdf))?;
        paging::map_identity(bar0, edu::BAR0_SIZE, Cache::Mmio).map_err(|e| format!("map edu BAR0: {e:?}"))?;
        // SAFETY: BAR0 of this edu, mapped just above; only this test
        // drives the device.
        let dev = Edu::new(unsafe { EduMmio::new(bar0 as usize) });
        dev.check().map_err(|e| format!("edu {}: {e}", f.bdf))?;
        println!("selftest: edu {} rid {rid:#06x} -> unit {unit}, partition {}, device id {id}, BAR0 {bar0:#x}", f.bdf, ["A", "B"][k]);
        devs.push((dev, id, rid, unit));
    }
    let (pa, pb) = (parts[0].0, parts[1].0);
    let buffer_hpa = parts[0].1 + (BUFFER - PART_GPA);

    // Partition A, through the decoder: an IOAS, its device attached, two
    // pages of its RAM mapped at an automatic IOVA.
    let mut unmaps = 0u32;
    let ioas = call(&mut hv, pa, IOAS_ALLOC, IoasAlloc { size: 12, flags: 0, out_ioas_id: 0 })?.out_ioas_id;
    let att = call(&mut hv, pa, DEVICE_ATTACH, DeviceAttach { size: 16, flags: 0, dev_id: devs[0].1, pt_id: ioas })?;
    println!("selftest: A: IOAS {ioas}, device {} attached through HWPT {}", devs[0].1, att.pt_id);
    let rw = map_flags::READABLE | map_flags::WRITEABLE;
    let map = IoasMap { size: 40, flags: rw, ioas_id: ioas, reserved: 0, gpa: BUFFER, length: 0x2000, iova: 0 };
    let iova = call(&mut hv, pa, IOAS_MAP, map)?.iova;
    println!("selftest: A: mapped GPA {BUFFER:#x} (host {buffer_hpa:#x}) at IOVA {iova:#x}");
    check("the IOVA fits the edu's 28-bit DMA limit", iova + 0x2000 <= 1 << 28)?;

    if malformed {
        return corrupt_leaf(&mut hv, devs[0].3, &devs[0].0, iova);
    }

    let pattern: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(31) ^ 0x5a) as u8).collect();
    hv.write_guest(pa, BUFFER, &pattern).map_err(|e| format!("write A: {e:?}"))?;
    let (edu_a, edu_b) = (&devs[0].0, &devs[1].0);
    // The edu's buffer is reachable only by DMA: RAM page 0 -> device ->
    // RAM page 1, then page 1 must hold page 0's bytes.
    edu_a.dma_from_ram(Iova(iova), 0, 4096, &Tsc, EDU_TIMEOUT_US).map_err(|e| format!("edu A read DMA: {e}"))?;
    hv.poll_faults();
    edu_a.dma_to_ram(0, Iova(iova + 0x1000), 4096, &Tsc, EDU_TIMEOUT_US).map_err(|e| format!("edu A write DMA: {e}"))?;
    hv.poll_faults();
    let mut back = vec![0u8; 4096];
    hv.read_guest(pa, BUFFER + 0x1000, &mut back).map_err(|e| format!("read A: {e:?}"))?;
    check("edu A copied page 0 to page 1 by DMA through the IOMMU, both ways", back == pattern)?;
    check("no fault while mapped", hv.pending_faults(pa) == 0)?;

    // Unmap: the next DMA must fault and leave RAM alone.
    let unmapped = call(&mut hv, pa, IOAS_UNMAP, IoasUnmap { size: 24, ioas_id: ioas, iova, length: 0x2000 })?.length;
    unmaps += 1;
    check("UNMAP removed both pages", unmapped == 0x2000)?;
    let marker = vec![0xc3u8; 4096];
    hv.write_guest(pa, BUFFER + 0x1000, &marker).map_err(|e| format!("write A: {e:?}"))?;
    edu_a.dma_to_ram(0, Iova(iova + 0x1000), 4096, &Tsc, EDU_TIMEOUT_US).map_err(|e| format!("edu A write DMA: {e}"))?;
    hv.poll_faults();
    hv.read_guest(pa, BUFFER + 0x1000, &mut back).map_err(|e| format!("read A: {e:?}"))?;
    check("after UNMAP the device's write did not reach RAM", back == marker)?;
    let faults = fault_read(&mut hv, pa)?;
    check(
        &format!("A read one fault: device {} IOVA {:#x} NOT_PRESENT write ({faults:x?})", devs[0].1, iova + 0x1000),
        faults.len() == 1
            && faults[0].dev_id == devs[0].1
            && faults[0].iova == iova + 0x1000
            && faults[0].reason == fault_reason::NOT_PRESENT
            && faults[0].flags == fault_reason::FLAG_WRITE,
    )?;

    // Map again at the same IOVA; B's device (never attached: blocked)
    // aims at it, both ways.
    let map = IoasMap { flags: rw | map_flags::FIXED_IOVA, iova, ..map };
    call(&mut hv, pa, IOAS_MAP, map)?;
    // B's edu buffer holds zeros (it never read anything): a write that
    // got through would change A's pattern.
    edu_b.dma_to_ram(0, Iova(iova), 4096, &Tsc, EDU_TIMEOUT_US).map_err(|e| format!("edu B write DMA: {e}"))?;
    hv.poll_faults();
    edu_b.dma_from_ram(Iova(iova + 0x1000), 0x800, 0x800, &Tsc, EDU_TIMEOUT_US).map_err(|e| format!("edu B read DMA: {e}"))?;
    hv.poll_faults();
    hv.read_guest(pa, BUFFER, &mut back).map_err(|e| format!("read A: {e:?}"))?;
    check("the blocked device could not write A's page", back == pattern)?;
    let faults_b = fault_read(&mut hv, pb)?;
    check(
        &format!("B read two faults of its own device at A's IOVA ({faults_b:x?})"),
        faults_b.len() == 2
            && faults_b.iter().all(|f| f.dev_id == devs[1].1 && f.reason == fault_reason::NOT_PRESENT)
            && faults_b[0].iova == iova
            && faults_b[0].flags == fault_reason::FLAG_WRITE
            && faults_b[1].iova == iova + 0x1000
            && faults_b[1].flags == fault_reason::FLAG_READ,
    )?;
    check("A saw none of B's faults", hv.pending_faults(pa) == 0)?;
    // A's device still works through the remapped page.
    edu_a.dma_from_ram(Iova(iova), 0, 4096, &Tsc, EDU_TIMEOUT_US).map_err(|e| format!("edu A read DMA: {e}"))?;
    hv.poll_faults();
    edu_a.dma_to_ram(0, Iova(iova + 0x1000), 4096, &Tsc, EDU_TIMEOUT_US).map_err(|e| format!("edu A write DMA: {e}"))?;
    hv.poll_faults();
    hv.read_guest(pa, BUFFER + 0x1000, &mut back).map_err(|e| format!("read A: {e:?}"))?;
    check("A's device copies its pages again after the remap", back == pattern)?;
    call(&mut hv, pa, IOAS_UNMAP, IoasUnmap { size: 24, ioas_id: ioas, iova: 0, length: u64::MAX })?;
    unmaps += 1;
    hv.check_invariants().map_err(|e| format!("invariants: {e}"))?;
    check("core invariants hold (tables == areas, pins balanced)", true)?;
    check("no pinned page left", hv.partition(pa).pinned() == 0)?;

    // What the units recorded, raw, for the harness to compare with QEMU.
    report_raw_faults(&mut hv);
    for (i, u) in hv.units().iter().enumerate() {
        let s = u.stats();
        println!(
            "selftest: unit {i}: invalidations: {} context, {} page-selective, {} domain-selective, {} global; {} waits, {} timeouts, {} faults, {} overflows",
            s.context_invalidations, s.iotlb_pages, s.iotlb_domain, s.iotlb_global, s.waits, s.timeouts, s.faults, s.overflows
        );
    }
    check("no IOMMU operation failed", hv.iommu_failures() == 0 && hv.stray_faults() == 0)?;
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

/// Write `req` into partition `p`'s scratch page, make the hypercall,
/// read the structure back.
fn call<T: IntoBytes + FromBytes + Immutable>(hv: &mut Hv, p: usize, nr: u64, req: T) -> Result<T, String> {
    hv.write_guest(p, SCRATCH, req.as_bytes()).map_err(|e| format!("scratch: {e:?}"))?;
    match hv.hypercall(p, nr, SCRATCH) {
        Outcome::Return(0) => {}
        Outcome::Return(r) => return Err(format!("hypercall {nr:#x} returned {r}")),
        Outcome::Exit(c) => return Err(format!("hypercall {nr:#x} exited the partition ({c})")),
    }
    let mut out = T::new_zeroed();
    hv.read_guest(p, SCRATCH, out.as_mut_bytes()).map_err(|e| format!("scratch: {e:?}"))?;
    Ok(out)
}

fn fault_read(hv: &mut Hv, p: usize) -> Result<Vec<FaultRecord>, String> {
    let req = FaultRead { size: 32, flags: 0, num_faults: 16, reserved: 0, faults: FAULTS, out_lost: 0 };
    let out = call(hv, p, FAULT_READ, req)?;
    let mut records = Vec::new();
    for i in 0..u64::from(out.num_faults) {
        let mut r = FaultRecord::new_zeroed();
        hv.read_guest(p, FAULTS + i * 24, r.as_mut_bytes()).map_err(|e| format!("faults: {e:?}"))?;
        records.push(r);
    }
    for r in &records {
        println!("selftest: partition {p} FAULT_READ: dev {} iova {:#x} reason {} flags {}", r.dev_id, r.iova, r.reason, r.flags);
    }
    check("no fault lost", out.out_lost == 0)?;
    Ok(records)
}

/// `selftest=malformed`: set bit 11 (SNP, reserved when ECAP.SC is 0) in
/// the leaf mapping `iova`, invalidate it and DMA through it. QEMU must
/// report the malformed entry; the harness checks that it noticed.
fn corrupt_leaf(hv: &mut Hv, unit: usize, dev: &Edu<EduMmio>, iova: u64) -> Result<(), String> {
    let d = (0..hv.devices().len()).find_map(|i| hv.device_domain(i)).ok_or("no attached device")?;
    let mut table = d.root;
    let levels = d.format.input_bits().saturating_sub(12) / 9;
    let mem = FrameTables::new();
    for level in (0..levels).rev() {
        let index = ((iova >> (12 + 9 * level)) & 511) as usize;
        let entry = &mem.table(table)[index];
        if level == 0 {
            entry.fetch_or(1 << 11, core::sync::atomic::Ordering::SeqCst);
            println!("selftest: malformed: set bit 11 in the leaf for IOVA {iova:#x} (table {:#x} index {index})", table.raw());
            break;
        }
        table = Hpa(entry.load(core::sync::atomic::Ordering::SeqCst) & 0x000f_ffff_ffff_f000);
    }
    hv.machine().units[unit].flush(&Flush { tag: d.tag, range: Some((Iova(iova), 0x1000)), leaf_levels: 1, tables: false }).map_err(|e| format!("flush: {e:?}"))?;
    dev.dma_from_ram(Iova(iova), 0, 64, &Tsc, EDU_TIMEOUT_US).map_err(|e| format!("edu DMA: {e}"))?;
    report_raw_faults(hv);
    Err("malformed-entry mode: this run is meant to be rejected".to_string())
}
