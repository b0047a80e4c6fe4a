//! A RAM-backed VT-d register block that behaves like a unit while the
//! driver waits: GCMD is echoed into GSTS, the invalidation queue is
//! consumed (wait descriptors write their status), CCMD/IOTLB register
//! invalidations complete. It also plays a DMA master: requests walk the
//! root, context and second-level tables the driver and the engine wrote,
//! through a context cache and an IOTLB that only invalidations clear, and
//! faults land in the fault recording registers.
#![allow(dead_code, clippy::cast_possible_truncation)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use sluice_kernel::Hpa;
use sluice_kernel::hwwalk::{PhysRead, vtd};
use sluice_kernel::pt::{Table, TableMemory};
use sluice_kernel::time::Clock;

pub const IRO: usize = 0xF0;
pub const FRO: usize = 0x220;

/// Table pages whose host-physical address is their host address, as on
/// the identity-mapped hypervisor.
#[derive(Clone, Default)]
pub struct HostPages(Rc<RefCell<BTreeSet<u64>>>);

impl HostPages {
    pub fn live(&self) -> usize {
        self.0.borrow().len()
    }
}

fn page_layout() -> Layout {
    Layout::from_size_align(4096, 4096).unwrap()
}

impl TableMemory for HostPages {
    fn alloc_table(&mut self) -> Option<Hpa> {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(page_layout()) };
        assert!(!p.is_null());
        self.0.borrow_mut().insert(p as u64);
        Some(Hpa(p as u64))
    }
    fn free_table(&mut self, table: Hpa) {
        assert!(self.0.borrow_mut().remove(&table.raw()), "free of a page not handed out");
        // SAFETY: the page came from `alloc_zeroed` with this layout and is
        // no longer referenced (the engine hands back unlinked tables only).
        unsafe { dealloc(table.raw() as *mut u8, page_layout()) };
    }
    fn table(&self, table: Hpa) -> &Table {
        assert!(self.0.borrow().contains(&table.raw()), "{table:?} is not a live table page");
        // SAFETY: a live, 4 KiB-aligned page from `alloc_table`; atomics
        // make shared access sound.
        unsafe { &*(table.raw() as *const Table) }
    }
}

/// Reads "physical" memory: table pages are host memory at their address.
pub struct Phys;
impl PhysRead for Phys {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        if pa == 0 || pa % 8 != 0 {
            return None;
        }
        // SAFETY: tests only walk tables of live `HostPages` pages, whose
        // addresses are host addresses.
        Some(unsafe { core::ptr::read_volatile(pa as *const u64) })
    }
}

#[repr(C, align(4096))]
struct Block([u64; 512]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Gcmd(u32),
    Desc(u64, u64),
    Ccmd(u64),
    Iotlb { iva: u64, reg: u64 },
}

pub struct Hw {
    block: Box<Block>,
    pub events: RefCell<Vec<Event>>,
    /// Stop answering (every wait then times out).
    pub stall: Cell<bool>,
    /// Reject the next descriptor with an invalidation queue error.
    pub reject_next: Cell<bool>,
    /// Cached context entries by source id, and IOTLB entries by
    /// (domain, page): both survive until invalidated.
    context_cache: RefCell<BTreeMap<u16, (u64, u64)>>,
    iotlb: RefCell<BTreeMap<(u16, u64), (u64, bool, bool)>>,
    pub haw: u8,
    last_gcmd: Cell<u32>,
    /// What FSTS and the fault records' high words hold in the unit; the
    /// RAM copies are what the driver last wrote (write-1-to-clear).
    fsts: Cell<u32>,
    frcd_hi: RefCell<Vec<u64>>,
}

const MARK: u32 = 1 << 31;
const TE: u32 = 1 << 31;
const SRTP: u32 = 1 << 30;
const WBF: u32 = 1 << 27;
const QIE: u32 = 1 << 26;
const PERSISTENT: u32 = TE | QIE | (1 << 25) | (1 << 23);

impl Hw {
    pub fn new(cap: u64, ecap: u64) -> Rc<Self> {
        let hw = Self {
            block: Box::new(Block([0; 512])),
            events: RefCell::new(Vec::new()),
            stall: Cell::new(false),
            reject_next: Cell::new(false),
            context_cache: RefCell::new(BTreeMap::new()),
            iotlb: RefCell::new(BTreeMap::new()),
            haw: 48,
            last_gcmd: Cell::new(0),
            fsts: Cell::new(0),
            frcd_hi: RefCell::new(vec![0; (((cap >> 40) & 0xff) + 1) as usize]),
        };
        hw.w64(0x08, cap);
        hw.w64(0x10, ecap);
        hw.w32(0x00, 0x10);
        Rc::new(hw)
    }

    /// QEMU 10's intel-iommu capabilities (aw-bits=48), with `nfr` fault
    /// records, caching mode and queued invalidation as asked.
    pub fn qemu_like(nfr: u64, cm: bool, qi: bool) -> Rc<Self> {
        let cap = 6 | (u64::from(cm) << 7) | (0b110 << 8) | (47 << 16) | ((FRO as u64 / 16) << 24) | (0b11 << 34) | (1 << 39) | ((nfr - 1) << 40) | (18 << 48) | (3 << 54);
        let ecap = (u64::from(qi) << 1) | (1 << 3) | (1 << 6) | ((IRO as u64 / 16) << 8);
        Self::new(cap, ecap)
    }

    pub fn base(&self) -> usize {
        self.block.0.as_ptr() as usize
    }

    fn ptr(&self, off: usize) -> *mut u8 {
        (self.base() + off) as *mut u8
    }
    pub fn r32(&self, off: usize) -> u32 {
        // SAFETY: `off` is inside the 4 KiB block, 4-byte aligned.
        unsafe { core::ptr::read_volatile(self.ptr(off).cast::<u32>()) }
    }
    pub fn w32(&self, off: usize, v: u32) {
        // SAFETY: as in `r32`.
        unsafe { core::ptr::write_volatile(self.ptr(off).cast::<u32>(), v) }
    }
    pub fn r64(&self, off: usize) -> u64 {
        // SAFETY: `off` is inside the block, 8-byte aligned.
        unsafe { core::ptr::read_volatile(self.ptr(off).cast::<u64>()) }
    }
    pub fn w64(&self, off: usize, v: u64) {
        // SAFETY: as in `r64`.
        unsafe { core::ptr::write_volatile(self.ptr(off).cast::<u64>(), v) }
    }

    pub fn gsts(&self) -> u32 {
        self.r32(0x1C)
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.borrow().clone()
    }

    pub fn clear_events(&self) {
        self.events.borrow_mut().clear();
    }

    /// Descriptors seen, without wait descriptors.
    pub fn invalidations(&self) -> Vec<(u64, u64)> {
        self.events
            .borrow()
            .iter()
            .filter_map(|e| match *e {
                Event::Desc(lo, hi) if lo & 0xf != 5 => Some((lo, hi)),
                _ => None,
            })
            .collect()
    }

    /// One step of the unit: what hardware does between two register
    /// accesses of the driver.
    pub fn step(&self) {
        if self.stall.get() {
            return;
        }
        self.settle();
        let cmd = self.r32(0x18);
        if cmd != self.last_gcmd.get() {
            self.events.borrow_mut().push(Event::Gcmd(cmd));
            self.last_gcmd.set(cmd);
        }
        let mut sts = cmd & PERSISTENT;
        if cmd & SRTP != 0 {
            sts |= SRTP;
        }
        // WBF completes at once (WBFS stays clear).
        let _ = WBF;
        self.w32(0x1C, sts);
        let ccmd = self.r64(0x28);
        if ccmd >> 63 != 0 {
            self.events.borrow_mut().push(Event::Ccmd(ccmd));
            self.apply_context(((ccmd >> 61) & 3, ccmd as u16, (ccmd >> 16) as u16));
            self.w64(0x28, ccmd & !(1 << 63));
        }
        let reg = self.r64(IRO + 8);
        if reg >> 63 != 0 {
            let iva = self.r64(IRO);
            self.events.borrow_mut().push(Event::Iotlb { iva, reg });
            self.apply_iotlb((reg >> 60) & 3, (reg >> 32) as u16, iva & !0xfff, iva & 0x3f);
            self.w64(IRO + 8, reg & !(1 << 63));
        }
        if sts & QIE != 0 && self.fsts.get() & (1 << 4) == 0 {
            self.consume_queue();
        }
    }

    fn consume_queue(&self) {
        let base = self.r64(0x90) & !0xfff;
        let mut head = (self.r64(0x80) >> 4) as usize % 256;
        let tail = (self.r64(0x88) >> 4) as usize % 256;
        while head != tail {
            let pa = base + 16 * head as u64;
            let lo = Phys.read_u64(pa).unwrap();
            let hi = Phys.read_u64(pa + 8).unwrap();
            let bad = self.reject_next.replace(false)
                || match lo & 0xf {
                    1 => lo & 0xfffc_0000_0000_ffc0 != 0 || hi != 0,
                    2 => lo & 0xffff_ffff_0000_ff00 != 0 || hi & 0xf80 != 0,
                    5 => lo & 0xffff_ff80 & !0x70 != 0 || hi & 3 != 0,
                    _ => true,
                };
            if bad {
                self.set_fsts(self.fsts.get() | (1 << 4));
                break;
            }
            self.events.borrow_mut().push(Event::Desc(lo, hi));
            match lo & 0xf {
                1 => self.apply_context(((lo >> 4) & 3, (lo >> 16) as u16, (lo >> 32) as u16)),
                2 => self.apply_iotlb((lo >> 4) & 3, (lo >> 16) as u16, hi & !0xfff, hi & 0x3f),
                5 => {
                    if lo & (1 << 5) != 0 {
                        // SAFETY: the status address is a live table page of
                        // the driver's memory (host address), 4-byte aligned.
                        unsafe { core::ptr::write_volatile(hi as *mut u32, (lo >> 32) as u32) };
                    }
                }
                _ => unreachable!(),
            }
            head = (head + 1) % 256;
        }
        self.w64(0x80, (head as u64) << 4);
    }

    fn apply_context(&self, (g, did, sid): (u64, u16, u16)) {
        let mut cc = self.context_cache.borrow_mut();
        match g {
            1 => cc.clear(),
            2 => cc.retain(|_, e| ((e.1 >> 8) & 0xffff) as u16 != did),
            3 => {
                cc.remove(&sid);
            }
            _ => panic!("context invalidation with granularity 0"),
        }
    }

    fn apply_iotlb(&self, g: u64, did: u16, addr: u64, am: u64) {
        let mut tlb = self.iotlb.borrow_mut();
        match g {
            1 => tlb.clear(),
            2 => tlb.retain(|k, _| k.0 != did),
            3 => {
                let first = addr >> 12;
                let last = first + (1 << am) - 1;
                assert_eq!(first % (1 << am), 0, "page-selective address not aligned to its mask");
                tlb.retain(|k, _| k.0 != did || !(first..=last).contains(&k.1));
            }
            _ => panic!("IOTLB invalidation with granularity 0"),
        }
    }

    /// A DMA from requester `sid` to `iova`. `Ok(pa)` or the VT-d fault
    /// reason, which is also recorded in the fault registers.
    pub fn dma(&self, sid: u16, iova: u64, write: bool) -> Result<u64, u8> {
        let r = self.translate(sid, iova, write);
        if let Err(reason) = r {
            self.record(sid, iova, reason, !write);
        }
        r
    }

    fn translate(&self, sid: u16, iova: u64, write: bool) -> Result<u64, u8> {
        if self.gsts() & TE == 0 {
            return Ok(iova);
        }
        let cached = self.context_cache.borrow().get(&sid).copied();
        let ctx = match cached {
            Some(c) => c,
            None => {
                let root = self.r64(0x20) & !0xfff;
                let re = Phys.read_u64(root + 16 * u64::from(sid >> 8)).unwrap();
                if re & 1 == 0 {
                    return Err(1);
                }
                assert_eq!(re & 0xffe, 0, "root entry reserved bits");
                let ct = re & !0xfff;
                let lo = Phys.read_u64(ct + 16 * u64::from(sid & 0xff)).unwrap();
                let hi = Phys.read_u64(ct + 16 * u64::from(sid & 0xff) + 8).unwrap();
                if lo & 1 == 0 {
                    return Err(2);
                }
                if lo & 0xff0 != 0 || hi & 0xffff_ffff_ff00_0080 != 0 {
                    return Err(0xc);
                }
                self.context_cache.borrow_mut().insert(sid, (lo, hi));
                (lo, hi)
            }
        };
        let did = ((ctx.1 >> 8) & 0xffff) as u16;
        let page = iova >> 12;
        let hit = self.iotlb.borrow().get(&(did, page)).copied();
        let (pa, r, w) = match hit {
            Some(e) => e,
            None => {
                let cfg = vtd::VtdConfig { aw: (ctx.1 & 7) as u8, haw: self.haw, sllps: 3, snoop: false };
                match vtd::translate(&cfg, ctx.0 & !0xfff, iova, &Phys) {
                    Ok(walk) => {
                        let e = (walk.pa & !0xfff, walk.read, walk.write);
                        self.iotlb.borrow_mut().insert((did, page), e);
                        e
                    }
                    Err(vtd_fault) => {
                        let _ = vtd_fault;
                        return Err(if write { 5 } else { 6 });
                    }
                }
            }
        };
        if (write && !w) || (!write && !r) {
            return Err(if write { 5 } else { 6 });
        }
        Ok(pa | (iova & 0xfff))
    }

    /// Record a fault the way VT-d does: in the record FRI points at,
    /// moving round-robin; overflow (PFO) when it is still full.
    pub fn record(&self, sid: u16, iova: u64, reason: u8, read: bool) {
        self.settle();
        let nfr = self.frcd_hi.borrow().len();
        let fsts = self.fsts.get();
        let fri = ((fsts >> 8) & 0xff) as usize % nfr;
        if self.frcd_hi.borrow()[fri] >> 63 != 0 {
            self.set_fsts(fsts | 1);
            return;
        }
        let hi = (1 << 63) | (u64::from(read) << 62) | (u64::from(reason) << 32) | u64::from(sid);
        self.w64(FRO + 16 * fri, iova & !0xfff);
        self.frcd_hi.borrow_mut()[fri] = hi;
        self.w64(FRO + 16 * fri + 8, hi);
        let next = (fri + 1) % nfr;
        self.set_fsts((fsts & !0xff00) | ((next as u32) << 8));
    }

    fn set_fsts(&self, v: u32) {
        let ppf = self.frcd_hi.borrow().iter().any(|h| h >> 63 != 0);
        let v = (v & !2) | (u32::from(ppf) << 1);
        self.fsts.set(v);
        // Bit 31 is reserved in FSTS: the driver never writes it, so its
        // presence says "unchanged since the unit wrote it".
        self.w32(0x34, v | MARK);
    }

    /// Apply what the driver wrote to the write-1-to-clear bits since the
    /// last step (FSTS.PFO/IQE/ICE/ITE, the records' F bits).
    pub fn settle(&self) {
        let nfr = self.frcd_hi.borrow().len();
        for i in 0..nfr {
            let off = FRO + 16 * i + 8;
            let written = self.r64(off);
            let mut his = self.frcd_hi.borrow_mut();
            if written != his[i] {
                if written >> 63 != 0 {
                    his[i] &= !(1 << 63);
                }
                let v = his[i];
                drop(his);
                self.w64(off, v);
            }
        }
        let written = self.r32(0x34);
        let mut v = self.fsts.get();
        if written & MARK == 0 {
            v &= !(written & 0x71);
        }
        self.set_fsts(v);
    }

    pub fn fault_status(&self) -> u32 {
        self.fsts.get()
    }

    pub fn iotlb_len(&self) -> usize {
        self.iotlb.borrow().len()
    }
}

/// A clock whose every busy-wait iteration advances time by 1 µs and lets
/// the unit take one step.
#[derive(Clone)]
pub struct FakeClock {
    pub now: Rc<Cell<u64>>,
    pub hw: Vec<Rc<Hw>>,
}

impl Clock for FakeClock {
    fn now_us(&self) -> u64 {
        self.now.get()
    }
    fn relax(&self) {
        self.now.set(self.now.get() + 1);
        for hw in &self.hw {
            hw.step();
        }
    }
}

pub fn clock(hw: &[&Rc<Hw>]) -> FakeClock {
    FakeClock { now: Rc::new(Cell::new(0)), hw: hw.iter().map(|h| Rc::clone(h)).collect() }
}
