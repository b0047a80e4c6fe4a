//! The isolation self-test both images run (`./qemu-run.sh ARCH
//! --selftest`), once the platform code has found the IOMMU units and two
//! edu devices and made the core's [`Hypervisor`] with two partitions.
//!
//! Partition A's requests go through the real hypercall decoder
//! (structures in its RAM); its device then DMAs through the HWPT the core
//! wrote, both ways, and the bytes are checked in RAM. After the unmap its
//! DMA must fault, with the IOVA, device and reason the partition then
//! reads back with FAULT_READ, and RAM must be untouched. B's device,
//! never attached (blocked), aims at A's buffer IOVA, both ways: RAM must
//! stay as it was. Then A's device works again through the remapped page.
//!
//! Faults are drained after every DMA, as the fault interrupt will: QEMU's
//! VT-d has a single fault recording register and drops every fault while
//! it is full.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Arguments;

use sluice_kernel::abi::{DeviceAttach, FaultRead, FaultRecord, IoasAlloc, IoasMap, IoasUnmap, fault_reason, map_flags};
use sluice_kernel::hv::{Hypervisor, PartitionConfig, PhysMem};
use sluice_kernel::hypercall::Outcome;
use sluice_kernel::iommu::Iommu;
use sluice_kernel::memmap::RamRange;
use sluice_kernel::pt::TableMemory;
use sluice_kernel::time::Clock;
use sluice_kernel::{Gpa, Hpa, Iova};
use sluice_pci::edu::{Edu, EduMmio};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use crate::frames;

/// Partition RAM: 2 MiB each, at this guest-physical address.
pub const PART_GPA: u64 = 0x10_0000;
/// Pages of RAM per partition.
pub const PART_PAGES: usize = 512;
/// Where partition A keeps hypercall structures.
const SCRATCH: u64 = PART_GPA;
/// Where FAULT_READ writes records.
const FAULTS: u64 = PART_GPA + 0x1000;
/// Partition A's DMA buffer (two pages).
pub const BUFFER: u64 = PART_GPA + 0x10_0000;
/// edu DMA waits: a transfer takes ~100 ms of virtual time.
pub const EDU_TIMEOUT_US: u64 = 5_000_000;

const IOAS_ALLOC: u64 = 0x81;
const IOAS_MAP: u64 = 0x85;
const IOAS_UNMAP: u64 = 0x86;
const DEVICE_ATTACH: u64 = 0xC1;
const FAULT_READ: u64 = 0xC4;

/// Make the two self-test partitions, "A" and "B", each with
/// [`PART_PAGES`] pages of zeroed host RAM at [`PART_GPA`]. Returns their
/// indices.
///
/// # Errors
///
/// No memory, or the core refused the configuration.
pub fn add_partitions<U: Iommu, M: TableMemory, R: PhysMem>(hv: &mut Hypervisor<U, M, R>) -> Result<[usize; 2], String> {
    let mut parts = [0; 2];
    for (slot, name) in parts.iter_mut().zip(["A", "B"]) {
        let hpa = frames::alloc_zeroed(PART_PAGES).ok_or("no memory for partition RAM")?;
        let ram = vec![RamRange { gpa: Gpa(PART_GPA), len: (PART_PAGES * 4096) as u64, hpa: Hpa(hpa) }];
        let cfg = PartitionConfig { name: name.to_string(), ram, pin_limit: 64, max_areas: 64 };
        *slot = hv.add_partition(cfg).map_err(|e| format!("partition {name}: {e:?}"))?;
    }
    Ok(parts)
}

/// What blocked DMA leaves behind, which differs between IOMMUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockedDma {
    /// A fault record per access (VT-d: no present context entry).
    Faults,
    /// Nothing but the abort (SMMUv3: an abort STE records no event); the
    /// harness sees the aborts in QEMU's trace.
    Silent,
}

/// One run of the scenario: the two partitions, their edu devices (A's,
/// then B's) with their device ids, the clock for DMA waits, and where
/// lines go.
#[derive(Debug)]
pub struct Isolation<'a, C> {
    /// Partition indices, A then B.
    pub parts: [usize; 2],
    /// The edu devices, A's then B's.
    pub edu: [&'a Edu<EduMmio>; 2],
    /// Their device ids.
    pub dev_ids: [u32; 2],
    /// For DMA waits.
    pub clock: &'a C,
    /// Prints one line on the console.
    pub out: fn(Arguments<'_>),
    /// What B's blocked DMA should leave.
    pub blocked: BlockedDma,
}

/// Where [`Isolation::setup`] left partition A.
#[derive(Clone, Copy, Debug)]
pub struct Mapped {
    /// A's IOAS.
    pub ioas: u32,
    /// The IOVA of the two-page buffer.
    pub iova: u64,
}

impl<C: Clock> Isolation<'_, C> {
    /// Print `selftest: ok: what` and pass, or fail saying what.
    ///
    /// # Errors
    ///
    /// `ok` is false.
    pub fn check(&self, what: &str, ok: bool) -> Result<(), String> {
        if ok {
            (self.out)(format_args!("selftest: ok: {what}"));
            Ok(())
        } else {
            Err(format!("check failed: {what}"))
        }
    }

    /// Partition A, through the decoder: an IOAS, its device attached, two
    /// pages of its RAM mapped at an automatic IOVA.
    ///
    /// # Errors
    ///
    /// A hypercall or check failed.
    pub fn setup<U: Iommu, M: TableMemory, R: PhysMem>(&self, hv: &mut Hypervisor<U, M, R>) -> Result<Mapped, String> {
        let pa = self.parts[0];
        let ioas = call(hv, pa, IOAS_ALLOC, IoasAlloc { size: 12, flags: 0, out_ioas_id: 0 })?.out_ioas_id;
        let att = call(hv, pa, DEVICE_ATTACH, DeviceAttach { size: 16, flags: 0, dev_id: self.dev_ids[0], pt_id: ioas })?;
        (self.out)(format_args!("selftest: A: IOAS {ioas}, device {} attached through HWPT {}", self.dev_ids[0], att.pt_id));
        let map = IoasMap { size: 40, flags: READ_WRITE, ioas_id: ioas, reserved: 0, gpa: BUFFER, length: 0x2000, iova: 0 };
        let iova = call(hv, pa, IOAS_MAP, map)?.iova;
        (self.out)(format_args!("selftest: A: mapped GPA {BUFFER:#x} at IOVA {iova:#x}"));
        self.check("the IOVA fits the edu's 28-bit DMA limit", iova + 0x2000 <= 1 << 28)?;
        Ok(Mapped { ioas, iova })
    }

    /// The DMA part, after [`Isolation::setup`]. `drain` moves the units'
    /// fault records into the core after each DMA. Returns the number of
    /// UNMAP hypercalls made, for the harness to compare with the
    /// invalidations QEMU saw.
    ///
    /// # Errors
    ///
    /// A hypercall, a DMA or a check failed.
    pub fn run<U: Iommu, M: TableMemory, R: PhysMem>(
        &self,
        hv: &mut Hypervisor<U, M, R>,
        Mapped { ioas, iova }: Mapped,
        drain: &mut dyn FnMut(&mut Hypervisor<U, M, R>),
    ) -> Result<u32, String> {
        let [pa, pb] = self.parts;
        let [edu_a, edu_b] = self.edu;
        let clock = self.clock;
        let t = EDU_TIMEOUT_US;
        let mut unmaps = 0;
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(31) ^ 0x5a) as u8).collect();
        hv.write_guest(pa, BUFFER, &pattern).map_err(|e| format!("write A: {e:?}"))?;
        // The edu's buffer is reachable only by DMA: RAM page 0 -> device
        // -> RAM page 1, then page 1 must hold page 0's bytes.
        edu_a.dma_from_ram(Iova(iova), 0, 4096, clock, t).map_err(|e| format!("edu A read DMA: {e}"))?;
        drain(hv);
        edu_a.dma_to_ram(0, Iova(iova + 0x1000), 4096, clock, t).map_err(|e| format!("edu A write DMA: {e}"))?;
        drain(hv);
        let mut back = vec![0u8; 4096];
        hv.read_guest(pa, BUFFER + 0x1000, &mut back).map_err(|e| format!("read A: {e:?}"))?;
        self.check("edu A copied page 0 to page 1 by DMA through the IOMMU, both ways", back == pattern)?;
        self.check("no fault while mapped", hv.pending_faults(pa) == 0)?;

        // Unmap: the next DMA must fault and leave RAM alone.
        let unmapped = call(hv, pa, IOAS_UNMAP, IoasUnmap { size: 24, ioas_id: ioas, iova, length: 0x2000 })?.length;
        unmaps += 1;
        self.check("UNMAP removed both pages", unmapped == 0x2000)?;
        let marker = vec![0xc3u8; 4096];
        hv.write_guest(pa, BUFFER + 0x1000, &marker).map_err(|e| format!("write A: {e:?}"))?;
        edu_a.dma_to_ram(0, Iova(iova + 0x1000), 4096, clock, t).map_err(|e| format!("edu A write DMA: {e}"))?;
        drain(hv);
        hv.read_guest(pa, BUFFER + 0x1000, &mut back).map_err(|e| format!("read A: {e:?}"))?;
        self.check("after UNMAP the device's write did not reach RAM", back == marker)?;
        let faults = self.fault_read(hv, pa)?;
        let (dev_a, dev_b) = (self.dev_ids[0], self.dev_ids[1]);
        self.check(
            &format!("A read one fault: device {dev_a} IOVA {:#x} NOT_PRESENT write ({faults:x?})", iova + 0x1000),
            faults.len() == 1
                && faults[0].dev_id == dev_a
                && faults[0].iova == iova + 0x1000
                && faults[0].reason == fault_reason::NOT_PRESENT
                && faults[0].flags == fault_reason::FLAG_WRITE,
        )?;

        // Map again at the same IOVA; B's device (never attached: blocked)
        // aims at it, both ways. B's edu buffer holds zeros (it never read
        // anything): a write that got through would change A's pattern.
        let map = IoasMap { size: 40, flags: READ_WRITE | map_flags::FIXED_IOVA, ioas_id: ioas, reserved: 0, gpa: BUFFER, length: 0x2000, iova };
        call(hv, pa, IOAS_MAP, map)?;
        edu_b.dma_to_ram(0, Iova(iova), 4096, clock, t).map_err(|e| format!("edu B write DMA: {e}"))?;
        drain(hv);
        edu_b.dma_from_ram(Iova(iova + 0x1000), 0x800, 0x800, clock, t).map_err(|e| format!("edu B read DMA: {e}"))?;
        drain(hv);
        hv.read_guest(pa, BUFFER, &mut back).map_err(|e| format!("read A: {e:?}"))?;
        self.check("the blocked device could not write A's page", back == pattern)?;
        let faults_b = self.fault_read(hv, pb)?;
        match self.blocked {
            BlockedDma::Faults => self.check(
                &format!("B read two faults of its own device at A's IOVA ({faults_b:x?})"),
                faults_b.len() == 2
                    && faults_b.iter().all(|f| f.dev_id == dev_b && f.reason == fault_reason::NOT_PRESENT)
                    && faults_b[0].iova == iova
                    && faults_b[0].flags == fault_reason::FLAG_WRITE
                    && faults_b[1].iova == iova + 0x1000
                    && faults_b[1].flags == fault_reason::FLAG_READ,
            )?,
            BlockedDma::Silent => self.check(
                &format!("B's blocked DMA was aborted without an event record ({} faults)", faults_b.len()),
                faults_b.is_empty(),
            )?,
        }
        self.check("A saw none of B's faults", hv.pending_faults(pa) == 0)?;
        // A's device still works through the remapped page.
        edu_a.dma_from_ram(Iova(iova), 0, 4096, clock, t).map_err(|e| format!("edu A read DMA: {e}"))?;
        drain(hv);
        edu_a.dma_to_ram(0, Iova(iova + 0x1000), 4096, clock, t).map_err(|e| format!("edu A write DMA: {e}"))?;
        drain(hv);
        hv.read_guest(pa, BUFFER + 0x1000, &mut back).map_err(|e| format!("read A: {e:?}"))?;
        self.check("A's device copies its pages again after the remap", back == pattern)?;
        call(hv, pa, IOAS_UNMAP, IoasUnmap { size: 24, ioas_id: ioas, iova: 0, length: u64::MAX })?;
        unmaps += 1;
        hv.check_invariants().map_err(|e| format!("invariants: {e}"))?;
        self.check("core invariants hold (tables == areas, pins balanced)", true)?;
        self.check("no pinned page left", hv.partition(pa).pinned() == 0)?;
        self.check("no IOMMU operation failed", hv.iommu_failures() == 0 && hv.stray_faults() == 0)?;
        Ok(unmaps)
    }

    fn fault_read<U: Iommu, M: TableMemory, R: PhysMem>(&self, hv: &mut Hypervisor<U, M, R>, p: usize) -> Result<Vec<FaultRecord>, String> {
        let req = FaultRead { size: 32, flags: 0, num_faults: 16, reserved: 0, faults: FAULTS, out_lost: 0 };
        let out = call(hv, p, FAULT_READ, req)?;
        let mut records = Vec::new();
        for i in 0..u64::from(out.num_faults) {
            let mut r = FaultRecord::new_zeroed();
            hv.read_guest(p, FAULTS + i * 24, r.as_mut_bytes()).map_err(|e| format!("faults: {e:?}"))?;
            records.push(r);
        }
        for r in &records {
            (self.out)(format_args!("selftest: partition {p} FAULT_READ: dev {} iova {:#x} reason {} flags {}", r.dev_id, r.iova, r.reason, r.flags));
        }
        self.check("no fault lost", out.out_lost == 0)?;
        Ok(records)
    }
}

const READ_WRITE: u32 = map_flags::READABLE | map_flags::WRITEABLE;

/// Write `req` into partition `p`'s scratch page, make the hypercall,
/// read the structure back.
fn call<T, U, M, R>(hv: &mut Hypervisor<U, M, R>, p: usize, nr: u64, req: T) -> Result<T, String>
where
    T: IntoBytes + FromBytes + Immutable,
    U: Iommu,
    M: TableMemory,
    R: PhysMem,
{
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

/// `selftest=malformed`: OR `bits` into the leaf entry that maps `iova` in
/// the first attached device's domain, then invalidate it on the device's
/// unit, so
/// that the next DMA walks a malformed entry. Only to prove that the
/// harness notices what the emulated IOMMU reports about such entries.
///
/// # Errors
///
/// No attached device, no leaf at `iova`, or the invalidation failed.
pub fn corrupt_leaf<U: Iommu, M: TableMemory, R: PhysMem>(hv: &mut Hypervisor<U, M, R>, iova: u64, bits: u64) -> Result<String, String> {
    use core::sync::atomic::Ordering;
    use sluice_kernel::iommu::Flush;

    let (unit, d) = (0..hv.devices().len()).find_map(|i| Some((hv.devices()[i].unit, hv.device_domain(i)?))).ok_or("no attached device")?;
    let levels = d.format.input_bits().saturating_sub(12).div_ceil(9);
    let mut table = d.root;
    let mem = hv.table_memory();
    for level in (0..levels).rev() {
        let index = ((iova >> (12 + 9 * level)) & 511) as usize;
        let entry = &mem.table(table)[index];
        let value = entry.load(Ordering::SeqCst);
        if value & 1 == 0 {
            return Err(format!("no leaf for IOVA {iova:#x} (level {level} entry {value:#x})"));
        }
        if level == 0 {
            entry.fetch_or(bits, Ordering::SeqCst);
            mem.sync_entries(table, index, 1);
            let what = format!("leaf for IOVA {iova:#x} at table {:#x} index {index}: {value:#x} -> {:#x}", table.raw(), value | bits);
            let flush = Flush { tag: d.tag, range: Some((Iova(iova), 0x1000)), leaf_levels: 1, tables: false };
            hv.machine().units[unit].flush(&flush).map_err(|e| format!("flush: {e:?}"))?;
            return Ok(what);
        }
        table = Hpa(value & 0x000f_ffff_ffff_f000);
    }
    Err("the domain has no levels".into())
}
