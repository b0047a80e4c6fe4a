//! The harness the hypercall fuzz targets (`fuzz/`) and their regression
//! tests (`tests/fuzz_regressions.rs`) share.
//!
//! One fixed machine ([`Harness::new`]): partitions P and Q, a VT-d unit,
//! an SMMUv3 stage-2 and an SMMUv3 stage-1 unit, five devices, and some
//! state already made in both partitions (IOASes, attached devices, a
//! mapping each). Two ways to drive it:
//!
//! - [`run_bytes`]: raw records, each a hypercall (number, struct bytes
//!   placed anywhere in or across the end of the caller's RAM, its pointer
//!   and count fields possibly pointing anywhere), a write to partition
//!   memory, or a DMA by one of the devices;
//! - [`run_ops`]: a sequence of structured [`Op`]s (with the `arbitrary`
//!   feature they derive `arbitrary::Arbitrary`).
//!
//! After every step the harness checks ([`Harness::call`],
//! [`Harness::dma`]) that
//! - `Sim::invariants` holds (the core's `check_invariants` and the units'
//!   view: contexts and IOTLB entries),
//! - a hypercall returned 0 or an errno of the ABI, the framing errno
//!   ABI.md prescribes when the framing is wrong, and never EIO (the units
//!   here never fail),
//! - a hypercall that returned an errno changed nothing (UNMAP's partial
//!   ENOENT aside),
//! - the other partition is untouched: its objects, areas, pins and fault
//!   queue, its devices and their unit contexts, its IOTLB entries, its RAM,
//! - a DMA reaches exactly the pages the areas of the IOAS its device is
//!   attached to say, with their permission, or faults at the first byte
//!   they do not allow.
//!
//! [`Harness::finish`] then tears everything down through the core's
//! operations: no pin and no table page may be left.

use std::fmt::Write as _;

use sluice_kernel::abi::{
    self, ConsoleWrite, Destroy, DeviceAttach, DeviceDetach, DeviceList, DeviceResvIovaRanges, Errno, FaultRead, GetHwInfo,
    IoasAlloc, IoasAllowIovas, IoasCopy, IoasIovaRanges, IoasMap, IoasUnmap, OptionCmd,
};
use sluice_kernel::hv::{Ioas, PhysMem};
use sluice_kernel::hypercall::{MAX_STRUCT_SIZE, Outcome};
use sluice_kernel::pt::Perm;
use sluice_kernel::{Gpa, Hpa};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::script::Sim;
use crate::sim::UnitKind;

/// Partition P (index 0).
pub const P: usize = 0;
/// Partition Q (index 1).
pub const Q: usize = 1;
/// Where structured ops put their command struct (in either partition).
pub const SCRATCH: u64 = 0x1000;
/// Where structured ops put their arrays by default.
pub const ARRAY: u64 = 0x8000;
/// Steps (records or ops) run per input; the rest is ignored.
pub const MAX_STEPS: usize = 64;
/// Largest DMA, in bytes.
pub const MAX_DMA: u64 = 0x1_0000;
/// Object ids scanned for IOASes: more than the fixture's objects plus
/// one per step.
const ID_SCAN: u32 = 160;
const PAGE: u64 = 4096;

/// The machine: units, partitions (P's RAM is three ranges, two of them
/// adjacent in the partition but not in the host), devices.
pub const MACHINE: &[&str] = &[
    "iommu vtd0 kind=vtd aw=39",
    "iommu smmu0 kind=smmuv3 stage=2 ias=40",
    "iommu smmu1 kind=smmuv3 stage=1 ias=48",
    "partition p ram=0x0:0x1000000,0x1000000:0x1000000,0x100000000:0x200000 pin_limit=0x1000 max_areas=256",
    "partition q ram=0x0:0x1000000 pin_limit=0x800 max_areas=256",
    "device a partition=p iommu=vtd0 rid=0x8 dma_bits=32",
    "device b partition=p iommu=smmu0 rid=0x10",
    "device e partition=p iommu=smmu1 rid=0x30 resv=0x8000000-0x80fffff:reserved",
    "device c partition=q iommu=vtd0 rid=0x18",
    "device d partition=q iommu=smmu1 rid=0x20 dma_bits=40",
];

/// State made before the fuzzed steps. P: devices 1..=3, IOASes 4 and 5,
/// HWPT 6 (device 1 on IOAS 4). Q: devices 1 and 2, IOAS 3, HWPTs 4 and 5.
pub const FIXTURE: &[&str] = &[
    "p ioas_alloc",
    "p ioas_alloc",
    "p device_attach dev=a pt_id=4",
    "p ioas_map ioas_id=4 flags=read|write gpa=0x200000 length=0x200000",
    "q ioas_alloc",
    "q device_attach dev=c pt_id=3",
    "q device_attach dev=d pt_id=3",
    "q ioas_map ioas_id=3 flags=read|write|fixed gpa=0x1000 length=0x1000 iova=0x1000",
];

/// Command numbers the raw records choose from: every command, reserved
/// and unknown numbers, and numbers that only look like commands in their
/// low 32 bits.
pub const NRS: [u64; 25] = [
    0x80,
    0x81,
    0x82,
    0x83,
    0x84,
    0x85,
    0x86,
    0x87,
    0x8A,
    0xC0,
    0xC1,
    0xC2,
    0xC3,
    0xC4,
    0xC5,
    0xC6,
    0x88,
    0x89,
    0x8B,
    0x9F,
    0xC7,
    0,
    0xff,
    (1 << 32) | 0x85,
    u64::MAX,
];

/// The machine and what the checks need.
#[derive(Debug)]
pub struct Harness {
    /// The simulated machine.
    pub sim: Sim,
    base_tables: usize,
    steps: usize,
    /// Print every step and its outcome to stderr (set by the environment
    /// variable `FUZZOPS_TRACE` in [`Harness::new`]).
    pub trace: bool,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

fn errno_of(ret: i64) -> Option<Errno> {
    Errno::ALL.into_iter().find(|e| e.to_return() == ret)
}

impl Harness {
    /// The machine of [`MACHINE`] with the state of [`FIXTURE`].
    #[must_use]
    pub fn new() -> Self {
        let mut sim = Sim::new();
        for l in MACHINE {
            let r = sim.statement(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert_eq!(r.status, "ok", "{l}");
        }
        let base_tables = sim.hv.table_memory().in_use();
        for l in FIXTURE {
            let r = sim.statement(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert_eq!(r.status, "ok", "{l}");
        }
        Self { sim, base_tables, steps: 0, trace: std::env::var_os("FUZZOPS_TRACE").is_some() }
    }

    /// Whether the step budget ([`MAX_STEPS`]) is spent.
    #[must_use]
    pub fn done(&self) -> bool {
        self.steps >= MAX_STEPS
    }

    /// An interesting guest-physical address of partition `p`, by
    /// selector, moved by `off` bytes: inside RAM, at and across the end of
    /// each RAM range, in no RAM at all, near the top of the address space.
    #[must_use]
    pub fn place(&self, p: usize, sel: u8, off: i8) -> u64 {
        let ranges = self.sim.hv.partition(p).memmap().ranges();
        let first = ranges[0];
        let last = ranges[ranges.len() - 1];
        let base = match sel % 12 {
            0 => SCRATCH,
            1 => ARRAY,
            2 => 0,
            3 => first.gpa.raw() + first.len,
            4 => last.gpa.raw() + last.len,
            5 => last.gpa.raw(),
            6 => 0x20_0000,
            7 => u64::MAX - 0x7f,
            8 => 0xfee0_0000,
            9 => 0x4000_0000,
            10 => 0x2000,
            _ => 1 << 32,
        };
        base.wrapping_add(off as i64 as u64)
    }

    /// Write `bytes` at `gpa` of partition `p` where it has RAM; the rest
    /// is dropped (as a CPU store to MMIO or nothing would be).
    pub fn put(&mut self, p: usize, gpa: u64, bytes: &[u8]) {
        if self.sim.hv.write_guest(p, gpa, bytes).is_err() {
            for (i, b) in bytes.iter().enumerate() {
                let _ = self.sim.hv.write_guest(p, gpa.wrapping_add(i as u64), &[*b]);
            }
        }
    }

    /// Read back `T` at `gpa` of partition `p`.
    fn get<T: FromBytes + IntoBytes + Immutable>(&self, p: usize, gpa: u64) -> Option<T> {
        let mut raw = vec![0u8; size_of::<T>()];
        self.sim.hv.read_guest(p, gpa, &mut raw).ok()?;
        T::read_from_bytes(&raw).ok()
    }

    /// Partition `p`'s state (objects, areas, pins, fault queue, ...), its
    /// devices' attachments and what the units hold for them: what a
    /// failed command of `p` must leave as it was (as `snapshot` in
    /// `tests/core.rs`).
    #[must_use]
    pub fn core_view(&self, p: usize) -> String {
        let hv = &self.sim.hv;
        let mut s = format!("{:?}\n", hv.partition(p));
        for d in hv.devices().iter().filter(|d| d.partition == p) {
            let _ = write!(s, "dev {} -> {:?}:", d.id, d.attached);
            for u in hv.units() {
                let _ = write!(s, " {:?}", u.context(d.rid).map(|c| (c.tag, c.root.raw())));
            }
            s.push('\n');
        }
        s
    }

    /// What no step of the other partition may change: [`Self::core_view`],
    /// the IOTLB entries of `p`'s domains, `p`'s RAM.
    #[must_use]
    pub fn partition_view(&self, p: usize) -> String {
        let hv = &self.sim.hv;
        let mut s = self.core_view(p);
        let tags: Vec<(usize, u32)> =
            hv.devices().iter().filter(|d| d.partition == p).filter_map(|d| hv.units()[d.unit].context(d.rid).map(|c| (d.unit, c.tag))).collect();
        for (u, unit) in hv.units().iter().enumerate() {
            let mut e: Vec<(u32, u64)> = unit.iotlb_entries().filter(|(t, _)| tags.contains(&(u, *t))).collect();
            e.sort_unstable();
            let _ = writeln!(s, "iotlb {u}: {e:x?}");
        }
        for r in hv.partition(p).memmap().ranges() {
            let _ = writeln!(s, "ram {:#x}: {:#x}", r.hpa.raw(), hv.ram().digest(r.hpa, r.len));
        }
        s
    }

    /// Everything a failed command must leave as it was: both partitions'
    /// [`Self::core_view`] and the table pages in use.
    #[must_use]
    pub fn state(&self) -> String {
        format!("{}{}tables in use {}", self.core_view(P), self.core_view(Q), self.sim.hv.table_memory().in_use())
    }

    /// The errno ABI.md's framing rules give for command `nr` with its
    /// struct at `gpa`, or `None` when the framing is right.
    #[must_use]
    pub fn framing_errno(&self, p: usize, nr: u64, gpa: u64) -> Option<Errno> {
        let hv = &self.sim.hv;
        let Some(info) = u32::try_from(nr).ok().and_then(abi::command) else { return Some(Errno::ENOTTY) };
        let mut raw = [0u8; 4];
        if hv.read_guest(p, gpa, &mut raw).is_err() {
            return Some(Errno::EFAULT);
        }
        let size = u32::from_le_bytes(raw);
        if size < info.min_size {
            return Some(Errno::EINVAL);
        }
        if !hv.is_ram(p, gpa, u64::from(size)) {
            return Some(Errno::EFAULT);
        }
        if size > MAX_STRUCT_SIZE {
            return Some(Errno::E2BIG);
        }
        if size > info.size {
            let mut tail = vec![0u8; (size - info.size) as usize];
            if hv.read_guest(p, gpa + u64::from(info.size), &mut tail).is_err() {
                return Some(Errno::EFAULT);
            }
            if tail.iter().any(|b| *b != 0) {
                return Some(Errno::E2BIG);
            }
        }
        None
    }

    /// The checks after every step of partition `actor`.
    fn after_step(&mut self, actor: usize, other_before: &str, what: &dyn Fn() -> String) -> Result<(), String> {
        self.sim.invariants().map_err(|e| format!("{}: invariant broken: {e}", what()))?;
        let other = 1 - actor;
        let after = self.partition_view(other);
        if after != other_before {
            return Err(format!("{}: touched partition {other}:\n--- before\n{other_before}\n--- after\n{after}", what()));
        }
        // The platform takes the console bytes as they come.
        for p in [P, Q] {
            self.sim.hv.partition_mut(p).take_console();
        }
        Ok(())
    }

    /// Run command `nr` for partition `p` with its struct at `gpa`, with
    /// every check.
    pub fn call(&mut self, p: usize, nr: u64, gpa: u64) -> Result<Outcome, String> {
        self.steps += 1;
        // What FAULT_READ would poll is in the queues before the snapshot.
        self.sim.hv.poll_faults();
        // The other partition's view holds its core view: the failure
        // check needs only the caller's and the table count besides.
        let before = (self.core_view(p), self.sim.hv.table_memory().in_use());
        let other = self.partition_view(1 - p);
        let framing = self.framing_errno(p, nr, gpa);
        let out = self.sim.hv.hypercall(p, nr, gpa);
        let what = || format!("partition {p} command {nr:#x} at {gpa:#x} -> {out:?}");
        if self.trace {
            eprintln!("{}", what());
        }
        match out {
            Outcome::Exit(_) => {
                if nr != 0xC6 || framing.is_some() {
                    return Err(format!("{}: exit, framing says {framing:?}", what()));
                }
            }
            Outcome::Return(0) => {
                if let Some(e) = framing {
                    return Err(format!("{}: succeeded, framing says {}", what(), e.name()));
                }
            }
            Outcome::Return(r) => {
                let e = errno_of(r).ok_or_else(|| format!("{}: not an errno of the ABI", what()))?;
                if e == Errno::EIO {
                    return Err(format!("{}: EIO from units that never fail", what()));
                }
                if framing.is_some_and(|f| f != e) {
                    return Err(format!("{}: framing says {framing:?}", what()));
                }
                let partial_unmap = nr == 0x86 && e == Errno::ENOENT;
                if !partial_unmap {
                    let after = (self.core_view(p), self.sim.hv.table_memory().in_use());
                    if after != before {
                        return Err(format!("{}: failed and changed state:\n--- before\n{before:?}\n--- after\n{after:?}", what()));
                    }
                }
            }
        }
        self.after_step(p, &other, &what)?;
        Ok(out)
    }

    /// Write `bytes` at `gpa` of partition `p` (where RAM), run `nr` on
    /// them, and return the outcome and the struct as written back.
    pub fn call_struct<T: FromBytes + IntoBytes + Immutable>(&mut self, p: usize, nr: u64, gpa: u64, cmd: &T) -> Result<(Outcome, Option<T>), String> {
        self.put(p, gpa, cmd.as_bytes());
        let out = self.call(p, nr, gpa)?;
        Ok((out, self.get(p, gpa)))
    }

    /// The IOAS of partition `p` that lists HWPT `h`.
    fn ioas_of_hwpt(&self, p: usize, h: u32) -> Option<&Ioas> {
        let part = self.sim.hv.partition(p);
        (1..=ID_SCAN).filter_map(|id| part.ioas(id)).find(|i| i.hwpts().contains(&h))
    }

    /// What a DMA by device `d` should do: the host-physical pieces, or the
    /// address of the first byte that must fault.
    fn expected_dma(&self, d: usize, write: bool, iova: u64, len: u64) -> Result<Result<Vec<(u64, u64)>, u64>, String> {
        let hv = &self.sim.hv;
        let dev = &hv.devices()[d];
        let part = hv.partition(dev.partition);
        let ioas = match dev.attached {
            None => return Ok(Err(iova)),
            Some(h) => self.ioas_of_hwpt(dev.partition, h).ok_or_else(|| format!("device {d}: HWPT {h} is in no IOAS"))?,
        };
        let write_implies_read = matches!(hv.units()[dev.unit].kind(), UnitKind::SmmuV3 { stage: 1, .. });
        let mut pieces = Vec::new();
        let mut at = iova;
        let end = iova.checked_add(len);
        while end.is_none_or(|e| at < e) {
            let area = ioas.areas().take_while(|(s, _)| *s <= at).find(|(_, a)| a.last >= at);
            let Some((start, area)) = area else { return Ok(Err(at)) };
            let mut perm = area.perm;
            if write_implies_read && perm.contains(Perm::WRITE) {
                perm |= Perm::READ;
            }
            if !perm.contains(if write { Perm::WRITE } else { Perm::READ }) {
                return Ok(Err(at));
            }
            let hpa = part.memmap().translate(Gpa(area.gpa + (at - start))).ok_or_else(|| format!("area at {start:#x} is not RAM"))?;
            let n = (PAGE - (at % PAGE)).min(end.map_or(u64::MAX, |e| e - at));
            pieces.push((hpa.raw(), n));
            match at.checked_add(n) {
                Some(next) => at = next,
                None => break,
            }
        }
        Ok(Ok(pieces))
    }

    /// A DMA of `len` bytes (1..=[`MAX_DMA`]) at `iova` by device `d`
    /// (global index, taken modulo the device count), writing `fill`
    /// bytes or reading, with every check.
    pub fn dma(&mut self, d: usize, write: bool, iova: u64, len: u64, fill: u8) -> Result<(), String> {
        self.steps += 1;
        let d = d % self.sim.hv.devices().len();
        let len = len.clamp(1, MAX_DMA);
        let owner = self.sim.hv.devices()[d].partition;
        let other = self.partition_view(1 - owner);
        let want = self.expected_dma(d, write, iova, len)?;
        let (unit, rid) = (self.sim.hv.devices()[d].unit, self.sim.hv.devices()[d].rid);
        let m = self.sim.hv.machine();
        let got = m.units[unit].dma(rid, iova, len, write, m.mem);
        let what = || format!("device {d} {} {len:#x} bytes at {iova:#x}", if write { "write" } else { "read" });
        if self.trace {
            eprintln!("{}: {}", what(), if got.is_ok() { "ok" } else { "fault" });
        }
        match (got, want) {
            (Ok(pieces), Ok(expected)) => {
                if pieces != expected {
                    return Err(format!("{}: reached {pieces:x?}, the areas say {expected:x?}", what()));
                }
                let mut buf = vec![fill; len as usize];
                let mut off = 0usize;
                for (pa, n) in pieces {
                    let n = n as usize;
                    if write {
                        m.ram.write(Hpa(pa), &buf[off..off + n]);
                    } else {
                        m.ram.read(Hpa(pa), &mut buf[off..off + n]);
                    }
                    off += n;
                }
            }
            (Err(fault), Err(at)) => {
                if fault.iova != at {
                    return Err(format!("{}: faulted at {:#x}, the areas say {at:#x}", what(), fault.iova));
                }
                self.sim.hv.poll_faults();
            }
            (Ok(pieces), Err(at)) => return Err(format!("{}: reached {pieces:x?}, the areas say fault at {at:#x}", what())),
            (Err(fault), Ok(expected)) => return Err(format!("{}: faulted ({fault:?}), the areas say {expected:x?}", what())),
        }
        self.after_step(owner, &other, &what)
    }

    /// Tear everything down through the core (detach every device, unmap
    /// and destroy every IOAS) and check that no pin and no table page is
    /// left.
    pub fn finish(mut self) -> Result<(), String> {
        let hv = &mut self.sim.hv;
        for p in [P, Q] {
            let devices: Vec<u32> = hv.devices().iter().filter(|d| d.partition == p).map(|d| d.id).collect();
            for id in devices {
                hv.detach(p, id).map_err(|e| format!("teardown: detach {p}/{id}: {}", e.name()))?;
            }
            for id in 1..=ID_SCAN {
                if hv.partition(p).ioas(id).is_some() {
                    hv.ioas_unmap(p, id, 0, u64::MAX).map_err(|e| format!("teardown: unmap all {p}/{id}: {}", e.name()))?;
                    hv.destroy(p, id).map_err(|e| format!("teardown: destroy {p}/{id}: {}", e.name()))?;
                }
            }
            if hv.partition(p).pinned() != 0 {
                return Err(format!("teardown: partition {p} still pins {} pages", hv.partition(p).pinned()));
            }
        }
        if hv.table_memory().in_use() != self.base_tables {
            return Err(format!("teardown: {} table pages in use, {} before the fixture", hv.table_memory().in_use(), self.base_tables));
        }
        for d in hv.devices() {
            if hv.units()[d.unit].context(d.rid).is_some() {
                return Err(format!("teardown: device {} of partition {} is not blocked", d.id, d.partition));
            }
        }
        self.sim.invariants().map_err(|e| format!("teardown: {e}"))
    }
}

// ----- raw records (decoder_bytes) -----

/// Byte offset of the pointer field and of the count field of command
/// `nr`, where it has them (MAP's `gpa` counts as a pointer).
fn pointer_and_count(nr: u64) -> (Option<usize>, Option<(usize, usize)>) {
    match nr {
        0x82 | 0x84 | 0xC3 | 0xC4 => (Some(16), Some((8, 4))),
        0x85 => (Some(16), None),
        0x8A => (Some(16), Some((12, 4))),
        0xC0 => (Some(8), Some((4, 4))),
        0xC5 => (Some(8), Some((4, 4))),
        _ => (None, None),
    }
}

#[derive(Debug)]
struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(*b)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    fn u64(&mut self) -> u64 {
        let mut v = [0u8; 8];
        let b = self.take(8);
        v[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(v)
    }
}

/// Largest struct a call record carries.
pub const MAX_RECORD_STRUCT: usize = 96;

/// Encode a call record for [`run_bytes`] (seeds and tests): partition
/// `p`, `NRS[nr_sel]`, struct at `place(p, place, off)`; `fix` bits 0-1:
/// size (0 as given, 1 known size, 2 minimum size, 3 bytes given), bits
/// 2-5: pointer field (0 as given, k: `place(p, k - 1, poff)`), bits 6-7:
/// count field (0 as given, 1: 1, 2: 16, 3: 0).
#[must_use]
pub fn call_record(p: usize, nr_sel: u8, place: u8, off: i8, fix: u8, poff: i8, bytes: &[u8]) -> Vec<u8> {
    let mut r = vec![(p & 1) as u8, nr_sel, place, off as u8, fix, poff as u8, bytes.len() as u8];
    r.extend_from_slice(bytes);
    r
}

/// Encode a memory-write record: `bytes` at `place(p, place, off)`.
#[must_use]
pub fn mem_record(p: usize, place: u8, off: i8, bytes: &[u8]) -> Vec<u8> {
    let mut r = vec![0x80 | (p & 1) as u8, place, off as u8, bytes.len() as u8];
    r.extend_from_slice(bytes);
    r
}

/// Encode a DMA record: device `d` (global index), `iova`, `len`.
#[must_use]
pub fn dma_record(d: u8, write: bool, iova: u64, len: u16) -> Vec<u8> {
    let mut r = vec![0xC0 | (u8::from(write) << 3) | (d & 7)];
    r.extend_from_slice(&iova.to_le_bytes());
    r.extend_from_slice(&len.to_le_bytes());
    r
}

/// Run raw records (see [`call_record`], [`mem_record`], [`dma_record`]):
/// the `decoder_bytes` target.
pub fn run_bytes(data: &[u8]) -> Result<(), String> {
    let mut h = Harness::new();
    let mut r = Reader { data };
    while !h.done() {
        let Some(hdr) = r.byte() else { break };
        match hdr >> 6 {
            0 | 1 => {
                let p = usize::from(hdr & 1);
                let (Some(nr_sel), Some(place), Some(off), Some(fix), Some(poff), Some(len)) =
                    (r.byte(), r.byte(), r.byte(), r.byte(), r.byte(), r.byte())
                else {
                    break;
                };
                let given = r.take(usize::from(len) % (MAX_RECORD_STRUCT + 1));
                let nr = NRS[usize::from(nr_sel) % NRS.len()];
                let info = u32::try_from(nr).ok().and_then(abi::command);
                let known = info.map_or(16, |i| i.size as usize);
                let mut bytes = given.to_vec();
                if fix != 0 && bytes.len() < known {
                    bytes.resize(known, 0);
                }
                let set = |bytes: &mut [u8], at: usize, v: &[u8]| bytes[at..at + v.len()].copy_from_slice(v);
                let size = match fix & 3 {
                    1 => Some(known as u32),
                    2 => Some(info.map_or(8, |i| i.min_size)),
                    3 => Some(given.len() as u32),
                    _ => None,
                };
                if let Some(s) = size {
                    set(&mut bytes, 0, &s.to_le_bytes());
                }
                let (ptr, count) = pointer_and_count(nr);
                let pk = (fix >> 2) & 0xf;
                if let (Some(at), true) = (ptr, pk != 0) {
                    let v = h.place(p, pk - 1, poff as i8);
                    set(&mut bytes, at, &v.to_le_bytes());
                }
                if let (Some((at, _)), c @ 1..) = (count, fix >> 6) {
                    let v: u32 = match c {
                        1 => 1,
                        2 => 16,
                        _ => 0,
                    };
                    set(&mut bytes, at, &v.to_le_bytes());
                }
                let gpa = h.place(p, place, off as i8);
                h.put(p, gpa, &bytes);
                h.call(p, nr, gpa)?;
            }
            2 => {
                let p = usize::from(hdr & 1);
                let (Some(place), Some(off), Some(len)) = (r.byte(), r.byte(), r.byte()) else { break };
                let bytes = r.take(usize::from(len)).to_vec();
                let gpa = h.place(p, place, off as i8);
                h.put(p, gpa, &bytes);
            }
            _ => {
                let iova = r.u64();
                let len = r.take(2);
                let len = u64::from(len.first().copied().unwrap_or(0)) | (u64::from(len.get(1).copied().unwrap_or(0)) << 8);
                h.dma(usize::from(hdr & 7), hdr & 8 != 0, iova, len, hdr)?;
            }
        }
    }
    h.finish()
}

// ----- structured ops (decoder_ops) -----

/// The calling partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Who {
    /// Partition P.
    P,
    /// Partition Q.
    Q,
}

impl Who {
    fn index(self) -> usize {
        match self {
            Self::P => P,
            Self::Q => Q,
        }
    }
}

/// A 64-bit value (address or length) drawn from the interesting ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Num {
    /// `n` pages.
    Page(u16),
    /// `n` 2 MiB.
    Huge(u8),
    /// `n` GiB.
    Gig(u8),
    /// `n` pages below 2^64 (0: `u64::MAX`).
    Top(u8),
    /// A small value, usually unaligned.
    Small(u16),
    /// Anything.
    Raw(u64),
}

impl Num {
    /// The value.
    #[must_use]
    pub fn value(self) -> u64 {
        match self {
            Self::Page(n) => u64::from(n) * PAGE,
            Self::Huge(n) => u64::from(n) << 21,
            Self::Gig(n) => u64::from(n) << 30,
            Self::Top(0) => u64::MAX,
            Self::Top(n) => 0u64.wrapping_sub(u64::from(n) * PAGE),
            Self::Small(n) => u64::from(n),
            Self::Raw(v) => v,
        }
    }
}

/// An object id: mostly small (live objects), sometimes extreme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Id(pub u8);

impl Id {
    /// The id.
    #[must_use]
    pub fn value(self) -> u32 {
        match self.0 {
            0xf8.. => [0, u32::MAX, 0x8000_0000, 4096, 4097, 255, 256, 0x1_0000][usize::from(self.0 & 7)],
            v => u32::from(v % 16),
        }
    }
}

/// Where an array or buffer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Ptr {
    /// [`ARRAY`].
    Array,
    /// [`Harness::place`] selector and offset.
    Place(u8, i8),
    /// Anything.
    Raw(u64),
}

impl Ptr {
    fn gpa(self, h: &Harness, p: usize) -> u64 {
        match self {
            Self::Array => ARRAY,
            Self::Place(sel, off) => h.place(p, sel, off),
            Self::Raw(v) => v,
        }
    }
}

/// One step of `decoder_ops`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// IOAS_ALLOC (`flags`: a non-zero flags field).
    Alloc { who: Who, flags: bool },
    /// IOAS_MAP; `flags` see [`map_flags`].
    Map { who: Who, ioas: Id, flags: u8, gpa: Num, len: Num, iova: Num },
    /// IOAS_UNMAP.
    Unmap { who: Who, ioas: Id, iova: Num, len: Num },
    /// IOAS_UNMAP of everything.
    UnmapAll { who: Who, ioas: Id },
    /// IOAS_COPY.
    Copy { who: Who, dst: Id, src: Id, flags: u8, len: Num, src_iova: Num, dst_iova: Num },
    /// IOAS_ALLOW_IOVAS with `ranges` written at `ptr` (where RAM);
    /// `count` overrides their number.
    Allow { who: Who, ioas: Id, ranges: Vec<(Num, Num)>, ptr: Ptr, count: Option<u8> },
    /// IOAS_IOVA_RANGES.
    IovaRanges { who: Who, ioas: Id, num: u8, ptr: Ptr },
    /// DEVICE_ATTACH.
    Attach { who: Who, dev: Id, pt: Id },
    /// DEVICE_DETACH.
    Detach { who: Who, dev: Id },
    /// DESTROY.
    Destroy { who: Who, id: Id },
    /// OPTION (`option_id`, `op`, `val` taken modulo small tables).
    OptionCall { who: Who, option_id: u8, op: u8, object: Id, val: u8 },
    /// FAULT_READ.
    FaultRead { who: Who, num: u8, ptr: Ptr },
    /// DEVICE_LIST.
    DeviceList { who: Who, num: u8, ptr: Ptr },
    /// DEVICE_RESV_IOVA_RANGES.
    ResvRanges { who: Who, dev: Id, num: u8, ptr: Ptr },
    /// GET_HW_INFO (`short`: the 32-byte minimum struct).
    HwInfo { who: Who, dev: Id, len: u8, ptr: Ptr, short: bool },
    /// CONSOLE_WRITE.
    Console { who: Who, len: u16, ptr: Ptr },
    /// A DMA by device `dev` (global index) at `iova + off`.
    Dma { dev: u8, write: bool, iova: Num, off: u16, len: u16 },
}

/// MAP/COPY flags from a fuzzed byte: the three defined bits, and now and
/// then an undefined one.
#[must_use]
pub fn map_flags(f: u8) -> u32 {
    u32::from(f & 7) | if f & 0xf8 == 0xf8 { 1 << 8 } else { 0 }
}

/// Check what a successful op wrote back and did.
fn check_success(h: &Harness, p: usize, op: &Op, back: &[u8]) -> Result<(), String> {
    let part = h.sim.hv.partition(p);
    let bad = |m: String| Err(format!("{op:?}: {m}"));
    match op {
        Op::Alloc { .. } => {
            let c = IoasAlloc::read_from_bytes(back).map_err(|_| "short")?;
            if part.ioas(c.out_ioas_id).is_none_or(|i| i.area_count() != 0) {
                return bad(format!("new IOAS {} missing or not empty", c.out_ioas_id));
            }
        }
        Op::Map { ioas, flags, gpa, len, iova, .. } => {
            let c = IoasMap::read_from_bytes(back).map_err(|_| "short")?;
            let fixed = map_flags(*flags) & abi::map_flags::FIXED_IOVA != 0;
            // IOVA 0 is never chosen, but may be asked for.
            if (!fixed && c.iova == 0) || c.iova % PAGE != 0 || (fixed && c.iova != iova.value()) {
                return bad(format!("mapped at {:#x}", c.iova));
            }
            let io = part.ioas(ioas.value()).ok_or("IOAS gone")?;
            let area = io.areas().find(|(s, _)| *s == c.iova).map(|(_, a)| *a);
            if area.is_none_or(|a| a.gpa != gpa.value() || a.last != c.iova.wrapping_add(len.value().wrapping_sub(1))) {
                return bad(format!("no area {:#x}+{:#x} for gpa {:#x}: {area:x?}", c.iova, len.value(), gpa.value()));
            }
        }
        Op::Unmap { ioas, iova, len, .. } => {
            let io = part.ioas(ioas.value()).ok_or("IOAS gone")?;
            let last = iova.value().saturating_add(len.value().saturating_sub(1));
            if io.areas().any(|(s, a)| s <= last && a.last >= iova.value()) {
                return bad(format!("an area is left in {:#x}..={last:#x}", iova.value()));
            }
        }
        Op::UnmapAll { ioas, .. } if part.ioas(ioas.value()).is_none_or(|i| i.area_count() != 0) => {
            return bad("areas left after unmap-all".into());
        }
        Op::Destroy { id, .. } if part.ioas(id.value()).is_some() => {
            return bad("IOAS still there".into());
        }
        Op::Attach { dev, .. } => {
            let c = DeviceAttach::read_from_bytes(back).map_err(|_| "short")?;
            let d = h.sim.hv.device_index(p, dev.value()).map_err(|e| format!("{op:?}: device gone: {}", e.name()))?;
            if h.sim.hv.devices()[d].attached != Some(c.pt_id) {
                return bad(format!("device attached to {:?}, the call says {}", h.sim.hv.devices()[d].attached, c.pt_id));
            }
        }
        Op::Detach { dev, .. } => {
            let d = h.sim.hv.device_index(p, dev.value()).map_err(|e| format!("{op:?}: device gone: {}", e.name()))?;
            if h.sim.hv.devices()[d].attached.is_some() {
                return bad("device still attached".into());
            }
        }
        _ => {}
    }
    Ok(())
}

impl Harness {
    /// Run one op with every check.
    pub fn op(&mut self, op: &Op) -> Result<(), String> {
        let (who, nr, bytes): (Who, u64, Vec<u8>) = match op {
            Op::Dma { dev, write, iova, off, len } => {
                return self.dma(usize::from(*dev), *write, iova.value().wrapping_add(u64::from(*off)), u64::from(*len), *dev);
            }
            Op::Alloc { who, flags } => (*who, 0x81, IoasAlloc { size: 12, flags: u32::from(*flags), out_ioas_id: 0 }.as_bytes().to_vec()),
            Op::Map { who, ioas, flags, gpa, len, iova } => {
                let reserved = u32::from(*flags == 0xf7);
                let c = IoasMap { size: 40, flags: map_flags(*flags), ioas_id: ioas.value(), reserved, gpa: gpa.value(), length: len.value(), iova: iova.value() };
                (*who, 0x85, c.as_bytes().to_vec())
            }
            Op::Unmap { who, ioas, iova, len } => {
                (*who, 0x86, IoasUnmap { size: 24, ioas_id: ioas.value(), iova: iova.value(), length: len.value() }.as_bytes().to_vec())
            }
            Op::UnmapAll { who, ioas } => (*who, 0x86, IoasUnmap { size: 24, ioas_id: ioas.value(), iova: 0, length: u64::MAX }.as_bytes().to_vec()),
            Op::Copy { who, dst, src, flags, len, src_iova, dst_iova } => {
                let c = IoasCopy {
                    size: 40,
                    flags: map_flags(*flags),
                    dst_ioas_id: dst.value(),
                    src_ioas_id: src.value(),
                    length: len.value(),
                    dst_iova: dst_iova.value(),
                    src_iova: src_iova.value(),
                };
                (*who, 0x83, c.as_bytes().to_vec())
            }
            Op::Allow { who, ioas, ranges, ptr, count } => {
                let p = who.index();
                let at = ptr.gpa(self, p);
                let mut list = Vec::new();
                for (s, l) in ranges.iter().take(8) {
                    list.extend_from_slice(&s.value().to_le_bytes());
                    list.extend_from_slice(&l.value().to_le_bytes());
                }
                self.put(p, at, &list);
                let num = count.map_or(ranges.len().min(8) as u32, u32::from);
                (*who, 0x82, IoasAllowIovas { size: 24, ioas_id: ioas.value(), num_iovas: num, reserved: 0, allowed_iovas: at }.as_bytes().to_vec())
            }
            Op::IovaRanges { who, ioas, num, ptr } => {
                let at = ptr.gpa(self, who.index());
                let c = IoasIovaRanges { size: 32, ioas_id: ioas.value(), num_iovas: u32::from(*num), reserved: 0, allowed_iovas: at, out_iova_alignment: 0 };
                (*who, 0x84, c.as_bytes().to_vec())
            }
            Op::Attach { who, dev, pt } => (*who, 0xC1, DeviceAttach { size: 16, flags: 0, dev_id: dev.value(), pt_id: pt.value() }.as_bytes().to_vec()),
            Op::Detach { who, dev } => (*who, 0xC2, DeviceDetach { size: 8, dev_id: dev.value() }.as_bytes().to_vec()),
            Op::Destroy { who, id } => (*who, 0x80, Destroy { size: 8, id: id.value() }.as_bytes().to_vec()),
            Op::OptionCall { who, option_id, op, object, val } => {
                let c = OptionCmd {
                    size: 24,
                    option_id: [0, 1, 2][usize::from(*option_id % 3)],
                    op: [0, 1, 2][usize::from(*op % 3)],
                    reserved: 0,
                    object_id: object.value(),
                    val64: [0, 1, 2, u64::MAX][usize::from(*val % 4)],
                };
                (*who, 0x87, c.as_bytes().to_vec())
            }
            Op::FaultRead { who, num, ptr } => {
                let at = ptr.gpa(self, who.index());
                (*who, 0xC4, FaultRead { size: 32, flags: 0, num_faults: u32::from(*num), reserved: 0, faults: at, out_lost: 0 }.as_bytes().to_vec())
            }
            Op::DeviceList { who, num, ptr } => {
                let at = ptr.gpa(self, who.index());
                (*who, 0xC0, DeviceList { size: 16, num_devices: u32::from(*num), devices: at }.as_bytes().to_vec())
            }
            Op::ResvRanges { who, dev, num, ptr } => {
                let at = ptr.gpa(self, who.index());
                let c = DeviceResvIovaRanges { size: 24, dev_id: dev.value(), num_iovas: u32::from(*num), reserved: 0, resv_iovas: at };
                (*who, 0xC3, c.as_bytes().to_vec())
            }
            Op::HwInfo { who, dev, len, ptr, short } => {
                let at = ptr.gpa(self, who.index());
                let c = GetHwInfo {
                    size: if *short { 32 } else { 40 },
                    flags: 0,
                    dev_id: dev.value(),
                    data_len: u32::from(*len),
                    data_gpa: at,
                    out_data_type: 0,
                    out_max_pasid_log2: 0,
                    reserved: [0; 3],
                    out_capabilities: 0,
                };
                let n = c.size as usize;
                (*who, 0x8A, c.as_bytes()[..n].to_vec())
            }
            Op::Console { who, len, ptr } => {
                let at = ptr.gpa(self, who.index());
                (*who, 0xC5, ConsoleWrite { size: 16, len: u32::from(*len), buf: at }.as_bytes().to_vec())
            }
        };
        let p = who.index();
        if self.trace {
            eprintln!("{op:?}");
        }
        self.put(p, SCRATCH, &bytes);
        let out = self.call(p, nr, SCRATCH)?;
        if out == Outcome::Return(0) {
            let mut back = vec![0u8; bytes.len()];
            self.sim.hv.read_guest(p, SCRATCH, &mut back).map_err(|_| "scratch is RAM")?;
            check_success(self, p, op, &back)?;
        }
        Ok(())
    }
}

/// Run structured ops: the `decoder_ops` target.
pub fn run_ops(ops: &[Op]) -> Result<(), String> {
    let mut h = Harness::new();
    for op in ops {
        if h.done() {
            break;
        }
        h.op(op)?;
    }
    h.finish()
}

// ----- seeds -----

/// Seeds for `decoder_bytes`: each command with a well-formed struct, the
/// framing edge cases, and a few sequences (map, attach, DMA, faults).
#[must_use]
pub fn bytes_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, nr) in NRS.iter().enumerate() {
        let info = u32::try_from(*nr).ok().and_then(abi::command);
        let known = info.map_or(16, |c| c.size as usize);
        let mut s = vec![0u8; known];
        // Plausible ids and values in the first fields.
        if known >= 16 {
            s[4..8].copy_from_slice(&4u32.to_le_bytes());
            s[8..12].copy_from_slice(&4u32.to_le_bytes());
        }
        for (fix, place, off) in [(1u8 | (2 << 2) | (2 << 6), 0u8, 0i8), (1, 4, -8), (3, 3, -20), (2, 0, 0), (1 | (5 << 2) | (1 << 6), 0, 0)] {
            seeds.push(call_record(i % 2, i as u8, place, off, fix, if fix >> 2 == 5 { -8 } else { 0 }, &s));
        }
        // Struct with a non-zero tail.
        let mut tail = s.clone();
        tail.extend_from_slice(&[0, 0, 1, 0]);
        seeds.push(call_record(P, i as u8, 0, 0, 3, 0, &tail));
    }
    // MAP fixed into IOAS 4 of P, DMA through device a, unmap, DMA again,
    // FAULT_READ.
    let mut map = IoasMap { size: 40, flags: 7, ioas_id: 4, reserved: 0, gpa: 0x40_0000, length: 0x20_0000, iova: 0x4000_0000 }.as_bytes().to_vec();
    let mut seq = call_record(P, 5, 0, 0, 0, 0, &map);
    seq.extend(dma_record(0, true, 0x4000_0010, 64));
    seq.extend(dma_record(0, false, 0x4000_0000, 0x2000));
    seq.extend(call_record(P, 6, 0, 0, 0, 0, IoasUnmap { size: 24, ioas_id: 4, iova: 0x4000_0000, length: 0x20_0000 }.as_bytes()));
    seq.extend(dma_record(0, false, 0x4000_0000, 4));
    seq.extend(call_record(P, 13, 0, 0, 2 << 6, 0, FaultRead { size: 32, flags: 0, num_faults: 16, reserved: 0, faults: ARRAY, out_lost: 0 }.as_bytes()));
    seeds.push(seq);
    // Attach device b (SMMUv3 stage 2) and e (stage 1) to IOAS 5, map,
    // copy into IOAS 4, allow ranges, IOVA ranges.
    let mut seq = Vec::new();
    seq.extend(call_record(P, 10, 0, 0, 0, 0, DeviceAttach { size: 16, flags: 0, dev_id: 2, pt_id: 5 }.as_bytes()));
    seq.extend(call_record(P, 10, 0, 0, 0, 0, DeviceAttach { size: 16, flags: 0, dev_id: 3, pt_id: 5 }.as_bytes()));
    map = IoasMap { size: 40, flags: 6, ioas_id: 5, reserved: 0, gpa: 0xff_f000, length: 0x2000, iova: 0 }.as_bytes().to_vec();
    seq.extend(call_record(P, 5, 0, 0, 0, 0, &map));
    seq.extend(call_record(
        P,
        3,
        0,
        0,
        0,
        0,
        IoasCopy { size: 40, flags: 4, dst_ioas_id: 4, src_ioas_id: 5, length: 0x1000, dst_iova: 0, src_iova: 0x1000 }.as_bytes(),
    ));
    let mut ranges = Vec::new();
    for v in [0x1000u64, 0xf_ffff, 0x10_0000_0000, 0x10_ffff_ffff] {
        ranges.extend_from_slice(&v.to_le_bytes());
    }
    seq.extend(mem_record(P, 1, 0, &ranges));
    seq.extend(call_record(P, 2, 0, 0, 1 << 2, 0, IoasAllowIovas { size: 24, ioas_id: 5, num_iovas: 2, reserved: 0, allowed_iovas: 0 }.as_bytes()));
    seq.extend(call_record(P, 4, 0, 0, (2 << 2) | (3 << 6), 0, IoasIovaRanges { size: 32, ioas_id: 5, ..Default::default() }.as_bytes()));
    seq.extend(dma_record(2, true, 0x1000, 0x1800));
    seq.extend(call_record(Q, 9, 0, 0, (2 << 2) | (1 << 6), 0, DeviceList { size: 16, num_devices: 0, devices: 0 }.as_bytes()));
    seeds.push(seq);
    seeds
}

/// Seeds for `decoder_ops`: pseudo-random byte strings of several lengths
/// (`arbitrary` turns any bytes into ops).
#[must_use]
pub fn ops_seeds() -> Vec<Vec<u8>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    };
    [16usize, 64, 128, 256, 512, 1024, 2048].iter().flat_map(|n| [*n, *n]).map(|n| (0..n).map(|_| next()).collect()).collect()
}
