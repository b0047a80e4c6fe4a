//! A RAM-backed SMMUv3 register block that behaves like an SMMU while the
//! driver waits: CR0 is echoed into CR0ACK, GBPA updates complete, the
//! command queue is consumed (commands are checked the way QEMU's
//! `smmuv3_cmdq_consume` does, and can be rejected with CMDQ_ERR or left
//! unanswered). It also plays a DMA master: requests look up the STE (and
//! CD) the driver wrote in its linear or 2-level stream table, checked as
//! QEMU's `decode_ste`/`decode_ste_s2_cfg`/`decode_cd` do, walk the core's
//! tables with `hwwalk::vmsa`, through configuration caches and a TLB keyed
//! by VMID/ASID that only commands clear, and faults become event records
//! in the event queue (with PROD wrap and OVFLG on overflow).
#![allow(dead_code, clippy::cast_possible_truncation)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use sluice_kernel::Hpa;
use sluice_kernel::hwwalk::vmsa::{Stage, VmsaConfig, translate};
use sluice_kernel::hwwalk::{PhysRead, WalkFault};
use sluice_kernel::pt::{Table, TableMemory};
use sluice_kernel::time::Clock;

/// "Physical" memory for tests: an arena of 4 KiB pages whose
/// host-physical addresses start at [`HPA_BASE`], so they fit the 44-bit
/// output size of QEMU's SMMU (host heap addresses do not).
#[derive(Clone)]
pub struct HostPages(Rc<RefCell<Arena>>);

/// Host-physical address of the arena's first page.
pub const HPA_BASE: u64 = 0x8_0000_0000;
const ARENA_PAGES: usize = 4096;

pub struct Arena {
    host: *mut u8,
    next: usize,
    free: Vec<u64>,
    live: BTreeSet<u64>,
}

fn arena_layout() -> Layout {
    Layout::from_size_align(ARENA_PAGES * 4096, 4096).unwrap()
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `host` came from `alloc_zeroed` with this layout.
        unsafe { dealloc(self.host, arena_layout()) };
    }
}

impl Default for HostPages {
    fn default() -> Self {
        // SAFETY: the layout has a non-zero size.
        let host = unsafe { alloc_zeroed(arena_layout()) };
        assert!(!host.is_null());
        Self(Rc::new(RefCell::new(Arena { host, next: 0, free: Vec::new(), live: BTreeSet::new() })))
    }
}

impl HostPages {
    pub fn live(&self) -> usize {
        self.0.borrow().live.len()
    }

    /// The host address of physical address `pa`, if it is in the arena.
    fn host(&self, pa: u64) -> Option<*mut u64> {
        let off = pa.checked_sub(HPA_BASE)?;
        if off >= (ARENA_PAGES * 4096) as u64 || pa % 8 != 0 {
            return None;
        }
        // In bounds of the arena allocation (checked above).
        Some(self.0.borrow().host.wrapping_add(off as usize).cast::<u64>())
    }

    /// A DMA write of one word.
    pub fn write(&self, pa: u64, v: u64) {
        let p = self.host(pa).expect("DMA write outside memory");
        // SAFETY: `p` is an aligned word inside the live arena.
        unsafe { core::ptr::write_volatile(p, v) };
    }
}

impl TableMemory for HostPages {
    fn alloc_table(&mut self) -> Option<Hpa> {
        let mut a = self.0.borrow_mut();
        let pa = match a.free.pop() {
            Some(pa) => pa,
            None => {
                assert!(a.next < ARENA_PAGES, "test arena exhausted");
                a.next += 1;
                HPA_BASE + 4096 * (a.next as u64 - 1)
            }
        };
        a.live.insert(pa);
        Some(Hpa(pa))
    }
    fn free_table(&mut self, table: Hpa) {
        let mut a = self.0.borrow_mut();
        assert!(a.live.remove(&table.raw()), "free of a page not handed out");
        let host = a.host.wrapping_add((table.raw() - HPA_BASE) as usize);
        // SAFETY: a whole page inside the arena, no longer referenced.
        unsafe { core::ptr::write_bytes(host, 0, 4096) };
        a.free.push(table.raw());
    }
    fn table(&self, table: Hpa) -> &Table {
        assert!(self.0.borrow().live.contains(&table.raw()), "{table:?} is not a live table page");
        let p = self.host(table.raw()).expect("table outside the arena");
        // SAFETY: a live, 4 KiB-aligned page of the arena, which lives as
        // long as `self`; atomics make shared access sound.
        unsafe { &*(p as *const Table) }
    }
}

/// What a DMA master reads: the arena.
impl PhysRead for HostPages {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        let p = self.host(pa)?;
        // SAFETY: an aligned word inside the live arena.
        Some(unsafe { core::ptr::read_volatile(p) })
    }
}

// Register offsets.
pub const IDR0: usize = 0x00;
pub const IIDR: usize = 0x18;
pub const AIDR: usize = 0x1C;
pub const CR0: usize = 0x20;
pub const CR0ACK: usize = 0x24;
pub const CR1: usize = 0x28;
pub const CR2: usize = 0x2C;
pub const GBPA: usize = 0x44;
pub const IRQ_CTRL: usize = 0x50;
pub const IRQ_CTRLACK: usize = 0x54;
pub const GERROR: usize = 0x60;
pub const GERRORN: usize = 0x64;
pub const STRTAB_BASE: usize = 0x80;
pub const STRTAB_BASE_CFG: usize = 0x88;
pub const CMDQ_BASE: usize = 0x90;
pub const CMDQ_PROD: usize = 0x98;
pub const CMDQ_CONS: usize = 0x9C;
pub const EVENTQ_BASE: usize = 0xA0;
pub const EVENTQ_PROD: usize = 0x1_00A8;
pub const EVENTQ_CONS: usize = 0x1_00AC;

pub const SMMUEN: u32 = 1;
pub const EVENTQEN: u32 = 1 << 2;
pub const CMDQEN: u32 = 1 << 3;
const GBPA_UPDATE: u32 = 1 << 31;
pub const GBPA_ABORT: u32 = 1 << 20;
const OVFLG: u32 = 1 << 31;
const CR0_RESERVED: u32 = 0xFFFF_FC20;

/// QEMU 10's arm-smmuv3 ID registers (`smmuv3_init_regs`) with `stage`
/// 1, 2 or 3 (= "nested": both).
pub fn qemu_idr(stage: u8) -> [u32; 6] {
    let s2p = u32::from(stage & 2 != 0);
    let s1p = u32::from(stage & 1 != 0);
    [
        s2p | (s1p << 1) | (2 << 2) | (1 << 4) | (1 << 12) | (1 << 18) | (2 << 21) | (1 << 24) | (1 << 26) | (1 << 27),
        16 | (19 << 16) | (19 << 21),
        0,
        (1 << 2) | (s2p << 4) | (1 << 10) | (2 << 11),
        0,
        4 | (1 << 4) | (1 << 5) | (1 << 6),
    ]
}

fn oas2bits(code: u64) -> u32 {
    match code {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        _ => 48,
    }
}

/// What the fake saw, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Log {
    Cr0(u32),
    Gbpa(u32),
    Cmd([u64; 2]),
}

/// Why a DMA did not reach memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Terminated without an event (abort STE, GBPA abort, faults with
    /// recording off).
    Abort,
    /// Terminated and recorded with this event type.
    Event(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    Vmid(u16),
    Asid(u16),
}

#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    pa: u64,
    shift: u32,
    read: bool,
    write: bool,
    /// Arm level of the leaf (3 = 4 KiB).
    level: u8,
}

#[derive(Clone, Copy, Debug)]
enum Cfg {
    Abort,
    S2 { vmid: u16, t0sz: u8, sl0: u8, oa: u8, ttb: u64, record: bool },
    S1 { asid: u16, t0sz: u8, oa: u8, ttb: u64, record: bool, mair: u64 },
}

#[repr(C, align(4096))]
struct Block([u64; 0x2200]);

pub struct Hw {
    block: Box<Block>,
    /// The memory the SMMU reads and writes.
    pub mem: HostPages,
    pub idr: [u32; 6],
    log: RefCell<Vec<Log>>,
    /// Stop answering (every wait then times out).
    pub stall: Cell<bool>,
    /// Reject the next command with this opcode (0xff: any) with
    /// CERROR_ILL.
    pub reject: Cell<Option<u8>>,
    last_cr0: Cell<u32>,
    gerror: Cell<u32>,
    cmdq_cons: Cell<u32>,
    eventq_prod: Cell<u32>,
    ste_cache: RefCell<BTreeMap<u32, [u64; 8]>>,
    cd_cache: RefCell<BTreeMap<u32, [u64; 8]>>,
    l1_cache: RefCell<BTreeMap<u32, u64>>,
    tlb: RefCell<BTreeMap<(Tag, u64), TlbEntry>>,
    /// STEs as last seen at a step: a translating STE must go through an
    /// invalid or abort one before it translates differently.
    seen: RefCell<BTreeMap<u32, [u64; 4]>>,
    /// Base registers when SMMUEN/CMDQEN/EVENTQEN went on (they must not
    /// change while enabled).
    frozen: Cell<Option<(u64, u32, u64, u64)>>,
}

impl Hw {
    pub fn new(idr: [u32; 6]) -> Rc<Self> {
        let hw = Self {
            block: Box::new(Block([0; 0x2200])),
            mem: HostPages::default(),
            idr,
            log: RefCell::new(Vec::new()),
            stall: Cell::new(false),
            reject: Cell::new(None),
            last_cr0: Cell::new(0),
            gerror: Cell::new(0),
            cmdq_cons: Cell::new(0),
            eventq_prod: Cell::new(0),
            ste_cache: RefCell::new(BTreeMap::new()),
            cd_cache: RefCell::new(BTreeMap::new()),
            l1_cache: RefCell::new(BTreeMap::new()),
            tlb: RefCell::new(BTreeMap::new()),
            seen: RefCell::new(BTreeMap::new()),
            frozen: Cell::new(None),
        };
        for (i, v) in idr.iter().enumerate() {
            hw.w32(IDR0 + 4 * i, *v);
        }
        hw.w32(IIDR, 0x43b);
        hw.w32(AIDR, 1);
        // QEMU's reset value: SHCFG = use incoming, no abort.
        hw.w32(GBPA, 0x1000);
        Rc::new(hw)
    }

    pub fn qemu(stage: u8) -> Rc<Self> {
        Self::new(qemu_idr(stage))
    }

    /// As firmware might leave it: enabled, bypassing when disabled.
    pub fn qemu_left_enabled(stage: u8) -> Rc<Self> {
        let hw = Self::qemu(stage);
        let on = SMMUEN | CMDQEN | EVENTQEN;
        hw.w32(CR0, on);
        hw.w32(CR0ACK, on);
        hw.last_cr0.set(on);
        hw
    }

    pub fn base(&self) -> usize {
        self.block.0.as_ptr() as usize
    }

    fn ptr(&self, off: usize) -> *mut u8 {
        assert!(off + 8 <= 0x11000);
        (self.base() + off) as *mut u8
    }
    pub fn r32(&self, off: usize) -> u32 {
        // SAFETY: `off` is inside the block, 4-byte aligned.
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

    fn s1p(&self) -> bool {
        self.idr[0] & 2 != 0
    }
    fn s2p(&self) -> bool {
        self.idr[0] & 1 != 0
    }
    fn ril(&self) -> bool {
        self.idr[3] & (1 << 10) != 0
    }
    fn sidsize(&self) -> u32 {
        self.idr[1] & 0x3f
    }

    pub fn log(&self) -> Vec<Log> {
        self.log.borrow().clone()
    }
    pub fn clear_log(&self) {
        self.log.borrow_mut().clear();
    }
    /// Commands consumed, CMD_SYNCs left out.
    pub fn commands(&self) -> Vec<[u64; 2]> {
        self.log
            .borrow()
            .iter()
            .filter_map(|l| match l {
                Log::Cmd(c) if c[0] as u8 != 0x46 => Some(*c),
                _ => None,
            })
            .collect()
    }
    pub fn opcodes(&self) -> Vec<u8> {
        self.commands().iter().map(|c| c[0] as u8).collect()
    }
    pub fn syncs(&self) -> usize {
        self.log.borrow().iter().filter(|l| matches!(l, Log::Cmd(c) if c[0] as u8 == 0x46)).count()
    }
    pub fn tlb_len(&self) -> usize {
        self.tlb.borrow().len()
    }
    pub fn gerror_pending(&self) -> u32 {
        self.gerror.get() ^ self.r32(GERRORN)
    }

    /// One step of the SMMU: what hardware does between two register
    /// accesses of the driver.
    pub fn step(&self) {
        if self.stall.get() {
            return;
        }
        let g = self.r32(GBPA);
        if g & GBPA_UPDATE != 0 {
            self.log.borrow_mut().push(Log::Gbpa(g));
            self.w32(GBPA, g & !GBPA_UPDATE);
        }
        let cr0 = self.r32(CR0);
        let prev = self.last_cr0.get();
        if cr0 != prev {
            self.log.borrow_mut().push(Log::Cr0(cr0));
            if cr0 & CMDQEN != 0 && prev & CMDQEN == 0 {
                assert_ne!(self.r64(CMDQ_BASE) & 0x000f_ffff_ffff_ffe0, 0, "CMDQEN without a queue base");
                assert_eq!(self.r32(CMDQ_PROD), self.r32(CMDQ_CONS), "command queue enabled non-empty");
                self.cmdq_cons.set(self.r32(CMDQ_CONS));
            }
            if cr0 & EVENTQEN != 0 && prev & EVENTQEN == 0 {
                assert_ne!(self.r64(EVENTQ_BASE) & 0x000f_ffff_ffff_ffe0, 0, "EVENTQEN without a queue base");
                self.eventq_prod.set(self.r32(EVENTQ_PROD));
            }
            if cr0 & SMMUEN != 0 && prev & SMMUEN == 0 {
                assert_ne!(self.r64(STRTAB_BASE) & 0x000f_ffff_ffff_ffc0, 0, "SMMUEN without a stream table");
                assert!(cr0 & CMDQEN != 0, "SMMUEN before the command queue");
            }
            self.last_cr0.set(cr0);
        }
        self.w32(CR0ACK, cr0 & !CR0_RESERVED);
        if cr0 & (SMMUEN | CMDQEN | EVENTQEN) != 0 {
            let now = (self.r64(STRTAB_BASE), self.r32(STRTAB_BASE_CFG), self.r64(CMDQ_BASE), self.r64(EVENTQ_BASE));
            match self.frozen.get() {
                Some(f) if cr0 & SMMUEN != 0 => assert_eq!((f.0, f.1), (now.0, now.1), "stream table changed while enabled"),
                _ => {}
            }
            if let Some(f) = self.frozen.get()
                && cr0 & CMDQEN != 0
            {
                assert_eq!(f.2, now.2, "command queue base changed while enabled");
            }
            self.frozen.set(Some(now));
        } else {
            self.frozen.set(None);
        }
        self.w32(IRQ_CTRLACK, self.r32(IRQ_CTRL));
        self.w32(GERROR, self.gerror.get());
        if cr0 & CMDQEN != 0 {
            self.consume();
        }
        if cr0 & SMMUEN != 0 {
            self.watch_stes();
        }
    }

    fn consume(&self) {
        let base = self.r64(CMDQ_BASE);
        let addr = base & 0x000f_ffff_ffff_ffe0;
        let log2 = ((base & 0x1f) as u32).min((self.idr[1] >> 21) & 0x1f);
        let mask = (2u32 << log2) - 1;
        loop {
            if self.gerror_pending() & 1 != 0 {
                break;
            }
            let prod = self.r32(CMDQ_PROD) & mask;
            let cons = self.cmdq_cons.get() & mask;
            if prod == cons {
                break;
            }
            let at = addr + 16 * u64::from(cons & ((1 << log2) - 1));
            let cmd = [self.mem.read_u64(at).unwrap(), self.mem.read_u64(at + 8).unwrap()];
            match self.execute(cmd) {
                Ok(()) => {
                    self.log.borrow_mut().push(Log::Cmd(cmd));
                    let c = self.cmdq_cons.get();
                    self.cmdq_cons.set((c & !mask) | ((cons + 1) & mask));
                }
                Err(code) => {
                    self.cmdq_cons.set((self.cmdq_cons.get() & !(0x7f << 24)) | (code << 24));
                    self.gerror.set(self.gerror.get() ^ 1);
                    self.w32(GERROR, self.gerror.get());
                    break;
                }
            }
        }
        self.w32(CMDQ_CONS, self.cmdq_cons.get());
    }

    fn execute(&self, w: [u64; 2]) -> Result<(), u32> {
        const ILL: u32 = 1;
        let op = w[0] as u8;
        if let Some(r) = self.reject.get()
            && (r == op || r == 0xff)
        {
            self.reject.set(None);
            return Err(ILL);
        }
        let sid = (w[0] >> 32) as u32;
        let vmid = (w[0] >> 32) as u16;
        let asid = (w[0] >> 48) as u16;
        match op {
            0x46 => {
                if (w[0] >> 12) & 3 == 3 {
                    return Err(ILL);
                }
            }
            0x01 => {}
            0x03 => {
                if w[0] & (1 << 10) != 0 {
                    return Err(ILL);
                }
                self.ste_cache.borrow_mut().remove(&sid);
                if w[1] & 1 == 0 {
                    self.l1_cache.borrow_mut().clear();
                }
            }
            0x04 => {
                let range = (w[1] & 0x1f) as u32;
                if range == 31 {
                    self.ste_cache.borrow_mut().clear();
                    self.cd_cache.borrow_mut().clear();
                    self.l1_cache.borrow_mut().clear();
                } else {
                    let m = (1u32 << (range + 1)) - 1;
                    self.ste_cache.borrow_mut().retain(|s, _| *s & !m != sid & !m);
                    self.l1_cache.borrow_mut().clear();
                }
            }
            0x05 | 0x06 => {
                self.cd_cache.borrow_mut().remove(&sid);
            }
            0x10 => {
                if !self.s1p() {
                    return Err(ILL);
                }
                self.tlb.borrow_mut().retain(|k, _| !matches!(k.0, Tag::Asid(_)));
            }
            0x11 => {
                if !self.s1p() {
                    return Err(ILL);
                }
                self.tlb.borrow_mut().retain(|k, _| k.0 != Tag::Asid(asid));
            }
            0x12 => {
                if !self.s1p() {
                    return Err(ILL);
                }
                self.range_inval(Tag::Asid(asid), w, w[1] & !0xfff)?;
            }
            0x20 => {}
            0x28 => {
                if !self.s2p() {
                    return Err(ILL);
                }
                self.tlb.borrow_mut().retain(|k, _| k.0 != Tag::Vmid(vmid));
            }
            0x2a => {
                if !self.s2p() {
                    return Err(ILL);
                }
                if w[1] >> 52 != 0 {
                    return Err(ILL);
                }
                self.range_inval(Tag::Vmid(vmid), w, w[1] & 0x000f_ffff_ffff_f000)?;
            }
            0x30 => self.tlb.borrow_mut().clear(),
            _ => return Err(ILL),
        }
        Ok(())
    }

    fn range_inval(&self, tag: Tag, w: [u64; 2], addr: u64) -> Result<(), u32> {
        let ttl = ((w[1] >> 8) & 3) as u8;
        let tg = (w[1] >> 10) & 3;
        let num = (w[0] >> 12) & 0x1f;
        let scale = (w[0] >> 20) & 0x1f;
        let len = if tg == 0 {
            if num != 0 || scale != 0 || ttl != 0 {
                return Err(1);
            }
            1
        } else {
            if !self.ril() || tg != 1 {
                return Err(1);
            }
            (num + 1) << (scale + 12)
        };
        let end = addr.saturating_add(len);
        self.tlb.borrow_mut().retain(|k, e| {
            let hit = k.0 == tag && k.1 < end && addr < k.1 + (1 << e.shift) && (ttl == 0 || e.level == ttl);
            !hit
        });
        Ok(())
    }

    /// The STE of `sid` as the SMMU finds it, or the event it records.
    fn find_ste(&self, sid: u32) -> Result<[u64; 8], u8> {
        if let Some(s) = self.ste_cache.borrow().get(&sid) {
            return Ok(*s);
        }
        let cfg = self.r32(STRTAB_BASE_CFG);
        let log2size = cfg & 0x3f;
        if u64::from(sid) >> log2size.min(self.sidsize()) != 0 {
            return Err(0x02);
        }
        let base = self.r64(STRTAB_BASE) & 0x000f_ffff_ffff_ffc0;
        let addr = if (cfg >> 16) & 3 == 1 {
            let split = (cfg >> 6) & 0x1f;
            assert!([6, 8, 10].contains(&split), "SPLIT {split} is reserved");
            let i = sid >> split;
            let cached = self.l1_cache.borrow().get(&i).copied();
            let l1 = match cached {
                Some(d) => d,
                None => self.mem.read_u64(base + 8 * u64::from(i)).ok_or(0x03u8)?,
            };
            let span = (l1 & 0x1f) as u32;
            if span == 0 {
                return Err(0x02);
            }
            assert!(span <= split + 1, "L1 span {span} beyond SPLIT {split}");
            self.l1_cache.borrow_mut().insert(i, l1);
            let off = sid & ((1 << split) - 1);
            if off >= 1 << (span - 1) {
                return Err(0x04);
            }
            (l1 & 0x000f_ffff_ffff_ffc0) + 64 * u64::from(off)
        } else {
            base + 64 * u64::from(sid)
        };
        let mut ste = [0u64; 8];
        for (k, w) in ste.iter_mut().enumerate() {
            *w = self.mem.read_u64(addr + 8 * k as u64).ok_or(0x03u8)?;
        }
        Ok(ste)
    }

    fn config(&self, sid: u32) -> Result<Cfg, u8> {
        const BAD_STE: u8 = 0x04;
        const BAD_CD: u8 = 0x0a;
        let ste = self.find_ste(sid)?;
        if ste[0] & 1 == 0 {
            return Err(BAD_STE);
        }
        let config = (ste[0] >> 1) & 7;
        if config & 4 == 0 {
            self.ste_cache.borrow_mut().insert(sid, ste);
            return Ok(Cfg::Abort);
        }
        assert_ne!(config, 4, "the driver wrote a bypass STE for StreamID {sid:#x}");
        let (s1, s2) = (config & 1 != 0, config & 2 != 0);
        if (s1 && !self.s1p()) || (s2 && !self.s2p()) || (s1 && s2) {
            return Err(BAD_STE);
        }
        if ste[0] >> 59 != 0 || ste[1] & (1 << 27) != 0 || (ste[1] >> 28) & 3 != 0 || ste[4..].iter().any(|w| *w != 0) {
            return Err(BAD_STE);
        }
        let oas_code = u64::from(self.idr[5] & 7);
        let cfg = if s2 {
            let w = ste[2];
            let vtcr = (w >> 32) & 0x7_ffff;
            let (t0sz, sl0, tg, ps) = ((vtcr & 0x3f) as u8, ((vtcr >> 6) & 3) as u8, (vtcr >> 14) & 3, (vtcr >> 16) & 7);
            let bit = |b: u32| w & (1 << b) != 0;
            // S2AA64 (QEMU asserts on AArch32), S2ENDI, S2HD, S2HA, S2S.
            if !bit(51) || bit(52) || bit(55) || bit(56) || bit(57) || tg != 0 || sl0 == 3 {
                return Err(BAD_STE);
            }
            let eff_ps = oas2bits(ps.min(oas_code)).min(48);
            let ttb = ste[3] & 0x000f_ffff_ffff_fff0;
            if ttb >> eff_ps != 0 || ttb & 0xfff != 0 || ste[3] & !0x000f_ffff_ffff_fff0 != 0 {
                return Err(BAD_STE);
            }
            if t0sz > 39 || u32::from(t0sz) < (64 - eff_ps).max(16) {
                return Err(BAD_STE);
            }
            // At most 16 concatenated tables at the start level.
            let start = [2u32, 1, 0][sl0 as usize];
            let below = 12 + 9 * (3 - start);
            let ia = 64 - u32::from(t0sz);
            if ia <= below || ia - below > 13 {
                return Err(BAD_STE);
            }
            Cfg::S2 { vmid: w as u16, t0sz, sl0, oa: eff_ps as u8, ttb, record: bit(58) }
        } else {
            if (ste[0] >> 4) & 3 != 0 {
                return Err(BAD_STE);
            }
            let cached = self.cd_cache.borrow().get(&sid).copied();
            let cd = match cached {
                Some(cd) => cd,
                None => {
                    let ptr = ste[0] & 0x000f_ffff_ffff_ffc0;
                    let mut cd = [0u64; 8];
                    for (k, w) in cd.iter_mut().enumerate() {
                        *w = self.mem.read_u64(ptr + 8 * k as u64).ok_or(0x09u8)?;
                    }
                    cd
                }
            };
            let c = cd[0];
            let bit = |b: u32| c & (1 << b) != 0;
            // V, AA64, A (TERM_MODEL), S, HD, HA, ENDI, EPD0.
            if !bit(31) || !bit(41) || !bit(46) || bit(44) || bit(42) || bit(43) || bit(15) || bit(14) {
                return Err(BAD_CD);
            }
            let (tsz0, tg0) = ((c & 0x3f) as u8, (c >> 6) & 3);
            if !(16..=39).contains(&tsz0) || tg0 != 0 {
                return Err(BAD_CD);
            }
            // TTB1 walks on need a valid TSZ1/TG1 (QEMU's tg2granule).
            if !bit(30) && ((c >> 22) & 3 == 0 || !(16..=39).contains(&((c >> 16) & 0x3f))) {
                return Err(BAD_CD);
            }
            let oa = oas2bits((c >> 32) & 7).min(oas2bits(oas_code)).min(48);
            let ttb = cd[1] & 0x000f_ffff_ffff_fff0;
            if ttb >> oa != 0 || ttb & 0xfff != 0 {
                return Err(BAD_CD);
            }
            self.cd_cache.borrow_mut().insert(sid, cd);
            Cfg::S1 { asid: (c >> 48) as u16, t0sz: tsz0, oa: oa as u8, ttb, record: bit(45), mair: cd[3] }
        };
        self.ste_cache.borrow_mut().insert(sid, ste);
        Ok(cfg)
    }

    /// A DMA from StreamID `sid` to `iova`: `Ok(pa)` or how it failed
    /// (recorded in the event queue when the SMMU records it).
    pub fn dma(&self, sid: u32, iova: u64, write: bool) -> Result<u64, Fault> {
        if self.r32(CR0ACK) & SMMUEN == 0 {
            assert!(self.r32(GBPA) & GBPA_ABORT != 0, "a DMA bypassed the disabled SMMU");
            return Err(Fault::Abort);
        }
        let cfg = match self.config(sid) {
            Ok(c) => c,
            Err(ev) => {
                self.record(ev, sid, iova, !write, false);
                return Err(Fault::Event(ev));
            }
        };
        let (tag, stage, oa, ttb, record, s2) = match cfg {
            Cfg::Abort => return Err(Fault::Abort),
            Cfg::S2 { vmid, t0sz, sl0, oa, ttb, record } => (Tag::Vmid(vmid), Stage::Two { t0sz, sl0 }, oa, ttb, record, true),
            Cfg::S1 { asid, t0sz, oa, ttb, record, .. } => (Tag::Asid(asid), Stage::One { t0sz }, oa, ttb, record, false),
        };
        let hit = [(12u32, 3u8), (21, 2), (30, 1)].iter().find_map(|&(shift, _)| {
            self.tlb.borrow().get(&(tag, iova >> shift << shift)).filter(|e| e.shift == shift).copied()
        });
        let entry = match hit {
            Some(e) => e,
            None => match translate(&VmsaConfig { stage, oa_bits: oa }, ttb, iova, &self.mem) {
                Ok(walk) => {
                    let shift = walk.page_size.trailing_zeros();
                    if let Cfg::S1 { mair, .. } = cfg {
                        let idx = (walk.leaf >> 2) & 7;
                        assert_eq!((mair >> (8 * idx)) as u8, 0xff, "leaf AttrIndx {idx} is not normal write-back memory in MAIR {mair:#x}");
                    }
                    let e = TlbEntry { pa: walk.pa >> shift << shift, shift, read: walk.read, write: walk.write, level: (3 - (shift - 12) / 9) as u8 };
                    self.tlb.borrow_mut().insert((tag, iova >> shift << shift), e);
                    e
                }
                Err(f) => {
                    let ev = match f {
                        WalkFault::BadConfig => 0x04,
                        WalkFault::AddressSize { .. } => 0x11,
                        WalkFault::AccessFlag { .. } => 0x12,
                        WalkFault::Bus { .. } => 0x0b,
                        _ => 0x10,
                    };
                    if ev == 0x04 || record {
                        self.record(ev, sid, iova, !write, s2);
                        return Err(Fault::Event(ev));
                    }
                    return Err(Fault::Abort);
                }
            },
        };
        if (write && !entry.write) || (!write && !entry.read) {
            if record {
                self.record(0x13, sid, iova, !write, s2);
                return Err(Fault::Event(0x13));
            }
            return Err(Fault::Abort);
        }
        Ok(entry.pa | (iova & ((1 << entry.shift) - 1)))
    }

    /// Write an event record the way QEMU's `smmuv3_record_event` lays it
    /// out; on a full queue toggle OVFLG (once per overflow condition).
    pub fn record(&self, kind: u8, sid: u32, iova: u64, read: bool, s2: bool) {
        if self.r32(CR0ACK) & EVENTQEN == 0 {
            return;
        }
        let base = self.r64(EVENTQ_BASE);
        let addr = base & 0x000f_ffff_ffff_ffe0;
        let log2 = ((base & 0x1f) as u32).min((self.idr[1] >> 16) & 0x1f);
        let mask = (2u32 << log2) - 1;
        let p = self.eventq_prod.get();
        let cons = self.r32(EVENTQ_CONS);
        let (prod, c) = (p & mask, cons & mask);
        if prod ^ c == 1 << log2 {
            if (p ^ cons) & OVFLG == 0 {
                self.eventq_prod.set(p ^ OVFLG);
            }
            self.w32(EVENTQ_PROD, self.eventq_prod.get());
            return;
        }
        let at = addr + 32 * u64::from(prod & ((1 << log2) - 1));
        let access = matches!(kind, 0x01 | 0x07 | 0x0b | 0x10..=0x13);
        self.mem.write(at, u64::from(kind) | (u64::from(sid) << 32));
        self.mem.write(at + 8, if access { (u64::from(read) << 35) | (u64::from(s2) << 39) | (2 << 40) } else { 0 });
        self.mem.write(at + 16, if access { iova } else { 0 });
        self.mem.write(at + 24, 0);
        self.eventq_prod.set((p & OVFLG) | ((prod + 1) & mask));
        self.w32(EVENTQ_PROD, self.eventq_prod.get());
    }

    /// Raise global errors (GERROR bits toggled).
    pub fn raise_gerror(&self, bits: u32) {
        self.gerror.set(self.gerror.get() ^ (bits & !self.gerror_pending()));
        self.w32(GERROR, self.gerror.get());
    }

    /// Every STE currently in the stream table, by StreamID.
    fn stes(&self) -> BTreeMap<u32, [u64; 4]> {
        let mut out = BTreeMap::new();
        let cfg = self.r32(STRTAB_BASE_CFG);
        let base = self.r64(STRTAB_BASE) & 0x000f_ffff_ffff_ffc0;
        if base == 0 {
            return out;
        }
        let read = |a: u64| -> [u64; 4] { core::array::from_fn(|k| self.mem.read_u64(a + 8 * k as u64).unwrap()) };
        if (cfg >> 16) & 3 == 1 {
            let split = (cfg >> 6) & 0x1f;
            let l1n = 1u32 << ((cfg & 0x3f).saturating_sub(split));
            for i in 0..l1n {
                let d = self.mem.read_u64(base + 8 * u64::from(i)).unwrap();
                if d & 0x1f == 0 {
                    continue;
                }
                let l2 = d & 0x000f_ffff_ffff_ffc0;
                for off in 0..1u32 << ((d & 0x1f) - 1) {
                    out.insert((i << split) | off, read(l2 + 64 * u64::from(off)));
                }
            }
        } else {
            for sid in 0..1u32 << (cfg & 0x3f) {
                out.insert(sid, read(base + 64 * u64::from(sid)));
            }
        }
        out
    }

    /// Catch a translating STE rewritten in place: between two steps an
    /// STE may go from translating to something else (abort, invalid) or
    /// the other way, never from one translation to another.
    fn watch_stes(&self) {
        let translating = |s: &[u64; 4]| s[0] & 1 != 0 && (s[0] >> 1) & 4 != 0;
        let now = self.stes();
        let mut seen = self.seen.borrow_mut();
        for (sid, ste) in &now {
            if let Some(old) = seen.get(sid)
                && translating(old)
                && translating(ste)
                && old != ste
            {
                panic!("STE {sid:#x} changed from {old:#x?} to {ste:#x?} without going through abort");
            }
        }
        *seen = now;
    }

    pub fn ste(&self, sid: u32) -> [u64; 4] {
        self.stes()[&sid]
    }
}

/// A clock whose every busy-wait iteration advances time by 1 µs and lets
/// the SMMU take one step.
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
