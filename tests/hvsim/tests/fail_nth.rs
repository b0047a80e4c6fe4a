//! Allocation-failure injection for every command (as iommufd's selftest
//! does with fail_nth), for both kinds of memory the core takes:
//!
//! - **table memory**: the N-th table-page allocation fails, for N = 0, 1,
//!   2, ... until the command succeeds;
//! - **heap**: the N-th charge the core asks of its heap budget
//!   (`sluice_kernel::heap`) is refused, likewise.
//!
//! Each failure must be ENOMEM and leave everything as it was: objects,
//! areas, pins, page-table bytes, free table pages, the units' contexts, the
//! heap charged. The commands run through the real decoder, structs in
//! partition RAM.
//!
//! The heap budget is only a protection if the core never holds more heap
//! than it charged. This binary's global allocator counts every allocation
//! a hypercall makes (as the power-of-two block a buddy heap would hand out;
//! the simulated units, table memory and RAM are not the core's and are left
//! out) and checks, at every allocation, that the heap the core holds stays
//! within what it has charged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use hvsim::sim::{SimRam, SimUnit, UnitKind};
use sluice_kernel::abi::{
    Command, ConsoleWrite, Destroy, DeviceAttach, DeviceDetach, DeviceList, DeviceResvIovaRanges, Errno, FaultRead, GetHwInfo, IoasAlloc,
    IoasAllowIovas, IoasCopy, IoasIovaRanges, IoasMap, IoasUnmap, IovaRange, OptionCmd, map_flags, option, resv_type,
};
use sluice_kernel::heap::{self, HeapBudget, HeapUse};
use sluice_kernel::hv::{DeviceConfig, Hypervisor, PartitionConfig, PhysMem, Region};
use sluice_kernel::hwwalk::PhysRead;
use sluice_kernel::hypercall::{CONSOLE_BUFFER, Outcome};
use sluice_kernel::iommu::{Domain, Flush, Iommu, IommuError, UnitFault, UnitInfo};
use sluice_kernel::iova::Range;
use sluice_kernel::memmap::RamRange;
use sluice_kernel::pt::{PAGE_SIZE, Table, TableMemory, VecTableMemory};
use sluice_kernel::{Gpa, Hpa, Iova};
use zerocopy::{FromBytes, Immutable, IntoBytes};

// ----- the counting allocator -----

thread_local! {
    /// Count this thread's allocations (only while a hypercall runs).
    static TRACK: Cell<bool> = const { Cell::new(false) };
    /// Heap the core holds, from what hypercalls allocated and freed.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// Heap charged to this thread's budget.
    static CHARGED: Cell<isize> = const { Cell::new(0) };
    /// Charged heap the check does not count (known slack).
    static ALLOWANCE: Cell<isize> = const { Cell::new(0) };
    /// Most the core held above its charge (0: never).
    static OVER: Cell<isize> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

fn block(layout: Layout) -> isize {
    heap::block(layout.size().max(layout.align())) as isize
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// bookkeeping only touches const-initialised thread-locals (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACK.get() {
            let live = LIVE.get() + block(layout);
            LIVE.set(live);
            ALLOCATIONS.set(ALLOCATIONS.get() + 1);
            let over = live - (CHARGED.get() - ALLOWANCE.get());
            if over > OVER.get() {
                OVER.set(over);
            }
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if TRACK.get() {
            LIVE.set(LIVE.get() - block(layout));
        }
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system
        // allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Stops counting while the machine around the core (units, table memory,
/// RAM) allocates.
struct Pause(bool);

impl Pause {
    fn new() -> Self {
        Self(TRACK.replace(false))
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        TRACK.set(self.0);
    }
}

// ----- the machine, with the simulated parts kept out of the count -----

#[derive(Debug)]
struct Unit(SimUnit);

impl Iommu for Unit {
    fn info(&self) -> &UnitInfo {
        self.0.info()
    }
    fn attach(&mut self, rid: u32, domain: &Domain) -> Result<(), IommuError> {
        let _p = Pause::new();
        self.0.attach(rid, domain)
    }
    fn block(&mut self, rid: u32) -> Result<(), IommuError> {
        let _p = Pause::new();
        self.0.block(rid)
    }
    fn flush(&mut self, flush: &Flush) -> Result<(), IommuError> {
        let _p = Pause::new();
        self.0.flush(flush)
    }
    fn mapped(&mut self, tag: u32, iova: Iova, len: u64) -> Result<(), IommuError> {
        let _p = Pause::new();
        self.0.mapped(tag, iova, len)
    }
    fn drain_faults(&mut self, sink: &mut dyn FnMut(UnitFault)) {
        let _p = Pause::new();
        self.0.drain_faults(sink);
    }
}

#[derive(Debug)]
struct Mem(VecTableMemory);

impl TableMemory for Mem {
    fn alloc_table(&mut self) -> Option<Hpa> {
        let _p = Pause::new();
        self.0.alloc_table()
    }
    fn free_table(&mut self, table: Hpa) {
        let _p = Pause::new();
        self.0.free_table(table);
    }
    fn table(&self, table: Hpa) -> &Table {
        self.0.table(table)
    }
    fn is_allocated(&self, table: Hpa) -> Option<bool> {
        self.0.is_allocated(table)
    }
    fn allocated(&self) -> Option<usize> {
        self.0.allocated()
    }
}

impl PhysRead for Mem {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        self.0.read_u64(pa)
    }
}

#[derive(Debug, Default)]
struct Ram(SimRam);

impl PhysMem for Ram {
    fn read(&self, hpa: Hpa, buf: &mut [u8]) {
        self.0.read(hpa, buf);
    }
    fn write(&mut self, hpa: Hpa, data: &[u8]) {
        let _p = Pause::new();
        self.0.write(hpa, data);
    }
}

type Hv = Hypervisor<Unit, Mem, Ram>;

const TABLE_BASE: u64 = 0x10_0000_0000;
const P: usize = 0;
const Q: usize = 1;
const SCRATCH: u64 = 0x1000;
const ARRAY: u64 = 0x10_0000;

/// The budget: refuses the `fail_at`-th charge of a hypercall (counting
/// from 0 over the machine's life), keeps the total in `CHARGED`.
#[derive(Debug, Default)]
struct Budget {
    calls: u64,
    fail_at: Option<u64>,
    charged: usize,
}

#[derive(Clone, Debug, Default)]
struct Shared(Arc<Mutex<Budget>>);

impl HeapBudget for Shared {
    fn charge(&mut self, bytes: usize, why: HeapUse) -> bool {
        let _p = Pause::new();
        let mut b = self.0.lock().unwrap();
        if why == HeapUse::Grow {
            let n = b.calls;
            b.calls += 1;
            if b.fail_at == Some(n) {
                return false;
            }
        }
        b.charged += bytes;
        CHARGED.set(b.charged as isize);
        true
    }

    fn uncharge(&mut self, bytes: usize) {
        let _p = Pause::new();
        let mut b = self.0.lock().unwrap();
        b.charged = b.charged.checked_sub(bytes).expect("uncharging what was charged");
        CHARGED.set(b.charged as isize);
    }
}

struct Machine {
    hv: Hv,
    budget: Shared,
}

fn machine() -> Machine {
    // Counting starts with a machine: a previous test on this thread may
    // have left its own numbers.
    LIVE.set(0);
    OVER.set(0);
    ALLOWANCE.set(0);
    let unit = |kind, leaves: &[u64]| Unit(SimUnit::new(kind, leaves).unwrap());
    let units = vec![
        unit(UnitKind::Vtd { aw: 48, caching_mode: false }, &[0x20_0000, 0x4000_0000]),
        unit(UnitKind::SmmuV3 { stage: 2, ias: 44, oas: 44 }, &[0x20_0000]),
        unit(UnitKind::SmmuV3 { stage: 1, ias: 48, oas: 44 }, &[]),
    ];
    let mut hv = Hv::new(units, Mem(VecTableMemory::new(Hpa(TABLE_BASE))), Ram::default());
    let budget = Shared::default();
    hv.set_heap_budget(Box::new(budget.clone()));
    let ram = |gpa: u64, len: u64, hpa: u64| RamRange { gpa: Gpa(gpa), len, hpa: Hpa(hpa) };
    let part = |name: &str, ram| PartitionConfig { name: name.into(), ram, pin_limit: 1 << 20, max_areas: 1 << 16 };
    hv.add_partition(part("p", vec![ram(0, 0x400_0000, 0x40_0000_0000), ram(0x1_0000_0000, 0x20_0000, 0x41_0000_0000)])).unwrap();
    hv.add_partition(part("q", vec![ram(0, 0x100_0000, 0x42_0000_0000)])).unwrap();
    let msi = Region { range: Range { start: 0xfee0_0000, last: 0xfeef_ffff }, kind: resv_type::MSI };
    let other = Region { range: Range { start: 0x800_0000, last: 0x80f_ffff }, kind: resv_type::RESERVED };
    let dev = |partition, unit, rid, dma_bits, regions| DeviceConfig { partition, unit, rid, dma_bits, regions };
    hv.add_device(dev(P, 0, 0x8, 39, vec![msi])).unwrap(); // P 1
    hv.add_device(dev(P, 1, 0x10, 64, vec![])).unwrap(); // P 2
    hv.add_device(dev(P, 2, 0x30, 64, vec![other])).unwrap(); // P 3
    hv.add_device(dev(Q, 0, 0x18, 64, vec![msi])).unwrap(); // Q 1
    hv.add_device(dev(Q, 1, 0x20, 32, vec![])).unwrap(); // Q 2
    assert_eq!(budget.0.lock().unwrap().charged, hv.heap_charged());
    Machine { hv, budget }
}

/// Write `cmd` into partition `p`'s RAM and call it through the decoder,
/// counting what the core allocates; read the struct back.
fn call<T: Command + IntoBytes + FromBytes + Immutable>(hv: &mut Hv, p: usize, mut cmd: T) -> (Result<(), Errno>, T) {
    let n = size_of::<T>() as u32;
    cmd.as_mut_bytes()[..4].copy_from_slice(&n.to_le_bytes());
    hv.write_guest(p, SCRATCH, cmd.as_bytes()).unwrap();
    TRACK.set(true);
    let out = hv.hypercall(p, u64::from(T::NR), SCRATCH);
    TRACK.set(false);
    let Outcome::Return(ret) = out else { panic!("exit") };
    let mut back = vec![0u8; size_of::<T>()];
    hv.read_guest(p, SCRATCH, &mut back).unwrap();
    let r = if ret == 0 { Ok(()) } else { Err(Errno::ALL.into_iter().find(|e| e.to_return() == ret).expect("an errno")) };
    (r, T::read_from_bytes(&back).unwrap())
}

/// Everything a failed command must leave as it was.
fn snapshot(hv: &Hv) -> String {
    let mut s = String::new();
    for p in 0..hv.partition_count() {
        let _ = writeln!(s, "{:?}", hv.partition(p));
    }
    let _ = writeln!(s, "{:?}", hv.devices());
    for u in hv.units() {
        for d in hv.devices() {
            let _ = write!(s, "{:?} ", u.0.context(d.rid));
        }
    }
    let mem = &hv.table_memory().0;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut live = Vec::new();
    for i in 0..mem.peak() as u64 {
        let page = TABLE_BASE + i * PAGE_SIZE;
        if mem.is_live(Hpa(page)) {
            live.push(i);
            for w in 0..512 {
                h = (h ^ mem.read_u64(page + w * 8).unwrap()).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let _ = write!(s, "\ntables {live:?} {h:#x} heap {}", hv.heap_charged());
    s
}

fn check(m: &Machine, what: &str) {
    check_hv(&m.hv, &m.budget, what);
}

fn check_hv(hv: &Hv, budget: &Shared, what: &str) {
    if let Err(e) = hv.check_invariants() {
        panic!("{what}: {e}");
    }
    assert_eq!(budget.0.lock().unwrap().charged, hv.heap_charged(), "{what}: the budget and the core agree");
    assert_eq!(OVER.get(), 0, "{what}: the core held {} bytes of heap beyond its charge", OVER.get());
}

/// One command of the list: a name and how to run it.
type Cmd = (&'static str, fn(&mut Hv) -> Result<(), Errno>);

fn map(hv: &mut Hv, p: usize, ioas: u32, gpa: u64, length: u64, iova: Option<u64>) -> Result<(), Errno> {
    let mut flags = map_flags::READABLE | map_flags::WRITEABLE;
    if iova.is_some() {
        flags |= map_flags::FIXED_IOVA;
    }
    call(hv, p, IoasMap { flags, ioas_id: ioas, gpa, length, iova: iova.unwrap_or(0), ..Default::default() }).0
}

/// Every command, in an order where each succeeds without injection. P:
/// devices 1..=3, IOASes 4 and 5; Q: devices 1 and 2, IOAS 3.
const COMMANDS: &[Cmd] = &[
    ("ioas_alloc", |hv| call(hv, P, IoasAlloc::default()).0),
    ("ioas_alloc", |hv| call(hv, P, IoasAlloc::default()).0),
    ("ioas_alloc q", |hv| call(hv, Q, IoasAlloc::default()).0),
    ("map fixed", |hv| map(hv, P, 4, 0x20_0000, 0x40_0000, Some(0x4000_0000))),
    ("map auto", |hv| map(hv, P, 4, 0x1000, 0x3000, None)),
    ("map auto 2", |hv| map(hv, P, 4, 0x1_0000_0000, 0x10_0000, None)),
    ("attach new hwpt (vtd)", |hv| call(hv, P, DeviceAttach { dev_id: 1, pt_id: 4, ..Default::default() }).0),
    ("attach new hwpt (smmu s2)", |hv| call(hv, P, DeviceAttach { dev_id: 2, pt_id: 4, ..Default::default() }).0),
    ("map with two hwpts", |hv| map(hv, P, 4, 0x80_0000, 0x2000, Some(0x7f_0000_1000))),
    ("copy", |hv| {
        let c = IoasCopy { flags: map_flags::READABLE, dst_ioas_id: 5, src_ioas_id: 4, length: 0x2000, src_iova: 0x4000_1000, ..Default::default() };
        call(hv, P, c).0
    }),
    ("copy into the same ioas", |hv| {
        let flags = map_flags::READABLE | map_flags::FIXED_IOVA;
        let c =
            IoasCopy { flags, dst_ioas_id: 4, src_ioas_id: 4, length: 0x3000, src_iova: 0x4000_2000, dst_iova: 0x7000_0000, ..Default::default() };
        call(hv, P, c).0
    }),
    ("allow_iovas", |hv| {
        let list = [IovaRange { start: 0x1000_0000, last: 0x1fff_ffff }, IovaRange { start: 0x4000_0000, last: 0x7fff_ffff }];
        hv.write_guest(P, ARRAY, list.as_bytes()).unwrap();
        call(hv, P, IoasAllowIovas { ioas_id: 5, num_iovas: 2, allowed_iovas: ARRAY, ..Default::default() }).0
    }),
    ("attach new hwpt (smmu s1)", |hv| call(hv, P, DeviceAttach { dev_id: 3, pt_id: 5, ..Default::default() }).0),
    ("attach: replace", |hv| call(hv, P, DeviceAttach { dev_id: 3, pt_id: 4, ..Default::default() }).0),
    ("huge pages off", |hv| {
        call(hv, Q, OptionCmd { option_id: option::HUGE_PAGES, op: option::OP_SET, object_id: 3, val64: 0, ..Default::default() }).0
    }),
    ("map q", |hv| map(hv, Q, 3, 0x20_0000, 0x20_0000, None)),
    ("attach q", |hv| call(hv, Q, DeviceAttach { dev_id: 2, pt_id: 3, ..Default::default() }).0),
    ("iova_ranges", |hv| call(hv, P, IoasIovaRanges { ioas_id: 4, num_iovas: 16, allowed_iovas: ARRAY, ..Default::default() }).0),
    ("device_list", |hv| call(hv, P, DeviceList { num_devices: 8, devices: ARRAY, ..Default::default() }).0),
    ("resv_iova_ranges", |hv| call(hv, P, DeviceResvIovaRanges { dev_id: 1, num_iovas: 8, resv_iovas: ARRAY, ..Default::default() }).0),
    ("get_hw_info", |hv| call(hv, P, GetHwInfo { dev_id: 2, data_len: 64, data_gpa: ARRAY, ..Default::default() }).0),
    ("fault_read", |hv| {
        // A blocked device faults; the partition reads it.
        {
            let m = hv.machine();
            assert!(m.units[0].0.dma(0x18, 0x1000, 4, true, &m.mem.0).is_err());
        }
        let (r, c) = call(hv, Q, FaultRead { num_faults: 4, faults: ARRAY, ..Default::default() });
        assert!(r.is_err() || c.num_faults == 1);
        r
    }),
    ("console_write", |hv| {
        hv.write_guest(P, ARRAY, &[b'x'; 3000]).unwrap();
        call(hv, P, ConsoleWrite { len: 3000, buf: ARRAY, ..Default::default() }).0
    }),
    ("unmap partial", |hv| match call(hv, P, IoasUnmap { ioas_id: 4, iova: 0x4000_0000, length: 0x1000, ..Default::default() }).0 {
        Err(Errno::ENOENT) => Ok(()),
        other => panic!("{other:?}"),
    }),
    ("unmap one", |hv| call(hv, P, IoasUnmap { ioas_id: 4, iova: 0x7000_0000, length: 0x3000, ..Default::default() }).0),
    ("detach (hwpt stays)", |hv| call(hv, P, DeviceDetach { dev_id: 3, ..Default::default() }).0),
    ("detach (hwpt goes)", |hv| call(hv, P, DeviceDetach { dev_id: 2, ..Default::default() }).0),
    ("unmap all", |hv| call(hv, P, IoasUnmap { ioas_id: 4, iova: 0, length: u64::MAX, ..Default::default() }).0),
    ("destroy ioas with areas", |hv| call(hv, P, Destroy { id: 5, ..Default::default() }).0),
    ("detach last", |hv| call(hv, P, DeviceDetach { dev_id: 1, ..Default::default() }).0),
    ("destroy ioas", |hv| call(hv, P, Destroy { id: 4, ..Default::default() }).0),
    ("detach q", |hv| call(hv, Q, DeviceDetach { dev_id: 2, ..Default::default() }).0),
    ("destroy q", |hv| call(hv, Q, Destroy { id: 3, ..Default::default() }).0),
];

/// Run `cmd` with the N-th allocation of the kind `arm` sets up failing,
/// N = 0, 1, ... until it succeeds; returns how many failed.
fn fail_each(m: &mut Machine, (name, cmd): Cmd, arm: fn(&mut Machine, u64), disarm: fn(&mut Machine)) -> u64 {
    let mut n = 0;
    loop {
        let before = snapshot(&m.hv);
        arm(m, n);
        let r = cmd(&mut m.hv);
        disarm(m);
        check(m, name);
        if r.is_ok() {
            return n;
        }
        assert_eq!(r, Err(Errno::ENOMEM), "{name}: allocation {n}");
        assert_eq!(snapshot(&m.hv), before, "{name} failing at allocation {n} changed state");
        n += 1;
        assert!(n < 10_000, "{name} never succeeds");
    }
}

#[test]
fn every_command_is_atomic_at_every_table_allocation_failure() {
    let mut m = machine();
    let mut failed = Vec::new();
    for &c in COMMANDS {
        let n = fail_each(
            &mut m,
            c,
            |m, n| {
                let at = m.hv.table_memory().0.allocations() + n;
                m.hv.table_memory_mut().0.fail_from(Some(at));
            },
            |m| m.hv.table_memory_mut().0.fail_from(None),
        );
        failed.push((c.0, n));
    }
    // The commands that make tables did fail, at every allocation.
    let of = |name| failed.iter().find(|(n, _)| *n == name).unwrap().1;
    assert!(of("attach new hwpt (vtd)") >= 3, "{failed:?}");
    assert!(of("attach new hwpt (smmu s2)") >= 3, "{failed:?}");
    assert!(of("map with two hwpts") >= 4, "{failed:?}");
    assert!(of("copy into the same ioas") >= 2, "{failed:?}");
    assert_eq!(of("unmap all"), 0);
    assert_eq!(m.hv.table_memory().0.in_use(), 0, "everything was given back");
}

#[test]
fn every_command_is_atomic_at_every_heap_charge_refused() {
    let mut m = machine();
    let mut failed = Vec::new();
    for &c in COMMANDS {
        let n = fail_each(
            &mut m,
            c,
            |m, n| {
                let mut b = m.budget.0.lock().unwrap();
                b.fail_at = Some(b.calls + n);
            },
            |m| m.budget.0.lock().unwrap().fail_at = None,
        );
        failed.push((c.0, n));
    }
    let of = |name| failed.iter().find(|(n, _)| *n == name).unwrap().1;
    // Everything that makes the state grow asks first.
    for name in ["ioas_alloc", "map fixed", "map auto", "attach new hwpt (vtd)", "copy", "allow_iovas", "attach: replace"] {
        assert!(of(name) >= 1, "{name}: {failed:?}");
    }
    // Reading, and giving back, never needs more heap.
    for name in ["iova_ranges", "device_list", "resv_iova_ranges", "fault_read", "console_write", "unmap one", "unmap all", "detach (hwpt goes)"] {
        assert_eq!(of(name), 0, "{name}: {failed:?}");
    }
    assert_eq!(m.hv.table_memory().0.in_use(), 0);
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The heap the core holds never exceeds what it charged, through
/// thousands of areas, pin covers, allowed lists, attach and detach, and
/// teardown; and everything charged is given back.
#[test]
fn the_core_never_holds_more_heap_than_it_charged() {
    let mut m = machine();
    // The console's worst case is charged but never used here: the check
    // does not count it.
    ALLOWANCE.set((2 * (2 * heap::block(CONSOLE_BUFFER))) as isize);
    let start = m.hv.heap_charged();
    let Machine { hv, budget } = &mut m;
    let _ = &budget;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ioas = Vec::new();
    for _ in 0..6 {
        let (r, c) = call(hv, P, IoasAlloc::default());
        r.unwrap();
        ioas.push(c.out_ioas_id);
    }
    call(hv, P, DeviceAttach { dev_id: 1, pt_id: ioas[0], ..Default::default() }).0.unwrap();
    call(hv, P, DeviceAttach { dev_id: 2, pt_id: ioas[1], ..Default::default() }).0.unwrap();
    for round in 0..3 {
        // Many small areas, in random order over a few IOASes.
        for i in 0..1500u64 {
            let id = ioas[rng.below(4) as usize];
            let gpa = rng.below(0x3000) * PAGE_SIZE;
            let r = map(hv, P, id, gpa, PAGE_SIZE * (1 + rng.below(3)), if i % 3 == 0 { Some((1 + rng.below(1 << 20)) << 16) } else { None });
            assert!(matches!(r, Ok(()) | Err(Errno::EEXIST | Errno::EFAULT)), "{r:?}");
        }
        // Copies of pieces of areas: pin covers with many breakpoints.
        for _ in 0..600 {
            let (src, dst) = (ioas[rng.below(4) as usize], ioas[rng.below(6) as usize]);
            let src_iova = (1 + rng.below(1 << 20)) << 16;
            let (r, _) = call(
                hv,
                P,
                IoasCopy { flags: map_flags::READABLE, dst_ioas_id: dst, src_ioas_id: src, length: PAGE_SIZE, src_iova, ..Default::default() },
            );
            assert!(matches!(r, Ok(()) | Err(Errno::ENOENT)), "{r:?}");
        }
        // Areas found through IOVA_RANGES-independent lookups: copy from
        // the first area of each IOAS, repeatedly.
        for &id in &ioas[..4] {
            let first = m_first_area(hv, id);
            for k in 0..40 {
                let dst = ioas[4 + (k % 2)];
                let c = IoasCopy {
                    flags: map_flags::READABLE,
                    dst_ioas_id: dst,
                    src_ioas_id: id,
                    length: PAGE_SIZE,
                    src_iova: first,
                    ..Default::default()
                };
                let (r, _) = call(hv, P, c);
                assert!(matches!(r, Ok(()) | Err(Errno::ENOENT)), "{r:?}");
            }
        }
        // A long allowed list, replaced.
        let list: Vec<IovaRange> = (0..4000u64).map(|i| IovaRange { start: (0x100 + i) << 32, last: ((0x100 + i) << 32) + 0xfff_ffff }).collect();
        hv.write_guest(P, ARRAY, list.as_bytes()).unwrap();
        call(hv, P, IoasAllowIovas { ioas_id: ioas[3], num_iovas: 4000, allowed_iovas: ARRAY, ..Default::default() }).0.unwrap();
        // Attach and detach cycles on every unit.
        for k in 0..20u32 {
            let (r, _) = call(hv, P, DeviceAttach { dev_id: 1 + k % 3, pt_id: ioas[(k % 5) as usize], ..Default::default() });
            assert!(matches!(r, Ok(()) | Err(Errno::EADDRINUSE)), "{r:?}");
            if k % 4 == 3 {
                call(hv, P, DeviceDetach { dev_id: 1 + k % 3, ..Default::default() }).0.unwrap();
            }
        }
        // Give back in pieces: random unmaps, then everything of some.
        for _ in 0..800 {
            let id = ioas[rng.below(6) as usize];
            let iova = (1 + rng.below(1 << 20)) << 16;
            let _ = call(hv, P, IoasUnmap { ioas_id: id, iova, length: 1 << 20, ..Default::default() });
        }
        call(hv, P, IoasUnmap { ioas_id: ioas[(round * 2) % 6], iova: 0, length: u64::MAX, ..Default::default() }).0.unwrap();
        check_hv(hv, budget, &format!("round {round}"));
        if std::env::var_os("HEAP_STATS").is_some() {
            let areas: usize = ioas.iter().map(|i| hv.partition(P).ioas(*i).map_or(0, |x| x.area_count())).sum();
            eprintln!("round {round}: {areas} areas, live {} charged {} allocations {}", LIVE.get(), CHARGED.get(), ALLOCATIONS.get());
        }
    }
    // Teardown.
    for d in 1..=3 {
        call(hv, P, DeviceDetach { dev_id: d, ..Default::default() }).0.unwrap();
    }
    for &id in &ioas {
        call(hv, P, Destroy { id, ..Default::default() }).0.unwrap();
    }
    let allocations = ALLOCATIONS.get();
    assert!(allocations > 1000, "the workload allocated ({allocations})");
    assert_eq!(OVER.get(), 0, "the core held {} bytes beyond its charge", OVER.get());
    assert_eq!(hv.heap_charged(), start, "everything charged was given back");
    assert_eq!(budget.0.lock().unwrap().charged, start);
    // What stays is the roots of emptied B-trees (charged as such).
    assert!(LIVE.get() <= 8192, "what the hypercalls allocated was freed ({} bytes left)", LIVE.get());
}

/// The first area of IOAS `id` of P (through the public state).
fn m_first_area(hv: &Hv, id: u32) -> u64 {
    hv.partition(P).ioas(id).and_then(|i| i.areas().next()).map_or(0x1000, |(s, _)| s)
}

/// Runs `f` counting its allocations; returns what it returns.
fn counted<R>(f: impl FnOnce() -> R) -> R {
    let was = TRACK.replace(true);
    let r = f();
    TRACK.set(was);
    r
}

/// The bound everything rests on: a std `BTreeMap<K, V>` of `n` entries
/// never occupies more than `heap::btree::<K, V>(n)`, whatever order the
/// entries came and went in (ascending inserts leave the emptiest nodes).
fn btree_bound_holds<K: Ord + Copy + TryFrom<u64>, V: Default>()
where
    <K as TryFrom<u64>>::Error: std::fmt::Debug,
{
    let key = |x: u64| K::try_from(x).unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let orders: [Vec<u64>; 3] = [(0..3000).collect(), (0..3000).rev().collect(), (0..3000).map(|_| rng.below(1 << 30)).collect()];
    for order in &orders {
        LIVE.set(0);
        let mut map: std::collections::BTreeMap<K, V> = std::collections::BTreeMap::new();
        let mut worst = 0isize;
        for &x in order {
            counted(|| map.insert(key(x), V::default()));
            worst = worst.max(LIVE.get() - heap::btree::<K, V>(map.len()) as isize);
        }
        // Removing: from the front, from the back, or every other one.
        let keys: Vec<K> = map.keys().copied().collect();
        for (i, k) in keys.iter().enumerate() {
            if i % 2 == 0 {
                counted(|| map.remove(k));
                worst = worst.max(LIVE.get() - heap::btree::<K, V>(map.len()) as isize);
            }
        }
        for k in keys.iter().rev() {
            counted(|| map.remove(k));
            worst = worst.max(LIVE.get() - heap::btree::<K, V>(map.len()) as isize);
        }
        assert!(worst <= 0, "BTreeMap<{}, {}>: {worst} bytes over the bound", std::any::type_name::<K>(), std::any::type_name::<V>());
        counted(|| drop(map));
    }
}

#[test]
fn btree_and_vec_bounds_hold() {
    btree_bound_holds::<u64, u64>();
    btree_bound_holds::<u64, [u64; 3]>();
    btree_bound_holds::<u32, ()>();
    btree_bound_holds::<u32, [u64; 25]>();
    btree_bound_holds::<u64, u32>();
    // A Vec pushed one by one holds the block of its capacity, which grows
    // as `heap::grown` says.
    LIVE.set(0);
    let mut v: Vec<[u64; 8]> = Vec::new();
    for _ in 0..5000 {
        let cap = v.capacity();
        let before = LIVE.get();
        counted(|| v.push([0; 8]));
        if v.capacity() != cap {
            assert_eq!(v.capacity(), heap::grown(cap));
            assert!(LIVE.get() - before <= heap::vec::<[u64; 8]>(v.capacity()) as isize - heap::vec::<[u64; 8]>(cap) as isize);
        }
        assert!(LIVE.get() <= heap::vec::<[u64; 8]>(v.capacity()) as isize);
    }
    counted(|| drop(v));
}
