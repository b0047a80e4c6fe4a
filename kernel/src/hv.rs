//! The hypervisor's state and the operations behind the hypercalls:
//! partitions, their objects (IOAS, HWPT, device), areas and pins, and the
//! IOMMU units the HWPTs live on.
//!
//! The model is iommufd's io_pagetable: an IOAS holds areas (the unit of
//! UNMAP), an allowed list and reserved ranges; every HWPT attached to it
//! holds exactly its areas, in the format of the HWPT's unit. Every
//! operation either completes or changes nothing (UNMAP's documented
//! partial case aside); when it removes a translation, the IOTLBs are
//! invalidated and the invalidation has completed before pins and table
//! pages are given back.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::{Errno, FaultRecord, fault_reason, resv_type};
use crate::heap::{self, HeapBudget, HeapUse, Unlimited};
use crate::hwpt::AnyTable;
use crate::iommu::{Domain, Flush, Iommu, IommuError};
use crate::iova::{Holes, Owner, Range, Reserved, auto_alignment, complement, complement_iter};
use crate::memmap::{MemMapError, MemoryMap, RamRange};
use crate::objects::ObjectTable;
use crate::pt::{Gather, PAGE_SIZE, Perm, PtError, TableMemory};
use crate::{Gpa, Hpa, Iova};

/// Byte access to host-physical memory (partition RAM). Implemented by the
/// platform (a direct map) and by hvsim (lazily backed pages). Only ever
/// called for addresses inside some partition's RAM.
pub trait PhysMem {
    /// Read `buf.len()` bytes at `hpa`.
    fn read(&self, hpa: Hpa, buf: &mut [u8]);
    /// Write `data` at `hpa`.
    fn write(&mut self, hpa: Hpa, data: &[u8]);
    /// Write zeros over `[hpa, hpa + len)`.
    fn zero(&mut self, hpa: Hpa, len: u64) {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(ZEROS.len() as u64);
            self.write(Hpa(hpa.raw() + off), &ZEROS[..n as usize]);
            off += n;
        }
    }
}

/// Most objects (IOAS + HWPT + device) a partition may hold.
pub const MAX_OBJECTS: u32 = 4096;
/// Fault records a partition's queue holds; more are counted as lost.
pub const FAULT_QUEUE: usize = 256;
/// Fault records (after folding, lost ones included) one device may cause
/// before its bus mastering is switched off, unless the partition's
/// configuration says otherwise ([`Hypervisor::set_fault_limit`]).
pub const DEFAULT_FAULT_LIMIT: u64 = 4096;
/// Most allowed ranges a partition may hold over all its IOASes.
pub const MAX_ALLOWED: usize = 4096;
/// Most areas a partition may hold over all its IOASes unless its
/// configuration says otherwise (MAP areas are also bounded by the pin
/// limit; COPY areas only by this).
pub const DEFAULT_MAX_AREAS: u64 = 1 << 21;

/// A partition as the configuration describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionConfig {
    /// Name, for reports.
    pub name: String,
    /// RAM: guest-physical ranges and the host-physical memory behind them.
    pub ram: Vec<RamRange>,
    /// Most pages the partition may have pinned at once.
    pub pin_limit: u64,
    /// Most areas over all its IOASes (hypervisor heap and table memory
    /// they cost are bounded by it).
    pub max_areas: u64,
}

/// A reserved region of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Region {
    /// The IOVAs.
    pub range: Range,
    /// `abi::resv_type` value.
    pub kind: u32,
}

/// A device as the configuration describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Owning partition (index).
    pub partition: usize,
    /// IOMMU unit (index).
    pub unit: usize,
    /// Requester id on that unit (PCI RID or StreamID).
    pub rid: u32,
    /// Address bits the device can emit.
    pub dma_bits: u32,
    /// Platform regions (MSI window, RMRRs, other reserved ranges).
    pub regions: Vec<Region>,
}

/// Why a configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A partition's RAM ranges are malformed or overlap each other.
    Ram(MemMapError),
    /// Host memory of two partitions overlaps.
    SharedHostMemory(String),
    /// No such partition or unit.
    NoSuch(&'static str),
    /// Two devices with one requester id on one unit.
    DuplicateRid(u32),
    /// Too many objects.
    Full,
    /// The unit refused to block the device.
    Unit(IommuError),
}

/// A live device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Owning partition.
    pub partition: usize,
    /// Unit.
    pub unit: usize,
    /// Requester id.
    pub rid: u32,
    /// DMA address bits.
    pub dma_bits: u32,
    /// Object id in the owning partition.
    pub id: u32,
    /// Every reserved region (platform, aperture, DMA limit), sorted by
    /// start, then type.
    pub regions: Vec<Region>,
    /// HWPT id it translates through; `None`: blocked.
    pub attached: Option<u32>,
    /// Fault records it caused since its partition (re)started: queued,
    /// lost or read, each folded run counted once.
    pub faults: u64,
    /// It passed its partition's fault limit: the platform must switch its
    /// bus mastering off. The partition got a [`FLAG_BUS_MASTER_OFF`]
    /// record. Stays set for good (a reset does not clear it).
    ///
    /// [`FLAG_BUS_MASTER_OFF`]: fault_reason::FLAG_BUS_MASTER_OFF
    pub quarantined: bool,
}

/// An area: a run of IOVAs mapped by one MAP (or one piece of a COPY).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    /// Last IOVA (inclusive).
    pub last: u64,
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Access granted.
    pub perm: Perm,
    /// Pin set it holds a reference on.
    pin: u32,
}

/// An I/O address space.
#[derive(Clone, Debug)]
pub struct Ioas {
    areas: BTreeMap<u64, Area>,
    free: Holes,
    allowed: Vec<Range>,
    reserved: Reserved,
    merged: Vec<Range>,
    hwpts: Vec<u32>,
    huge: bool,
}

impl Ioas {
    fn new() -> Self {
        Self {
            areas: BTreeMap::new(),
            free: Holes::new(),
            allowed: Vec::new(),
            reserved: Reserved::new(),
            merged: Vec::new(),
            hwpts: Vec::new(),
            huge: true,
        }
    }

    /// The areas, by first IOVA.
    pub fn areas(&self) -> impl Iterator<Item = (u64, &Area)> {
        self.areas.iter().map(|(s, a)| (*s, a))
    }

    /// Number of areas.
    #[must_use]
    pub fn area_count(&self) -> usize {
        self.areas.len()
    }

    /// The ranges IOVA_RANGES reports.
    #[must_use]
    pub fn usable(&self) -> Vec<Range> {
        complement(&self.merged)
    }

    /// [`Self::usable`] one by one, without allocating.
    pub fn usable_iter(&self) -> impl Iterator<Item = Range> + '_ {
        complement_iter(&self.merged)
    }

    /// The HWPTs (object ids) attached to this IOAS.
    #[must_use]
    pub fn hwpts(&self) -> &[u32] {
        &self.hwpts
    }

    fn area_intersecting(&self, r: &Range) -> bool {
        self.areas.range(..=r.last).next_back().is_some_and(|(_, a)| a.last >= r.start)
    }

    fn allowed_intersecting(&self, r: &Range) -> bool {
        self.allowed.iter().any(|a| a.intersects(r))
    }

    /// Recompute the merged reserved ranges in place: room for them was
    /// reserved when the ranges grew (attach), so this never allocates.
    fn remerge(&mut self) {
        debug_assert!(self.merged.capacity() >= self.reserved.len(), "room for the merged ranges");
        self.reserved.merge_into(&mut self.merged);
    }

    /// The most heap this IOAS's collections can occupy (see
    /// [`crate::heap`]): its areas, the holes between them (at most one
    /// more than the areas), and its lists.
    fn heap(&self) -> usize {
        let n = self.areas.len();
        heap::btree::<u64, Area>(n)
            + heap::btree::<u64, u64>(n + 1)
            + heap::vec::<Range>(self.allowed.capacity())
            + heap::vec::<(Range, Owner)>(self.reserved.capacity())
            + heap::vec::<Range>(self.merged.capacity())
            + heap::vec::<u32>(self.hwpts.capacity())
    }

    /// iommufd's iopt_check_iova for a FIXED_IOVA map of `len` bytes.
    fn check_fixed(&self, iova: u64, len: u64) -> Result<Range, Errno> {
        if iova % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let range = Range::with_len(iova, len).ok_or(Errno::EOVERFLOW)?;
        if self.reserved.intersects(&range) {
            return Err(Errno::EINVAL);
        }
        if !self.free.is_free(&range) {
            return Err(Errno::EEXIST);
        }
        Ok(range)
    }

    /// First fit with the ABI's alignment. MAP follows ABI.md's order
    /// (nothing fits: ENOSPC, whatever the gpa); COPY keeps iommufd's
    /// iopt_alloc_iova checks (EOVERFLOW for 2^63 bytes or more, EINVAL for
    /// an alignment below the page).
    fn allocate(&self, len: u64, gpa: u64, iommufd_checks: bool) -> Result<Range, Errno> {
        let align = auto_alignment(len, gpa);
        if iommufd_checks {
            if len >= u64::MAX / 2 {
                return Err(Errno::EOVERFLOW);
            }
            if align < PAGE_SIZE {
                return Err(Errno::EINVAL);
            }
        }
        let iova = self.free.first_fit(&self.merged, &self.allowed, len, align).ok_or(Errno::ENOSPC)?;
        Ok(Range::with_len(iova, len).expect("first_fit returns ranges that fit"))
    }
}

/// A hardware page table, always automatic in ABI v1: made by attach,
/// freed with its last device.
#[derive(Debug)]
struct Hwpt {
    ioas: u32,
    unit: usize,
    tag: u32,
    table: AnyTable,
    users: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ioas,
    Hwpt,
    Device(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PinSet {
    /// First guest-physical address of the MAP.
    gpa: u64,
    /// Pages of this set pinned now.
    live: u64,
    /// Areas using the set.
    refs: u32,
    writable: bool,
    /// How many areas cover each page, as a step function over page
    /// offsets (key: where the count changes to the value). `None` while
    /// the MAP's own area is the only user (it covers every page).
    cover: Option<BTreeMap<u64, u32>>,
}

/// Add `delta` (+1 or -1) to the cover count of pages `[a, b)`; returns
/// the pages whose count crossed zero (0 -> 1 when adding, 1 -> 0 when
/// removing).
///
/// Allocates nothing but the (at most two) breakpoints at `a` and `b`: the
/// map never holds more than two per area using the set plus those two,
/// which is what the set's heap footprint counts.
fn cover_add(cover: &mut BTreeMap<u64, u32>, a: u64, b: u64, up: bool) -> u64 {
    for x in [a, b] {
        if !cover.contains_key(&x) {
            let v = cover.range(..x).next_back().map_or(0, |(_, v)| *v);
            cover.insert(x, v);
        }
    }
    let mut crossed = 0;
    let mut steps = cover.range_mut(a..b).peekable();
    while let Some((&k, v)) = steps.next() {
        let end = steps.peek().map_or(b, |(next, _)| **next);
        if up {
            crossed += if *v == 0 { end - k } else { 0 };
            *v += 1;
        } else {
            *v -= 1;
            crossed += if *v == 0 { end - k } else { 0 };
        }
    }
    // Drop breakpoints that no longer change the count: only those at `a`
    // and `b` can have become so, every count between moved by one alike.
    for x in [a, b] {
        let before = cover.range(..x).next_back().map_or(0, |(_, v)| *v);
        if cover.get(&x) == Some(&before) {
            cover.remove(&x);
        }
    }
    crossed
}

/// What [`Hypervisor::reset_partition`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetReport {
    /// Devices blocked (all of the partition's).
    pub devices_blocked: u32,
    /// IOASes destroyed (their HWPTs went with the devices' attachments).
    pub objects_destroyed: u32,
    /// Pages whose pins were released.
    pub pins_released: u64,
    /// Bytes of RAM overwritten with zeros.
    pub bytes_scrubbed: u64,
}

/// One partition's view: its memory, objects, pins and fault queue.
#[derive(Debug)]
pub struct Partition {
    name: String,
    memmap: MemoryMap,
    objects: ObjectTable<Kind>,
    ioas: BTreeMap<u32, Ioas>,
    hwpts: BTreeMap<u32, Hwpt>,
    pin_limit: u64,
    max_areas: u64,
    areas: u64,
    pins: Pins,
    faults: VecDeque<FaultRecord>,
    lost: u64,
    /// The newest fault dropped for a full queue, if nothing was queued
    /// or read since: (device, reason, flags, page). Its repeats fold.
    lost_key: Option<(u32, u32, u32, u64)>,
    /// Faults folded into the newest queued record (same device, page,
    /// direction and reason).
    coalesced: u64,
    console: Vec<u8>,
    exit: Option<u32>,
    /// Fault records one device may cause before it is quarantined; 0:
    /// no limit.
    fault_limit: u64,
    /// Times the partition was reset.
    resets: u32,
    /// Heap footprint charged for this partition at the last settle.
    heap: usize,
}

/// What one area can cost in the heap: its entry, a hole, and two
/// breakpoints in a pin cover.
const AREA_HEAP: usize = heap::btree_entry::<u64, Area>() + heap::btree_entry::<u64, u64>() + 2 * heap::btree_entry::<u64, u32>();
/// What a pin cover costs besides its areas' breakpoints.
const COVER_HEAP: usize = 2 * heap::btree_node::<u64, u32>() + 2 * heap::btree_entry::<u64, u32>();
/// What an HWPT costs in the heap: its object, its entry, its domain tag.
const HWPT_HEAP: usize = heap::btree_entry::<u32, Kind>() + heap::btree_entry::<u32, Hwpt>() + heap::btree_entry::<u32, ()>();
/// The console buffer at its largest, and while it grows to that.
const CONSOLE_HEAP: usize = 2 * heap::block(crate::hypercall::CONSOLE_BUFFER);

impl Partition {
    /// The most heap this partition's state can occupy (see
    /// [`crate::heap`]); the domain tags of its HWPTs are the units'.
    fn heap_footprint(&self) -> usize {
        let areas = self.areas as usize;
        heap::btree::<u32, Kind>(self.objects.len())
            + heap::btree::<u32, ()>(self.objects.spare())
            + heap::btree::<u32, Ioas>(self.ioas.len())
            + heap::btree::<u32, Hwpt>(self.hwpts.len())
            + heap::vec::<PinSet>(self.pins.sets.capacity())
            + heap::vec::<u32>(self.pins.free.capacity())
            + self.pins.covered as usize * COVER_HEAP
            + areas * 2 * heap::btree_entry::<u64, u32>()
            + CONSOLE_HEAP
            + self.ioas.values().map(Ioas::heap).sum::<usize>()
    }

    /// Name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// RAM.
    #[must_use]
    pub fn memmap(&self) -> &MemoryMap {
        &self.memmap
    }

    /// Pages pinned now.
    #[must_use]
    pub fn pinned(&self) -> u64 {
        self.pins.pinned
    }

    /// Faults folded into an earlier record of the same page (see
    /// [`Hypervisor::poll_faults`]), since the partition started.
    #[must_use]
    pub fn coalesced_faults(&self) -> u64 {
        self.coalesced
    }

    /// The IOAS with id `id`.
    #[must_use]
    pub fn ioas(&self, id: u32) -> Option<&Ioas> {
        self.ioas.get(&id)
    }

    /// Times it was reset ([`Hypervisor::reset_partition`]).
    #[must_use]
    pub fn resets(&self) -> u32 {
        self.resets
    }

    /// Code passed to PARTITION_EXIT, once it was called.
    #[must_use]
    pub fn exit_code(&self) -> Option<u32> {
        self.exit
    }

    /// Console bytes written since the last call.
    pub fn take_console(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.console)
    }

    /// Record PARTITION_EXIT.
    pub fn set_exit(&mut self, code: u32) {
        self.exit = Some(code);
    }

    /// Append console bytes, keeping at most `cap` bytes buffered (the
    /// rest is dropped until the platform takes the buffer).
    pub fn console_push(&mut self, bytes: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.console.len());
        let n = bytes.len().min(room);
        let len = self.console.len();
        if len + n > self.console.capacity() {
            // Doubling, but never past `cap`: the buffer stays within the
            // heap its partition was charged for.
            let want = (self.console.capacity() * 2).max(len + n).max(64).min(cap);
            self.console.reserve_exact(want - len);
        }
        self.console.extend_from_slice(&bytes[..n]);
    }

    /// Its devices as (object id, global device index), by id.
    pub fn device_objects(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.objects.iter().filter_map(|(id, k)| match k {
            Kind::Device(d) => Some((id, *d)),
            _ => None,
        })
    }

    /// The fault records queued, oldest first.
    pub fn queued_faults(&self) -> impl Iterator<Item = FaultRecord> + '_ {
        self.faults.iter().copied()
    }

    fn ioas_mut(&mut self, id: u32) -> Result<&mut Ioas, Errno> {
        self.ioas.get_mut(&id).ok_or(Errno::ENOENT)
    }

    fn device(&self, id: u32) -> Result<usize, Errno> {
        match self.objects.get(id) {
            Some(Kind::Device(d)) => Ok(*d),
            _ => Err(Errno::ENOENT),
        }
    }
}

/// A partition's pin sets: one per MAP, shared by the areas COPY makes
/// from it, released when its last area is gone and invalidated.
#[derive(Debug, Default)]
struct Pins {
    /// Pages pinned now (live sets plus `stuck`).
    pinned: u64,
    /// Pages whose release waits on an invalidation that failed: never
    /// given back.
    stuck: u64,
    sets: Vec<PinSet>,
    /// Free slots of `sets`. Its capacity is kept at least that of `sets`,
    /// so that releasing a set never allocates.
    free: Vec<u32>,
    /// Sets with a cover map.
    covered: u64,
}

impl Pins {
    /// The slot the next [`Self::add`] uses.
    fn next_id(&self) -> u32 {
        self.free.last().copied().unwrap_or(self.sets.len() as u32)
    }

    /// The heap the next [`Self::add`] may allocate: the slab and its free
    /// list, grown together, while the old ones are still live.
    fn add_heap(&self) -> usize {
        if self.free.is_empty() && self.sets.len() == self.sets.capacity() {
            let c = heap::grown(self.sets.capacity());
            heap::vec::<PinSet>(c) + heap::vec::<u32>(c)
        } else {
            0
        }
    }

    fn add(&mut self, gpa: u64, pages: u64, writable: bool) -> u32 {
        let set = PinSet { gpa, live: pages, refs: 1, writable, cover: None };
        self.pinned += pages;
        if let Some(i) = self.free.pop() {
            self.sets[i as usize] = set;
            i
        } else {
            if self.sets.len() == self.sets.capacity() {
                self.sets.reserve_exact(heap::grown(self.sets.capacity()) - self.sets.len());
                self.free.reserve_exact(self.sets.capacity() - self.free.len());
            }
            self.sets.push(set);
            (self.sets.len() - 1) as u32
        }
    }

    /// Pages `[first, first + n)` of the set an area at `gpa` of `len`
    /// bytes covers.
    fn span(set: &PinSet, gpa: u64, len: u64) -> (u64, u64) {
        let first = (gpa - set.gpa) / PAGE_SIZE;
        (first, first + len / PAGE_SIZE)
    }

    /// One more area (a COPY piece at `gpa`, `len` bytes) uses the set. Its
    /// pages are pinned already: nothing is counted.
    fn share(&mut self, pin: u32, gpa: u64, len: u64) {
        let set = &mut self.sets[pin as usize];
        let (a, b) = Self::span(set, gpa, len);
        let total = set.live;
        if set.cover.is_none() {
            self.covered += 1;
        }
        let cover = set.cover.get_or_insert_with(|| BTreeMap::from([(0, 1), (total, 0)]));
        let crossed = cover_add(cover, a, b, true);
        debug_assert_eq!(crossed, 0, "a COPY covers pinned pages only");
        set.refs += 1;
    }

    /// An area (at `gpa`, `len` bytes) no longer uses the set: the pages no
    /// other area covers are released, if `released` says the IOTLBs were
    /// invalidated; else they stay pinned for good.
    fn unref(&mut self, pin: u32, gpa: u64, len: u64, released: bool) {
        let set = &mut self.sets[pin as usize];
        let (a, b) = Self::span(set, gpa, len);
        let gone = match set.cover.as_mut() {
            None => set.live,
            Some(cover) => cover_add(cover, a, b, false),
        };
        set.live -= gone;
        set.refs -= 1;
        if released {
            self.pinned -= gone;
        } else {
            self.stuck += gone;
        }
        if set.refs == 0 {
            debug_assert_eq!(set.live, 0);
            if set.cover.take().is_some() {
                self.covered -= 1;
            }
            if pin as usize == self.sets.len() - 1 {
                // Keep the slab as it was before the set was made.
                self.sets.pop();
            } else {
                self.free.push(pin);
            }
            if self.free.len() == self.sets.len() {
                // No set is left: give the slab's heap back (freeing only).
                self.sets = Vec::new();
                self.free = Vec::new();
            }
        }
    }
}

/// The domain tags of one unit.
#[derive(Debug)]
struct Tags(ObjectTable<()>);

/// The hypervisor: IOMMU units (`U`), table memory (`M`), partition RAM
/// (`R`), partitions and devices.
#[derive(Debug)]
pub struct Hypervisor<U, M, R> {
    units: Vec<U>,
    tags: Vec<Tags>,
    mem: M,
    ram: R,
    partitions: Vec<Partition>,
    devices: Vec<Device>,
    by_rid: BTreeMap<(usize, u32), usize>,
    stray_faults: u64,
    iommu_failures: u64,
    budget: Budget,
    /// Heap footprint of the units' tag tables at the last settle.
    heap_units: usize,
    /// Granted to the command running now, not yet settled.
    heap_pending: usize,
    /// Commands whose footprint outgrew what they were granted (a bug).
    heap_overruns: u64,
}

/// The platform's [`HeapBudget`].
struct Budget(Box<dyn HeapBudget + Send>);

impl core::fmt::Debug for Budget {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HeapBudget")
    }
}

/// The parts of the machine a simulator or driver glue needs at once.
#[derive(Debug)]
pub struct Machine<'a, U, M, R> {
    /// IOMMU units.
    pub units: &'a mut [U],
    /// Table memory.
    pub mem: &'a M,
    /// Partition RAM.
    pub ram: &'a mut R,
}

fn pt_errno(e: PtError) -> Errno {
    match e {
        PtError::NoMemory => Errno::ENOMEM,
        PtError::Exists(_) => Errno::EEXIST,
        // The checks before a table change rule the others out; if one
        // shows up anyway it is the caller's argument that is wrong.
        _ => Errno::EINVAL,
    }
}

/// Invalidate what `gather` collected on `unit` and, once that completed,
/// free the unlinked tables. On a failed invalidation the tables are never
/// freed (the IOMMU may still walk them).
fn flush_gather<U: Iommu, M: TableMemory>(unit: &mut U, mem: &mut M, tag: u32, mut gather: Gather) -> Result<(), Errno> {
    if gather.is_empty() {
        return Ok(());
    }
    let flush = Flush { tag, range: gather.range(), leaf_levels: gather.leaf_levels(), tables: gather.freed_count() != 0 };
    match unit.flush(&flush) {
        Ok(()) => {
            gather.release(mem);
            Ok(())
        }
        Err(_) => Err(Errno::EIO),
    }
}

/// The pieces of the contiguous run of areas of `src` covering `want`, as
/// (source IOVA, length, gpa, pin set); `Err(ENOENT)` at the first byte no
/// area covers.
fn copy_pieces(src: &Ioas, want: Range) -> impl Iterator<Item = Result<(u64, u64, u64, u32), Errno>> + '_ {
    let later = (core::ops::Bound::Excluded(want.start), core::ops::Bound::Included(want.last));
    let mut areas = src.areas.range(..=want.start).next_back().into_iter().chain(src.areas.range(later));
    let mut cur = Some(want.start);
    core::iter::from_fn(move || {
        let c = cur?;
        let covering = areas.next().filter(|(s, a)| **s <= c && a.last >= c);
        let Some((&s, a)) = covering else {
            cur = None;
            return Some(Err(Errno::ENOENT));
        };
        let last = a.last.min(want.last);
        cur = if last == want.last { None } else { Some(last + 1) };
        Some(Ok((c, last - c + 1, a.gpa + (c - s), a.pin)))
    })
}

/// Map `[iova, iova + len)` to the partition memory at `gpa` in `table`.
fn map_area<M: TableMemory>(table: &mut AnyTable, mem: &mut M, memmap: &MemoryMap, iova: u64, area: &Area, gather: &mut Gather) -> Result<(), PtError> {
    let len = area.last - iova + 1;
    let mut res = Ok(());
    let mut off = 0;
    let walked = memmap.for_each_segment(Gpa(area.gpa), len, |seg| {
        if res.is_ok() {
            res = table.map(mem, Iova(iova + off), seg.hpa, seg.len, area.perm, gather);
            off += seg.len;
        }
    });
    debug_assert!(walked.is_some(), "areas only cover partition RAM");
    if res.is_err() && off > 0 {
        let _ = table.unmap(mem, Iova(iova), len, gather);
    }
    res
}

impl<U: Iommu, M: TableMemory, R: PhysMem> Hypervisor<U, M, R> {
    /// A hypervisor with these units, table memory and RAM, and nothing
    /// else yet.
    pub fn new(units: Vec<U>, mem: M, ram: R) -> Self {
        let tags = units.iter().map(|u| Tags(ObjectTable::new(u.info().max_domains))).collect();
        let mut hv = Self {
            units,
            tags,
            mem,
            ram,
            partitions: Vec::new(),
            devices: Vec::new(),
            by_rid: BTreeMap::new(),
            stray_faults: 0,
            iommu_failures: 0,
            budget: Budget(Box::new(Unlimited)),
            heap_units: 0,
            heap_pending: 0,
            heap_overruns: 0,
        };
        hv.heap_units = hv.units_heap();
        hv
    }

    /// Add an IOMMU unit; returns its index.
    pub fn add_unit(&mut self, unit: U) -> usize {
        self.tags.push(Tags(ObjectTable::new(unit.info().max_domains)));
        self.units.push(unit);
        self.settle_config(None);
        self.units.len() - 1
    }

    /// Hand the heap budget to the platform's (see [`crate::heap`]): it is
    /// charged with everything the core holds now, and from then on with
    /// every command that makes the state grow.
    pub fn set_heap_budget(&mut self, budget: Box<dyn HeapBudget + Send>) {
        self.budget = Budget(budget);
        let total = self.heap_charged();
        let _ = self.budget.0.charge(total, HeapUse::Config);
    }

    /// The heap charged to the budget: the worst-case footprint of the
    /// core's state (see [`crate::heap`]).
    #[must_use]
    pub fn heap_charged(&self) -> usize {
        self.heap_units + self.partitions.iter().map(|p| p.heap).sum::<usize>()
    }

    /// Worst-case heap of the units' domain-tag tables.
    fn units_heap(&self) -> usize {
        self.tags.iter().map(|t| heap::btree::<u32, ()>(t.0.len()) + heap::btree::<u32, ()>(t.0.spare())).sum()
    }

    /// Ask the budget for `bytes` the running command may allocate before
    /// it returns; ENOMEM, with nothing taken, when refused.
    pub(crate) fn grant(&mut self, bytes: usize) -> Result<(), Errno> {
        if bytes == 0 {
            return Ok(());
        }
        if !self.budget.0.charge(bytes, HeapUse::Grow) {
            return Err(Errno::ENOMEM);
        }
        self.heap_pending += bytes;
        Ok(())
    }

    /// A command of partition `p` is done: recompute the footprint and give
    /// back what was granted beyond it. A footprint above the grant is a
    /// bug: it is counted (see [`Self::check_invariants`]) and charged.
    pub(crate) fn settle(&mut self, p: usize) {
        let part = self.partitions[p].heap_footprint();
        let units = self.units_heap();
        let old = self.partitions[p].heap + self.heap_units + self.heap_pending;
        self.partitions[p].heap = part;
        self.heap_units = units;
        self.heap_pending = 0;
        let new = part + units;
        if new <= old {
            self.budget.0.uncharge(old - new);
        } else {
            self.heap_overruns += 1;
            let _ = self.budget.0.charge(new - old, HeapUse::Config);
        }
    }

    /// Settle after a configuration change (of partition `p`, if any).
    fn settle_config(&mut self, p: Option<usize>) {
        let mut old = self.heap_units;
        let mut new = self.units_heap();
        self.heap_units = new;
        if let Some(p) = p {
            old += self.partitions[p].heap;
            let part = self.partitions[p].heap_footprint();
            self.partitions[p].heap = part;
            new += part;
        }
        if new > old {
            let _ = self.budget.0.charge(new - old, HeapUse::Config);
        } else {
            self.budget.0.uncharge(old - new);
        }
    }

    /// Add a partition; returns its index.
    pub fn add_partition(&mut self, cfg: PartitionConfig) -> Result<usize, ConfigError> {
        let memmap = MemoryMap::new(cfg.ram).map_err(ConfigError::Ram)?;
        for other in &self.partitions {
            for a in memmap.ranges() {
                for b in other.memmap.ranges() {
                    if a.hpa.raw() < b.hpa.raw() + b.len && b.hpa.raw() < a.hpa.raw() + a.len {
                        return Err(ConfigError::SharedHostMemory(format!("{} and {}", cfg.name, other.name)));
                    }
                }
            }
        }
        self.partitions.push(Partition {
            name: cfg.name,
            memmap,
            objects: ObjectTable::new(MAX_OBJECTS),
            ioas: BTreeMap::new(),
            hwpts: BTreeMap::new(),
            pin_limit: cfg.pin_limit,
            max_areas: cfg.max_areas,
            areas: 0,
            pins: Pins::default(),
            // Full size now: queuing a fault never allocates.
            faults: VecDeque::with_capacity(FAULT_QUEUE),
            lost: 0,
            lost_key: None,
            coalesced: 0,
            console: Vec::new(),
            exit: None,
            fault_limit: DEFAULT_FAULT_LIMIT,
            resets: 0,
            heap: 0,
        });
        let p = self.partitions.len() - 1;
        self.settle_config(Some(p));
        Ok(p)
    }

    /// Add a device, blocked; returns its object id in its partition.
    pub fn add_device(&mut self, cfg: DeviceConfig) -> Result<u32, ConfigError> {
        let unit = self.units.get_mut(cfg.unit).ok_or(ConfigError::NoSuch("iommu unit"))?;
        let part = self.partitions.get_mut(cfg.partition).ok_or(ConfigError::NoSuch("partition"))?;
        if self.by_rid.contains_key(&(cfg.unit, cfg.rid)) {
            return Err(ConfigError::DuplicateRid(cfg.rid));
        }
        let mut regions = cfg.regions;
        let input_bits = unit.info().format.input_bits();
        if input_bits < 64 {
            regions.push(Region { range: Range { start: 1 << input_bits, last: u64::MAX }, kind: resv_type::APERTURE });
        }
        if cfg.dma_bits < 64 {
            regions.push(Region { range: Range { start: 1 << cfg.dma_bits, last: u64::MAX }, kind: resv_type::DMA_LIMIT });
        }
        regions.sort_unstable_by_key(|r| (r.range.start, r.kind, r.range.last));
        unit.block(cfg.rid).map_err(ConfigError::Unit)?;
        let index = self.devices.len();
        let id = part.objects.insert(Kind::Device(index)).ok_or(ConfigError::Full)?;
        self.devices.push(Device {
            partition: cfg.partition,
            unit: cfg.unit,
            rid: cfg.rid,
            dma_bits: cfg.dma_bits,
            id,
            regions,
            attached: None,
            faults: 0,
            quarantined: false,
        });
        self.by_rid.insert((cfg.unit, cfg.rid), index);
        self.settle_config(Some(cfg.partition));
        Ok(id)
    }

    /// A partition.
    #[must_use]
    pub fn partition(&self, p: usize) -> &Partition {
        &self.partitions[p]
    }

    /// A partition, mutable (console, exit state).
    pub fn partition_mut(&mut self, p: usize) -> &mut Partition {
        &mut self.partitions[p]
    }

    /// Number of partitions.
    #[must_use]
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// Every device, by global index.
    #[must_use]
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The units.
    #[must_use]
    pub fn units(&self) -> &[U] {
        &self.units
    }

    /// Table memory.
    #[must_use]
    pub fn table_memory(&self) -> &M {
        &self.mem
    }

    /// Table memory, mutable (allocation-failure injection in tests).
    pub fn table_memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// Partition RAM.
    #[must_use]
    pub fn ram(&self) -> &R {
        &self.ram
    }

    /// Units, table memory and RAM at once.
    pub fn machine(&mut self) -> Machine<'_, U, M, R> {
        Machine { units: &mut self.units, mem: &self.mem, ram: &mut self.ram }
    }

    /// Invalidations (or other unit requests) that failed after the
    /// tables had already changed. Their pages and tables are never given
    /// back; the command still reports what it did.
    #[must_use]
    pub fn iommu_failures(&self) -> u64 {
        self.iommu_failures
    }

    /// Faults whose requester id no device has.
    #[must_use]
    pub fn stray_faults(&self) -> u64 {
        self.stray_faults
    }

    /// Move every fault the units recorded into the owning partitions'
    /// queues. A device that passes its partition's fault limit is marked
    /// [`Device::quarantined`] and its partition gets a
    /// [`fault_reason::FLAG_BUS_MASTER_OFF`] record (queued even when the
    /// queue is full: it then takes the newest record's place, and that
    /// one counts as lost). The platform switches its bus mastering off.
    pub fn poll_faults(&mut self) {
        let Self { units, partitions, devices, by_rid, stray_faults, mem, .. } = self;
        for (u, unit) in units.iter_mut().enumerate() {
            unit.drain_faults(&mut |f| match by_rid.get(&(u, f.rid)) {
                Some(&d) => {
                    let dev = &mut devices[d];
                    let part = &mut partitions[dev.partition];
                    // Some units (VT-d) report a missing leaf as a missing
                    // permission: nothing mapped at the IOVA means NOT_PRESENT.
                    let mut reason = f.reason;
                    if matches!(reason, fault_reason::WRITE_TO_READ_ONLY | fault_reason::READ_FROM_WRITE_ONLY) {
                        let mapped = dev.attached.and_then(|h| part.hwpts.get(&h)).is_some_and(|hw| hw.table.translate(&*mem, Iova(f.iova)).is_some());
                        if !mapped {
                            reason = fault_reason::NOT_PRESENT;
                        }
                    }
                    // A device's DMA faults once per bus access (QEMU's
                    // edu: every 4 bytes): an access to the same page, same
                    // direction and reason as the newest queued record is
                    // folded into it, so one failed transfer is one record.
                    // So is one dropped for a full queue into the newest dropped.
                    let key = (dev.id, reason, f.flags, f.iova >> 12);
                    let same = part.lost_key == Some(key)
                        || part.lost_key.is_none()
                            && part.faults.back().is_some_and(|r| {
                                (r.dev_id, r.reason, r.flags, r.iova >> 12) == key
                            });
                    if same {
                        part.coalesced += 1;
                        return;
                    }
                    if part.faults.len() >= FAULT_QUEUE {
                        part.lost += 1;
                        part.lost_key = Some(key);
                    } else {
                        part.faults.push_back(FaultRecord {
                            dev_id: dev.id,
                            reason,
                            iova: f.iova,
                            flags: f.flags,
                            reserved: 0,
                        });
                        part.lost_key = None;
                    }
                    dev.faults += 1;
                    if part.fault_limit != 0 && dev.faults >= part.fault_limit && !dev.quarantined {
                        dev.quarantined = true;
                        if part.faults.len() >= FAULT_QUEUE {
                            part.faults.pop_back();
                            part.lost += 1;
                        }
                        part.lost_key = None;
                        let notice = FaultRecord {
                            dev_id: dev.id,
                            reason: fault_reason::OTHER,
                            iova: 0,
                            flags: fault_reason::FLAG_BUS_MASTER_OFF,
                            reserved: 0,
                        };
                        part.faults.push_back(notice);
                    }
                }
                None => *stray_faults += 1,
            });
        }
    }

    /// Fault records one device of partition `p` may cause (queued or
    /// lost, each folded run once) before it is quarantined: its bus
    /// mastering switched off. 0: no limit. Default
    /// [`DEFAULT_FAULT_LIMIT`].
    pub fn set_fault_limit(&mut self, p: usize, limit: u64) {
        self.partitions[p].fault_limit = limit;
    }

    /// Reset partition `p` for reuse, in this order: block each of its
    /// devices (the unit's context or STE, with the invalidation completed,
    /// so no DMA reaches its memory from here on), free its HWPTs with
    /// their IOTLB entries invalidated, destroy its IOASes and release
    /// their pins, drop its fault queue, console and exit code, then write
    /// zeros over all its RAM. Its devices keep their ids (and stay
    /// quarantined if they were); new objects get ids from after them again.
    ///
    /// # Errors
    ///
    /// EIO when a unit did not confirm a block or an invalidation: the
    /// device may still reach the old pages, so the RAM is not scrubbed and
    /// the partition must not run again (its pins stay counted).
    pub fn reset_partition(&mut self, p: usize) -> Result<ResetReport, Errno> {
        let mut report = ResetReport {
            pins_released: self.partitions[p].pins.pinned,
            ..ResetReport::default()
        };
        let mut failed = false;
        let failures_before = self.iommu_failures;
        for d in 0..self.devices.len() {
            if self.devices[d].partition != p {
                continue;
            }
            let id = self.devices[d].id;
            report.devices_blocked += 1;
            let r = if self.devices[d].attached.is_some() {
                self.detach_inner(p, id)
            } else {
                let dev = &self.devices[d];
                self.units[dev.unit].block(dev.rid).map_err(|_| Errno::EIO)
            };
            failed |= r.is_err();
            self.devices[d].faults = 0;
        }
        if failed || self.iommu_failures != failures_before {
            self.settle(p);
            return Err(Errno::EIO);
        }
        let ids: Vec<u32> = self.partitions[p].ioas.keys().copied().collect();
        for id in ids {
            self.destroy_inner(p, id).map_err(|_| Errno::EIO)?;
            report.objects_destroyed += 1;
        }
        let part = &mut self.partitions[p];
        report.pins_released -= part.pins.pinned;
        if part.pins.pinned != 0 {
            self.settle(p);
            return Err(Errno::EIO);
        }
        part.faults.clear();
        part.lost = 0;
        part.lost_key = None;
        part.coalesced = 0;
        part.console = Vec::new();
        part.exit = None;
        part.resets += 1;
        let ranges: Vec<(Hpa, u64)> = part
            .memmap
            .ranges()
            .iter()
            .map(|r| (r.hpa, r.len))
            .collect();
        for (hpa, len) in ranges {
            self.ram.zero(hpa, len);
            report.bytes_scrubbed += len;
        }
        self.settle(p);
        Ok(report)
    }

    // ----- operations, in the order of ABI.md -----

    /// DESTROY. Allocates nothing beyond the footprint already charged.
    pub fn destroy(&mut self, p: usize, id: u32) -> Result<(), Errno> {
        let r = self.destroy_inner(p, id);
        self.settle(p);
        r
    }

    fn destroy_inner(&mut self, p: usize, id: u32) -> Result<(), Errno> {
        let part = &mut self.partitions[p];
        match part.objects.get(id).copied() {
            None => Err(Errno::ENOENT),
            Some(Kind::Device(_) | Kind::Hwpt) => Err(Errno::EBUSY),
            Some(Kind::Ioas) => {
                let ioas = part.ioas.get(&id).expect("object table and IOAS map agree");
                if !ioas.hwpts.is_empty() {
                    return Err(Errno::EBUSY);
                }
                let ioas = part.ioas.remove(&id).expect("checked");
                for (s, area) in &ioas.areas {
                    part.pins.unref(area.pin, area.gpa, area.last - s + 1, true);
                }
                part.areas -= ioas.areas.len() as u64;
                part.objects.remove(id);
                Ok(())
            }
        }
    }

    /// IOAS_ALLOC.
    pub fn ioas_alloc(&mut self, p: usize) -> Result<u32, Errno> {
        // Its object, its entry, and an empty IOAS (one hole).
        let need = heap::btree_entry::<u32, Kind>() + heap::btree_entry::<u32, Ioas>() + heap::btree::<u64, Area>(0) + heap::btree::<u64, u64>(1);
        self.grant(need)?;
        let part = &mut self.partitions[p];
        let r = part.objects.insert(Kind::Ioas).ok_or(Errno::ENOMEM).inspect(|id| {
            part.ioas.insert(*id, Ioas::new());
        });
        self.settle(p);
        r
    }

    /// IOAS_ALLOW_IOVAS with the list already read and checked for
    /// malformed and overlapping ranges. The list becomes the IOAS's: the
    /// caller has its heap granted (the decoder does).
    pub fn ioas_set_allowed(&mut self, p: usize, ioas: u32, list: Vec<Range>) -> Result<(), Errno> {
        let r = self.set_allowed_inner(p, ioas, list);
        self.settle(p);
        r
    }

    fn set_allowed_inner(&mut self, p: usize, ioas: u32, mut list: Vec<Range>) -> Result<(), Errno> {
        let part = &mut self.partitions[p];
        let others: usize = part.ioas.iter().filter(|(id, _)| **id != ioas).map(|(_, i)| i.allowed.len()).sum();
        let ioas = part.ioas_mut(ioas)?;
        if list.iter().any(|r| ioas.reserved.intersects(r)) {
            return Err(Errno::EADDRINUSE);
        }
        if others + list.len() > MAX_ALLOWED {
            return Err(Errno::ENOMEM);
        }
        list.sort_unstable();
        ioas.allowed = list;
        Ok(())
    }

    /// IOAS_MAP after the decoder's flag checks. `iova`: `Some` for
    /// FIXED_IOVA.
    pub fn ioas_map(&mut self, p: usize, ioas_id: u32, gpa: u64, length: u64, iova: Option<u64>, perm: Perm) -> Result<u64, Errno> {
        let r = self.map_inner(p, ioas_id, gpa, length, iova, perm);
        self.settle(p);
        r
    }

    fn map_inner(&mut self, p: usize, ioas_id: u32, gpa: u64, length: u64, iova: Option<u64>, perm: Perm) -> Result<u64, Errno> {
        let part = &mut self.partitions[p];
        let ioas = part.ioas.get(&ioas_id).ok_or(Errno::ENOENT)?;
        gpa.checked_add(length).ok_or(Errno::EOVERFLOW)?;
        if length == 0 || length % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let range = match iova {
            Some(iova) => ioas.check_fixed(iova, length)?,
            None => ioas.allocate(length, gpa, false)?,
        };
        if gpa % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        if !part.memmap.is_ram(Gpa(gpa), length) {
            return Err(Errno::EFAULT);
        }
        let pages = length / PAGE_SIZE;
        if part.pins.pinned.checked_add(pages).is_none_or(|n| n > part.pin_limit) {
            return Err(Errno::ENOMEM);
        }
        // The heap: the area (its entry, a hole, cover breakpoints) and
        // the pin slab's growth. The pin set is made once the area is in.
        let pin = part.pins.next_id();
        let need = AREA_HEAP + part.pins.add_heap();
        self.grant(need)?;
        let area = Area { last: range.last, gpa, perm, pin };
        let res = self.insert_areas(p, ioas_id, &[(range.start, area)]);
        let pins = &mut self.partitions[p].pins;
        match res {
            Ok(()) => {
                let got = pins.add(gpa, pages, perm.contains(Perm::WRITE));
                debug_assert_eq!(got, pin);
                Ok(range.start)
            }
            Err(Errno::EIO) => {
                // The rollback's invalidation failed: a unit may still
                // reach these pages, so they stay pinned for good.
                pins.pinned += pages;
                pins.stuck += pages;
                Err(Errno::EIO)
            }
            Err(e) => Err(e),
        }
    }

    /// Put `areas` (free, checked) into an IOAS and every HWPT of it; on
    /// failure nothing stays.
    fn insert_areas(&mut self, p: usize, ioas_id: u32, areas: &[(u64, Area)]) -> Result<(), Errno> {
        let Self { units, mem, partitions, .. } = self;
        let part = &mut partitions[p];
        if part.areas + areas.len() as u64 > part.max_areas {
            return Err(Errno::ENOMEM);
        }
        let ioas = part.ioas.get_mut(&ioas_id).expect("caller looked it up");
        let mut failure = None;
        // HWPTs that hold all of `areas`.
        let mut done = 0;
        for &h in &ioas.hwpts {
            let hw = part.hwpts.get_mut(&h).expect("IOAS lists live HWPTs");
            let mut gather = Gather::new();
            let mut mapped = 0;
            for (iova, area) in areas {
                if let Err(e) = map_area(&mut hw.table, mem, &part.memmap, *iova, area, &mut gather) {
                    failure = Some(pt_errno(e));
                    break;
                }
                mapped += 1;
            }
            if failure.is_some() {
                for (iova, area) in &areas[..mapped] {
                    let _ = hw.table.unmap(mem, Iova(*iova), area.last - iova + 1, &mut gather);
                }
                if flush_gather(&mut units[hw.unit], mem, hw.tag, gather).is_err() {
                    failure = Some(Errno::EIO);
                }
                break;
            }
            debug_assert!(gather.is_empty());
            for (iova, area) in areas {
                if failure.is_none() && units[hw.unit].mapped(hw.tag, Iova(*iova), area.last - iova + 1).is_err() {
                    failure = Some(Errno::EIO);
                }
            }
            done += 1;
            if failure.is_some() {
                break;
            }
        }
        if let Some(mut err) = failure {
            for &h in &ioas.hwpts[..done] {
                let hw = part.hwpts.get_mut(&h).expect("IOAS lists live HWPTs");
                let mut gather = Gather::new();
                for (iova, area) in areas {
                    let _ = hw.table.unmap(mem, Iova(*iova), area.last - iova + 1, &mut gather);
                }
                if flush_gather(&mut units[hw.unit], mem, hw.tag, gather).is_err() {
                    err = Errno::EIO;
                }
            }
            return Err(err);
        }
        for (iova, area) in areas {
            let taken = ioas.free.take(Range { start: *iova, last: area.last });
            debug_assert!(taken);
            ioas.areas.insert(*iova, *area);
        }
        part.areas += areas.len() as u64;
        Ok(())
    }

    /// Remove the `count` areas whose first IOVAs are in `[from, to]` from
    /// an IOAS and its HWPTs, invalidate, then release pins. Returns the
    /// bytes removed. Allocates nothing beyond the charged footprint: the
    /// areas are walked in the tree, and given back to the hole map in
    /// ascending order (one insert at most).
    fn remove_areas(&mut self, p: usize, ioas_id: u32, from: u64, to: u64, count: usize) -> u64 {
        let Self { units, mem, partitions, iommu_failures, .. } = self;
        let part = &mut partitions[p];
        let ioas = part.ioas.get_mut(&ioas_id).expect("caller looked it up");
        let mut flushed = true;
        for &h in &ioas.hwpts {
            let hw = part.hwpts.get_mut(&h).expect("IOAS lists live HWPTs");
            let mut gather = Gather::new();
            for (start, area) in ioas.areas.range(from..=to) {
                let res = hw.table.unmap(mem, Iova(*start), area.last - start + 1, &mut gather);
                debug_assert!(res.is_ok(), "areas are whole in every HWPT");
            }
            if flush_gather(&mut units[hw.unit], mem, hw.tag, gather).is_err() {
                flushed = false;
                *iommu_failures += 1;
            }
        }
        let mut bytes = 0;
        while let Some((&start, _)) = ioas.areas.range(from..=to).next() {
            let area = ioas.areas.remove(&start).expect("just found");
            ioas.free.give(Range { start, last: area.last });
            bytes += area.last - start + 1;
            part.pins.unref(area.pin, area.gpa, area.last - start + 1, flushed);
        }
        part.areas -= count as u64;
        // A failed invalidation leaves the pages pinned and the tables
        // allocated for good (the unit may still use them); the areas are
        // gone all the same, so UNMAP reports them.
        bytes
    }

    /// IOAS_UNMAP. On `Err(ENOENT)` areas before the first one that was
    /// not wholly inside the range may be gone (iommufd's partial case).
    pub fn ioas_unmap(&mut self, p: usize, ioas_id: u32, iova: u64, length: u64) -> Result<u64, Errno> {
        let r = self.unmap_inner(p, ioas_id, iova, length);
        self.settle(p);
        r
    }

    fn unmap_inner(&mut self, p: usize, ioas_id: u32, iova: u64, length: u64) -> Result<u64, Errno> {
        let ioas = self.partitions[p].ioas.get(&ioas_id).ok_or(Errno::ENOENT)?;
        let all = iova == 0 && length == u64::MAX;
        let range = if all {
            Range { start: 0, last: u64::MAX }
        } else {
            if iova == u64::MAX || length == u64::MAX {
                return Err(Errno::EOVERFLOW);
            }
            if length == 0 {
                return Err(Errno::EINVAL);
            }
            Range::with_len(iova, length).ok_or(Errno::EOVERFLOW)?
        };
        // The run of whole areas from the first one touching the range up
        // to the first that sticks out of it.
        let mut count = 0usize;
        let mut partial = false;
        let mut to = None;
        let first = ioas.areas.range(..=range.start).next_back().filter(|(_, a)| a.last >= range.start).map_or(range.start, |(s, _)| *s);
        for (&s, a) in ioas.areas.range(first..=range.last) {
            if s < range.start || a.last > range.last {
                partial = true;
                break;
            }
            to = Some(s);
            count += 1;
        }
        let bytes = match to {
            Some(to) => self.remove_areas(p, ioas_id, first, to, count),
            None => 0,
        };
        if partial || (count == 0 && !all) { Err(Errno::ENOENT) } else { Ok(bytes) }
    }

    /// IOAS_COPY after the decoder's flag checks. Returns the destination
    /// IOVA.
    #[allow(clippy::too_many_arguments)]
    pub fn ioas_copy(&mut self, p: usize, dst_id: u32, src_id: u32, length: u64, dst_iova: Option<u64>, src_iova: u64, perm: Perm) -> Result<u64, Errno> {
        let r = self.copy_inner(p, dst_id, src_id, length, dst_iova, src_iova, perm);
        self.settle(p);
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_inner(&mut self, p: usize, dst_id: u32, src_id: u32, length: u64, dst_iova: Option<u64>, src_iova: u64, perm: Perm) -> Result<u64, Errno> {
        let part = &self.partitions[p];
        let src = part.ioas.get(&src_id).ok_or(Errno::ENOENT)?;
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let want = Range::with_len(src_iova, length).ok_or(Errno::EOVERFLOW)?;
        // The contiguous run of areas covering the source range, walked
        // (without allocating) once to check it and count its pieces.
        let (mut pieces, mut first_gpa) = (0usize, 0u64);
        for piece in copy_pieces(src, want) {
            let (_, _, gpa, _) = piece?;
            if pieces == 0 {
                first_gpa = gpa;
            }
            pieces += 1;
        }
        let dst = part.ioas.get(&dst_id).ok_or(Errno::ENOENT)?;
        if length % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let range = match dst_iova {
            Some(iova) => dst.check_fixed(iova, length)?,
            None => dst.allocate(length, first_gpa, true)?,
        };
        let mut fresh_covers = 0;
        for piece in copy_pieces(src, want) {
            let (_, _, gpa, pin) = piece?;
            let set = &part.pins.sets[pin as usize];
            if perm.contains(Perm::WRITE) && !set.writable {
                return Err(Errno::EPERM);
            }
            if gpa % PAGE_SIZE != 0 {
                return Err(Errno::EINVAL);
            }
            fresh_covers += usize::from(set.cover.is_none());
        }
        // The heap: each new area, a cover for each pin set that has none
        // yet, and the list of new areas.
        self.grant(pieces * AREA_HEAP + fresh_covers * COVER_HEAP + heap::vec::<(u64, Area)>(pieces))?;
        let src = &self.partitions[p].ioas[&src_id];
        let mut new = Vec::with_capacity(pieces);
        let mut iova = range.start;
        for piece in copy_pieces(src, want) {
            let (_, len, gpa, pin) = piece?;
            new.push((iova, Area { last: iova + (len - 1), gpa, perm, pin }));
            iova = iova.wrapping_add(len);
        }
        self.insert_areas(p, dst_id, &new)?;
        // The new areas share the source's pins (nothing is counted).
        let pins = &mut self.partitions[p].pins;
        for (s, a) in &new {
            pins.share(a.pin, a.gpa, a.last - s + 1);
        }
        Ok(range.start)
    }

    /// IOVA_RANGES data: the usable ranges and the alignment.
    pub fn ioas_ranges(&self, p: usize, ioas: u32) -> Result<Vec<Range>, Errno> {
        Ok(self.partitions[p].ioas.get(&ioas).ok_or(Errno::ENOENT)?.usable())
    }

    /// OPTION HUGE_PAGES GET.
    pub fn huge_pages(&self, p: usize, ioas: u32) -> Result<bool, Errno> {
        Ok(self.partitions[p].ioas.get(&ioas).ok_or(Errno::ENOENT)?.huge)
    }

    /// OPTION HUGE_PAGES SET (iommufd: turning them off is refused once a
    /// domain holds mappings).
    pub fn set_huge_pages(&mut self, p: usize, ioas_id: u32, on: bool) -> Result<(), Errno> {
        let part = &mut self.partitions[p];
        let ioas = part.ioas.get_mut(&ioas_id).ok_or(Errno::ENOENT)?;
        if !on && ioas.huge && !ioas.hwpts.is_empty() && !ioas.areas.is_empty() {
            return Err(Errno::EINVAL);
        }
        ioas.huge = on;
        for h in &ioas.hwpts {
            part.hwpts.get_mut(h).expect("IOAS lists live HWPTs").table.set_huge_pages(on);
        }
        Ok(())
    }

    /// The global index of device object `dev_id` of partition `p`.
    pub fn device_index(&self, p: usize, dev_id: u32) -> Result<usize, Errno> {
        self.partitions[p].device(dev_id)
    }

    /// DEVICE_ATTACH: returns the HWPT id.
    pub fn attach(&mut self, p: usize, dev_id: u32, pt_id: u32) -> Result<u32, Errno> {
        let r = self.attach_inner(p, dev_id, pt_id);
        self.settle(p);
        r
    }

    fn attach_inner(&mut self, p: usize, dev_id: u32, pt_id: u32) -> Result<u32, Errno> {
        let d = self.partitions[p].device(dev_id)?;
        let (unit, rid, old) = (self.devices[d].unit, self.devices[d].rid, self.devices[d].attached);
        let part = &self.partitions[p];
        let (ioas_id, given_hwpt) = match part.objects.get(pt_id) {
            None => return Err(Errno::ENOENT),
            Some(Kind::Device(_)) => return Err(Errno::EINVAL),
            Some(Kind::Ioas) => (pt_id, None),
            Some(Kind::Hwpt) => {
                let hw = &part.hwpts[&pt_id];
                if hw.unit != unit {
                    return Err(Errno::EINVAL);
                }
                (hw.ioas, Some(pt_id))
            }
        };
        let ioas = &part.ioas[&ioas_id];
        let reuse = given_hwpt.or_else(|| ioas.hwpts.iter().copied().find(|h| part.hwpts[h].unit == unit));
        if let Some(o) = old.filter(|o| Some(*o) == reuse) {
            return Ok(o);
        }
        let old_ioas = old.map(|h| part.hwpts[&h].ioas);
        let moving = old_ioas != Some(ioas_id);
        if moving {
            for r in &self.devices[d].regions {
                if ioas.area_intersecting(&r.range) || ioas.allowed_intersecting(&r.range) {
                    return Err(Errno::EADDRINUSE);
                }
            }
        }
        // The heap: a new HWPT and its place in the IOAS's list; the
        // device's reserved ranges and room to merge them.
        let mut need = 0;
        if reuse.is_none() {
            need += HWPT_HEAP;
            if ioas.hwpts.len() == ioas.hwpts.capacity() {
                need += heap::vec::<u32>(heap::grown(ioas.hwpts.capacity()));
            }
        }
        if moving {
            let n = ioas.reserved.len() + self.devices[d].regions.len();
            if n > ioas.reserved.capacity() {
                need += heap::vec::<(Range, Owner)>(n);
            }
            if n > ioas.merged.capacity() {
                need += heap::vec::<Range>(n);
            }
        }
        self.grant(need)?;
        let (hwpt_id, created) = match reuse {
            Some(h) => (h, false),
            None => (self.new_hwpt(p, ioas_id, unit)?, true),
        };
        let (tag, root, format) = {
            let hw = &self.partitions[p].hwpts[&hwpt_id];
            (hw.tag, hw.table.root(), hw.table.format())
        };
        if self.units[unit].attach(rid, &Domain { tag, root, format }).is_err() {
            if created {
                let _ = self.free_hwpt(p, hwpt_id);
            }
            return Err(Errno::EIO);
        }
        let part = &mut self.partitions[p];
        part.hwpts.get_mut(&hwpt_id).expect("live").users += 1;
        self.devices[d].attached = Some(hwpt_id);
        if moving {
            let regions = &self.devices[d].regions;
            let ioas = part.ioas.get_mut(&ioas_id).expect("live");
            ioas.reserved.reserve_exact(regions.len());
            for r in regions {
                ioas.reserved.add(r.range, Owner::Device(d as u32));
            }
            let n = ioas.reserved.len();
            if ioas.merged.capacity() < n {
                ioas.merged.reserve_exact(n - ioas.merged.len());
            }
            ioas.remerge();
            if let Some(o) = old_ioas {
                let old_ioas = part.ioas.get_mut(&o).expect("live");
                old_ioas.reserved.remove_owner(Owner::Device(d as u32));
                old_ioas.remerge();
            }
        }
        if let Some(o) = old {
            // The device already translates through the new HWPT: a failed
            // invalidation of the old one is counted, not reported.
            self.drop_hwpt_user(p, o);
        }
        Ok(hwpt_id)
    }

    /// DEVICE_DETACH. Allocates nothing beyond the charged footprint.
    pub fn detach(&mut self, p: usize, dev_id: u32) -> Result<(), Errno> {
        let r = self.detach_inner(p, dev_id);
        self.settle(p);
        r
    }

    fn detach_inner(&mut self, p: usize, dev_id: u32) -> Result<(), Errno> {
        let d = self.partitions[p].device(dev_id)?;
        let Some(h) = self.devices[d].attached else { return Ok(()) };
        let dev = &self.devices[d];
        self.units[dev.unit].block(dev.rid).map_err(|_| Errno::EIO)?;
        self.devices[d].attached = None;
        let part = &mut self.partitions[p];
        let ioas = part.ioas.get_mut(&part.hwpts[&h].ioas).expect("live");
        ioas.reserved.remove_owner(Owner::Device(d as u32));
        ioas.remerge();
        self.drop_hwpt_user(p, h);
        Ok(())
    }

    fn drop_hwpt_user(&mut self, p: usize, h: u32) {
        let hw = self.partitions[p].hwpts.get_mut(&h).expect("live");
        hw.users -= 1;
        if hw.users == 0 && self.free_hwpt(p, h).is_err() {
            self.iommu_failures += 1;
        }
    }

    /// A new automatic HWPT for `ioas` on `unit`, holding every area.
    fn new_hwpt(&mut self, p: usize, ioas_id: u32, unit: usize) -> Result<u32, Errno> {
        let Self { units, tags, mem, partitions, .. } = self;
        let part = &mut partitions[p];
        let format = units[unit].info().format;
        let tag = tags[unit].0.insert(()).ok_or(Errno::ENOSPC)?;
        let mut table = match AnyTable::new(&format, mem) {
            Ok(t) => t,
            Err(e) => {
                tags[unit].0.remove(tag);
                return Err(pt_errno(e));
            }
        };
        let ioas = &part.ioas[&ioas_id];
        table.set_huge_pages(ioas.huge);
        let mut gather = Gather::new();
        let mut failure = None;
        for (iova, area) in &ioas.areas {
            if let Err(e) = map_area(&mut table, mem, &part.memmap, *iova, area, &mut gather) {
                failure = Some(pt_errno(e));
                break;
            }
        }
        let id = match failure {
            None => part.objects.insert(Kind::Hwpt).ok_or(Errno::ENOMEM),
            Some(e) => Err(e),
        };
        match id {
            Ok(id) => {
                debug_assert!(gather.is_empty());
                part.hwpts.insert(id, Hwpt { ioas: ioas_id, unit, tag, table, users: 0 });
                part.ioas.get_mut(&ioas_id).expect("live").hwpts.push(id);
                Ok(id)
            }
            Err(e) => {
                // No device ever used this table: nothing to invalidate.
                table.destroy(mem, &mut gather);
                gather.release(mem);
                tags[unit].0.remove(tag);
                Err(e)
            }
        }
    }

    /// Free an HWPT no device uses: invalidate its tag everywhere, then
    /// free its tables and the tag.
    fn free_hwpt(&mut self, p: usize, h: u32) -> Result<(), Errno> {
        let Self { units, tags, mem, partitions, .. } = self;
        let part = &mut partitions[p];
        let hw = part.hwpts.remove(&h).expect("live");
        part.objects.remove(h);
        part.ioas.get_mut(&hw.ioas).expect("live").hwpts.retain(|x| *x != h);
        let mut gather = Gather::new();
        hw.table.destroy(mem, &mut gather);
        let flush = Flush { tag: hw.tag, range: None, leaf_levels: gather.leaf_levels(), tables: true };
        match units[hw.unit].flush(&flush) {
            Ok(()) => {
                gather.release(mem);
                tags[hw.unit].0.remove(hw.tag);
                Ok(())
            }
            // Tables and tag stay allocated forever: the unit may still
            // hold them.
            Err(_) => Err(Errno::EIO),
        }
    }

    /// Take up to `max` fault records queued for partition `p` (see
    /// [`Self::pending_faults`], which polls the units first), and the
    /// count of records lost since the last read.
    pub fn take_faults(&mut self, p: usize, max: usize) -> (Vec<FaultRecord>, u64) {
        let part = &mut self.partitions[p];
        let n = max.min(part.faults.len());
        let records = part.faults.drain(..n).collect();
        part.lost_key = None;
        (records, core::mem::take(&mut part.lost))
    }

    /// Drop the `n` oldest fault records queued for partition `p` (FAULT_READ
    /// wrote them out); returns the count of records lost since the last
    /// read.
    pub(crate) fn consume_faults(&mut self, p: usize, n: usize) -> u64 {
        let part = &mut self.partitions[p];
        let n = n.min(part.faults.len());
        part.faults.drain(..n);
        part.lost_key = None;
        core::mem::take(&mut part.lost)
    }

    /// Write, one by one at `gpa`, at most `max` of the items `items`
    /// makes from partition `p`'s state and the devices, without
    /// collecting them; returns how many it wrote. EFAULT at the first
    /// that is not the partition's RAM (earlier ones stay written).
    pub(crate) fn write_from<'s, T, I>(&'s mut self, p: usize, gpa: u64, max: usize, items: impl FnOnce(&'s Partition, &'s [Device]) -> I) -> Result<usize, Errno>
    where
        T: zerocopy::IntoBytes + zerocopy::Immutable,
        I: Iterator<Item = T>,
    {
        let Self { ram, partitions, devices, .. } = self;
        let (partitions, devices): (&'s Vec<Partition>, &'s Vec<Device>) = (partitions, devices);
        let part = &partitions[p];
        let mut n = 0;
        for (i, item) in items(part, devices).take(max).enumerate() {
            let at = (i as u64).checked_mul(size_of::<T>() as u64).and_then(|o| gpa.checked_add(o)).ok_or(Errno::EFAULT)?;
            let data = item.as_bytes();
            let mut off = 0usize;
            part.memmap
                .for_each_segment(Gpa(at), data.len() as u64, |seg| {
                    let k = seg.len as usize;
                    ram.write(seg.hpa, &data[off..off + k]);
                    off += k;
                })
                .ok_or(Errno::EFAULT)?;
            n += 1;
        }
        Ok(n)
    }

    /// Settle what the decoder was granted for a command that did not
    /// settle itself (ALLOW_IOVAS' scratch on an error).
    pub(crate) fn settle_pending(&mut self, p: usize) {
        if self.heap_pending != 0 {
            self.settle(p);
        }
    }

    /// Poll the units, then count the fault records waiting for
    /// partition `p`.
    pub fn pending_faults(&mut self, p: usize) -> usize {
        self.poll_faults();
        self.partitions[p].faults.len()
    }

    /// Check every invariant the core promises; `Err` describes the first
    /// violation. Costs a walk of every table: for tests and hvsim.
    ///
    /// - every HWPT translates exactly its IOAS's areas, each to the
    ///   partition memory behind it, with its permission;
    /// - no leaf reaches another partition's RAM or a table page;
    /// - every table page of every HWPT is allocated (none was freed while
    ///   still linked) and belongs to one HWPT only; with no failed
    ///   invalidation, the table memory holds exactly those pages and the
    ///   units exactly the HWPTs' domain tags;
    /// - pins balance: each pin set's references are its areas and its
    ///   pages their union; the pinned count is the sets' plus the stuck;
    /// - objects, IOASes, HWPTs and devices agree with each other;
    /// - the heap charged is the footprint of the state (see
    ///   [`crate::heap`]) and no command outgrew its grant.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.heap_overruns != 0 || self.heap_pending != 0 {
            return Err(format!("heap: {} commands outgrew their grant, {} bytes unsettled", self.heap_overruns, self.heap_pending));
        }
        if self.heap_units != self.units_heap() {
            return Err(format!("heap: units charged {}, their footprint is {}", self.heap_units, self.units_heap()));
        }
        // Every table page of every HWPT, with its owner.
        let mut tables: BTreeMap<u64, (usize, u32)> = BTreeMap::new();
        let mut tags: BTreeMap<(usize, u32), u32> = BTreeMap::new();
        for (pi, part) in self.partitions.iter().enumerate() {
            for (&h, hw) in &part.hwpts {
                let mut bad = None;
                hw.table.for_each_table(&self.mem, |_, t| {
                    if bad.is_none() && self.mem.is_allocated(t) == Some(false) {
                        bad = Some(format!("{}: HWPT {h} links table {:#x}, which is free", part.name, t.raw()));
                    }
                    if let Some((op, oh)) = tables.insert(t.raw(), (pi, h)) {
                        if bad.is_none() {
                            bad = Some(format!("{}: HWPT {h} shares table {:#x} with HWPT {oh} of partition {op}", part.name, t.raw()));
                        }
                    }
                });
                if let Some(b) = bad {
                    return Err(b);
                }
                if self.tags[hw.unit].0.get(hw.tag).is_none() {
                    return Err(format!("{}: HWPT {h} uses tag {} that unit {} does not hold", part.name, hw.tag, hw.unit));
                }
                if tags.insert((hw.unit, hw.tag), h).is_some() {
                    return Err(format!("{}: HWPT {h} shares tag {} on unit {}", part.name, hw.tag, hw.unit));
                }
            }
        }
        if self.iommu_failures == 0 {
            if let Some(n) = self.mem.allocated().filter(|n| *n != tables.len()) {
                return Err(format!("{n} table pages allocated, the HWPTs link {}", tables.len()));
            }
            for (u, t) in self.tags.iter().enumerate() {
                let used = tags.keys().filter(|(tu, _)| *tu == u).count();
                if t.0.len() != used {
                    return Err(format!("unit {u} holds {} domain tags, {used} HWPTs use them", t.0.len()));
                }
            }
        }
        for (pi, part) in self.partitions.iter().enumerate() {
            let name = &part.name;
            if part.heap != part.heap_footprint() {
                return Err(format!("{name}: heap charged {}, its footprint is {}", part.heap, part.heap_footprint()));
            }
            let areas: usize = part.ioas.values().map(|i| i.areas.len()).sum();
            if part.areas != areas as u64 {
                return Err(format!("{name}: counts {} areas, its IOASes hold {areas}", part.areas));
            }
            for (id, kind) in part.objects.iter() {
                let ok = match kind {
                    Kind::Ioas => part.ioas.contains_key(&id),
                    Kind::Hwpt => part.hwpts.contains_key(&id),
                    Kind::Device(d) => self.devices.get(*d).is_some_and(|dev| dev.partition == pi && dev.id == id),
                };
                if !ok {
                    return Err(format!("{name}: object {id} ({kind:?}) has no state behind it"));
                }
            }
            // Pins balance: each pin set's references are its areas, and
            // its live pages are the union of the pages they cover.
            let mut users: Vec<Vec<(u64, u64)>> = alloc::vec![Vec::new(); part.pins.sets.len()];
            for ioas in part.ioas.values() {
                for (s, a) in &ioas.areas {
                    let set = &part.pins.sets[a.pin as usize];
                    users[a.pin as usize].push(Pins::span(set, a.gpa, a.last - s + 1));
                }
            }
            let mut pages = part.pins.stuck;
            for (i, set) in part.pins.sets.iter().enumerate() {
                let free = part.pins.free.contains(&(i as u32));
                let refs = users[i].len() as u32;
                if free != (refs == 0) || (!free && set.refs != refs) {
                    return Err(format!("{name}: pin set {i} has {} references, {refs} areas use it", set.refs));
                }
                users[i].sort_unstable();
                let (mut union, mut end) = (0, 0);
                for &(a, b) in &users[i] {
                    union += b.saturating_sub(a.max(end));
                    end = end.max(b);
                }
                if !free && union != set.live {
                    return Err(format!("{name}: pin set {i} holds {} pages, its areas cover {union}", set.live));
                }
                if !free {
                    pages += set.live;
                }
            }
            if pages != part.pins.pinned {
                return Err(format!("{name}: {} pages pinned, pin sets hold {pages}", part.pins.pinned));
            }
            if part.pins.pinned > part.pin_limit {
                return Err(format!("{name}: {} pages pinned over the limit {}", part.pins.pinned, part.pin_limit));
            }
            for (&id, ioas) in &part.ioas {
                if part.objects.get(id) != Some(&Kind::Ioas) {
                    return Err(format!("{name}: IOAS {id} not in the object table"));
                }
                let mut free = Holes::new();
                for (&s, a) in &ioas.areas {
                    if !free.take(Range { start: s, last: a.last }) || !part.memmap.is_ram(Gpa(a.gpa), a.last - s + 1) {
                        return Err(format!("{name}: IOAS {id}: area {s:#x} overlaps another or is not RAM"));
                    }
                    if ioas.reserved.intersects(&Range { start: s, last: a.last }) {
                        return Err(format!("{name}: IOAS {id}: area {s:#x} in a reserved range"));
                    }
                }
                if free != ioas.free {
                    return Err(format!("{name}: IOAS {id}: hole map does not match the areas"));
                }
                if ioas.merged != ioas.reserved.merged() {
                    return Err(format!("{name}: IOAS {id}: stale reserved cache"));
                }
                for h in &ioas.hwpts {
                    let hw = part.hwpts.get(h).ok_or_else(|| format!("{name}: IOAS {id} lists dead HWPT {h}"))?;
                    if hw.ioas != id {
                        return Err(format!("{name}: HWPT {h} belongs to IOAS {}, listed by {id}", hw.ioas));
                    }
                    self.check_hwpt_translates(pi, *h, hw, ioas, &tables)?;
                }
            }
            for (&h, hw) in &part.hwpts {
                let users = self.devices.iter().filter(|d| d.partition == pi && d.attached == Some(h)).count();
                if users == 0 || users as u32 != hw.users {
                    return Err(format!("{name}: HWPT {h} counts {} users, {users} devices use it", hw.users));
                }
                if !part.ioas.get(&hw.ioas).is_some_and(|i| i.hwpts.contains(&h)) {
                    return Err(format!("{name}: HWPT {h} not listed by its IOAS"));
                }
            }
        }
        for dev in &self.devices {
            let part = &self.partitions[dev.partition];
            if let Some(h) = dev.attached {
                if part.hwpts.get(&h).is_none_or(|hw| hw.unit != dev.unit) {
                    return Err(format!("{}: device {} attached to HWPT {h}, not one of its partition on its unit", part.name, dev.id));
                }
            }
            for (&id, ioas) in &part.ioas {
                let attached_here = dev.attached.is_some_and(|h| part.hwpts.get(&h).is_some_and(|hw| hw.ioas == id));
                let has = dev.regions.iter().all(|r| ioas.reserved.intersects(&r.range));
                if attached_here && !has {
                    return Err(format!("{}: device {} attached to IOAS {id} without its reserved regions", part.name, dev.id));
                }
            }
        }
        Ok(())
    }

    /// Every leaf of `hw` lies in an area and maps that area's memory with
    /// its permission, and the leaves cover every area byte.
    fn check_hwpt_translates(&self, pi: usize, h: u32, hw: &Hwpt, ioas: &Ioas, tables: &BTreeMap<u64, (usize, u32)>) -> Result<(), String> {
        let part = &self.partitions[pi];
        let name = &part.name;
        let mut covered = 0u64;
        let mut bad = None;
        hw.table.for_each_leaf(&self.mem, |iova, size, hpa, perm| {
            if bad.is_some() {
                return;
            }
            let last = iova.raw() + (size - 1);
            let Some((&s, a)) = ioas.areas.range(..=iova.raw()).next_back() else {
                bad = Some(format!("{name}: HWPT {h} maps {:#x}, outside every area", iova.raw()));
                return;
            };
            if a.last < last {
                bad = Some(format!("{name}: HWPT {h} leaf {:#x}+{size:#x} outside area {s:#x}-{:#x}", iova.raw(), a.last));
                return;
            }
            let gpa = a.gpa + (iova.raw() - s);
            let want = part.memmap.translate(Gpa(gpa));
            let contiguous = part.memmap.translate(Gpa(gpa + size - 1)).map(|x| x.raw()) == want.map(|w| w.raw() + size - 1);
            if want != Some(hpa) || !contiguous {
                bad = Some(format!("{name}: HWPT {h} maps {:#x} to {:#x}, the area says {want:x?}", iova.raw(), hpa.raw()));
                return;
            }
            let (first, end) = (hpa.raw(), hpa.raw() + size);
            if let Some((t, _)) = tables.range(first.saturating_sub(PAGE_SIZE - 1)..end).next() {
                bad = Some(format!("{name}: HWPT {h} leaf {:#x} reaches table page {t:#x}", iova.raw()));
                return;
            }
            let foreign = self.partitions.iter().enumerate().filter(|(o, _)| *o != pi).find_map(|(_, other)| {
                other.memmap.ranges().iter().find(|r| r.hpa.raw() < end && first < r.hpa.raw() + r.len).map(|_| &other.name)
            });
            if let Some(other) = foreign {
                bad = Some(format!("{name}: HWPT {h} leaf {:#x} reaches RAM of {other}", iova.raw()));
                return;
            }
            if perm != hw.table.effective_perm(a.perm) {
                bad = Some(format!("{name}: HWPT {h} grants {perm:?} at {:#x}, the area {:?}", iova.raw(), a.perm));
                return;
            }
            covered += size;
        });
        if let Some(b) = bad {
            return Err(b);
        }
        let total: u64 = ioas.areas.iter().map(|(s, a)| a.last - s + 1).sum();
        if covered != total {
            return Err(format!("{name}: HWPT {h} maps {covered:#x} bytes, its IOAS has {total:#x}"));
        }
        Ok(())
    }

    /// Whether the RAM of partition `p` holds `[gpa, gpa + len)` entirely.
    #[must_use]
    pub fn is_ram(&self, p: usize, gpa: u64, len: u64) -> bool {
        self.partitions[p].memmap.is_ram(Gpa(gpa), len)
    }

    /// Read partition memory; EFAULT (reading nothing) unless every byte is
    /// the partition's RAM.
    pub fn read_guest(&self, p: usize, gpa: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mut off = 0usize;
        let ram = &self.ram;
        self.partitions[p]
            .memmap
            .for_each_segment(Gpa(gpa), buf.len() as u64, |seg| {
                let n = seg.len as usize;
                ram.read(seg.hpa, &mut buf[off..off + n]);
                off += n;
            })
            .ok_or(Errno::EFAULT)
    }

    /// Write partition memory; EFAULT (writing nothing) unless every byte
    /// is the partition's RAM.
    pub fn write_guest(&mut self, p: usize, gpa: u64, data: &[u8]) -> Result<(), Errno> {
        let mut off = 0usize;
        let ram = &mut self.ram;
        self.partitions[p]
            .memmap
            .for_each_segment(Gpa(gpa), data.len() as u64, |seg| {
                let n = seg.len as usize;
                ram.write(seg.hpa, &data[off..off + n]);
                off += n;
            })
            .ok_or(Errno::EFAULT)
    }

    /// The attached HWPT's unit, tag, root and format for device `d`.
    #[must_use]
    pub fn device_domain(&self, d: usize) -> Option<Domain> {
        let dev = &self.devices[d];
        let hw = &self.partitions[dev.partition].hwpts[&dev.attached?];
        Some(Domain { tag: hw.tag, root: hw.table.root(), format: hw.table.format() })
    }

}
