//! Op-sequence property tests: random sequences of IOAS and device
//! operations, replayed through the real hypercall decoder (command structs
//! written into partition RAM) on a machine with two partitions and three
//! IOMMU units (VT-d, SMMUv3 stage 2, SMMUv3 stage 1), and against a simple
//! model of what the ABI promises: per IOAS the areas (IOVA -> GPA,
//! permission, pin set), the allowed list and the huge-pages switch; per
//! device its HWPT; per partition its objects and pin sets.
//!
//! The model predicts every result (errno, object id, automatic IOVA,
//! unmapped bytes). After each op:
//! - every device's translation of sampled IOVAs, walked by its simulated
//!   unit through the context it holds (what its DMA would reach), is the
//!   model's (host page and effective permission, or a fault);
//! - IOVA_RANGES of every IOAS (read through the decoder) is the model's;
//! - every partition's pinned pages are the model's;
//! - a failed op changed nothing (objects, areas, pins, contexts, table
//!   bytes, free table pages), UNMAP's documented partial case aside;
//! - `Sim::invariants` holds (the core's checker and the units' view).
//!
//! Ops are an `arbitrary::Arbitrary` enum decoded from proptest-generated
//! bytes, so proptest shrinks failing sequences.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use hvsim::script::{Sim, TABLE_BASE};
use hvsim::sim::{SimUnit, UnitKind};
use proptest::prelude::*;
use sluice_kernel::Hpa;
use sluice_kernel::abi::{
    Command, Destroy, DeviceAttach, DeviceDetach, Errno, IoasAlloc, IoasAllowIovas, IoasCopy, IoasIovaRanges, IoasMap, IoasUnmap, IovaRange,
    OptionCmd, map_flags, option,
};
use sluice_kernel::hypercall::Outcome;
use sluice_kernel::pt::PAGE_SIZE;
use zerocopy::{FromBytes, Immutable, IntoBytes};

const MACHINE: &[&str] = &[
    "iommu vtd0 kind=vtd aw=48",
    "iommu smmu0 kind=smmuv3 stage=2 ias=44",
    "iommu smmu1 kind=smmuv3 stage=1 ias=48",
    "partition p ram=0x0:0x1000000,0x40000000:0x400000 pin_limit=0x900 max_areas=40",
    "partition q ram=0x0:0x800000 pin_limit=0x400 max_areas=40",
    "device a partition=p iommu=vtd0 rid=0x8 dma_bits=39",
    "device b partition=p iommu=smmu0 rid=0x10",
    "device e partition=p iommu=smmu1 rid=0x30 resv=0x8000000-0x80fffff:reserved",
    "device c partition=q iommu=vtd0 rid=0x18",
    "device d partition=q iommu=smmu0 rid=0x20 dma_bits=32",
];
/// Where command structs go, and arrays.
const SCRATCH: u64 = 0x1000;
const ARRAY: u64 = 0x2000;
const GIB: u64 = 1 << 30;
const MIB2: u64 = 0x20_0000;

// ----- the ops -----

#[derive(Arbitrary, Clone, Copy, Debug)]
enum PermPick {
    R,
    W,
    Rw,
}

impl PermPick {
    fn flags(self) -> u32 {
        match self {
            Self::R => map_flags::READABLE,
            Self::W => map_flags::WRITEABLE,
            Self::Rw => map_flags::READABLE | map_flags::WRITEABLE,
        }
    }
    fn rw(self) -> (bool, bool) {
        match self {
            Self::R => (true, false),
            Self::W => (false, true),
            Self::Rw => (true, true),
        }
    }
}

/// An IOVA: near an existing area, in a few fixed places, or anywhere.
#[derive(Arbitrary, Clone, Copy, Debug)]
enum IovaPick {
    /// After the end of area `n` (mod the count), `k` pages on.
    AfterArea(u8, u8),
    /// At the start of area `n`, `k` pages on (overlap).
    InArea(u8, u8),
    /// One of [`FIXED_IOVAS`].
    Fixed(u8),
    /// Page `n` of the low 4 GiB.
    Page(u16),
}

const FIXED_IOVAS: [u64; 10] = [0, 0x1000, MIB2, 0x4000_0000, 0xfee0_0000, 0x800_0000, 1 << 32, 1 << 39, 1 << 44, u64::MAX - 0xfff];

/// Which object of a partition an op names: by `kind` mod 10, mostly
/// the n-th IOAS (0..=6), else the n-th HWPT (7), the n-th device (8) or
/// an id that may name nothing (9).
#[derive(Arbitrary, Clone, Copy, Debug)]
struct IdPick {
    kind: u8,
    n: u8,
}

const fn ioas(n: u8) -> IdPick {
    IdPick { kind: 0, n }
}

const fn hwpt(n: u8) -> IdPick {
    IdPick { kind: 7, n }
}

#[derive(Arbitrary, Clone, Copy, Debug)]
enum UnmapPick {
    /// Exactly area n.
    Area(u8),
    /// From area n's start, `pages` pages (may cut an area: ENOENT).
    From(u8, u8),
    /// A range anywhere.
    Range(IovaPick, u8),
    /// Everything (iova 0, length U64_MAX).
    All,
}

#[derive(Arbitrary, Clone, Debug)]
enum Op {
    IoasAlloc {
        q: bool,
    },
    Map {
        q: bool,
        ioas: IdPick,
        /// RAM range (mod count), page in it (may run past it), pages.
        ram: u8,
        page: u16,
        pages: u8,
        /// Make gpa, IOVA and length 2 MiB multiples.
        huge: bool,
        fixed: Option<IovaPick>,
        perm: PermPick,
    },
    Unmap {
        q: bool,
        ioas: IdPick,
        what: UnmapPick,
    },
    Copy {
        q: bool,
        dst: IdPick,
        src: IdPick,
        area: u8,
        off: u8,
        pages: u8,
        fixed: Option<IovaPick>,
        perm: PermPick,
    },
    AllowIovas {
        q: bool,
        ioas: IdPick,
        ranges: Vec<(u16, u8)>,
    },
    Attach {
        dev: u8,
        to: IdPick,
    },
    Detach {
        dev: u8,
    },
    Destroy {
        q: bool,
        id: IdPick,
    },
    Huge {
        q: bool,
        ioas: IdPick,
        set: Option<bool>,
    },
    Dma {
        dev: u8,
        iova: IovaPick,
        offset: u16,
        write: bool,
    },
}

// ----- the model -----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MArea {
    last: u64,
    gpa: u64,
    read: bool,
    write: bool,
    /// Pin set (the MAP it comes from).
    set: u64,
}

#[derive(Clone, Debug, Default)]
struct MIoas {
    areas: BTreeMap<u64, MArea>,
    allowed: Vec<(u64, u64)>,
    no_huge: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MObj {
    Ioas,
    Hwpt { ioas: u32, unit: usize },
    Device(usize),
}

#[derive(Clone, Copy, Debug)]
struct MSet {
    gpa: u64,
    writable: bool,
}

#[derive(Clone, Debug)]
struct MPart {
    objects: BTreeMap<u32, MObj>,
    ioas: BTreeMap<u32, MIoas>,
    sets: BTreeMap<u64, MSet>,
    next_set: u64,
    /// (gpa, len, hpa)
    ram: Vec<(u64, u64, u64)>,
    pin_limit: u64,
    max_areas: usize,
}

#[derive(Clone, Debug)]
struct MDev {
    part: usize,
    unit: usize,
    id: u32,
    rid: u32,
    /// Every reserved region (configuration).
    regions: Vec<(u64, u64)>,
    hwpt: Option<u32>,
}

#[derive(Clone, Debug)]
struct Model {
    parts: Vec<MPart>,
    devs: Vec<MDev>,
    /// Unit kinds: effective permissions.
    stage1: Vec<bool>,
}

fn lowest_free(objects: &BTreeMap<u32, MObj>) -> u32 {
    (1..).find(|i| !objects.contains_key(i)).expect("an id")
}

fn intersects(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

impl Model {
    fn new(sim: &Sim) -> Self {
        let hv = &sim.hv;
        let parts = (0..hv.partition_count())
            .map(|p| {
                let part = hv.partition(p);
                let ram = part.memmap().ranges().iter().map(|r| (r.gpa.raw(), r.len, r.hpa.raw())).collect();
                let (pin_limit, max_areas) = if p == 0 { (0x900, 40) } else { (0x400, 40) };
                MPart { objects: BTreeMap::new(), ioas: BTreeMap::new(), sets: BTreeMap::new(), next_set: 0, ram, pin_limit, max_areas }
            })
            .collect::<Vec<_>>();
        let mut m =
            Self { parts, devs: Vec::new(), stage1: hv.units().iter().map(|u| matches!(u.kind(), UnitKind::SmmuV3 { stage: 1, .. })).collect() };
        for (i, d) in hv.devices().iter().enumerate() {
            m.parts[d.partition].objects.insert(d.id, MObj::Device(i));
            m.devs.push(MDev {
                part: d.partition,
                unit: d.unit,
                id: d.id,
                rid: d.rid,
                regions: d.regions.iter().map(|r| (r.range.start, r.range.last)).collect(),
                hwpt: None,
            });
        }
        m
    }

    fn is_ram(&self, p: usize, gpa: u64, len: u64) -> bool {
        // Ranges may be adjacent: walk them.
        let mut at = gpa;
        let Some(end) = gpa.checked_add(len) else { return false };
        while at < end {
            let Some(r) = self.parts[p].ram.iter().find(|r| r.0 <= at && at < r.0 + r.1) else { return false };
            at = r.0 + r.1;
        }
        true
    }

    fn hpa(&self, p: usize, gpa: u64) -> u64 {
        let r = self.parts[p].ram.iter().find(|r| r.0 <= gpa && gpa < r.0 + r.1).expect("areas are RAM");
        r.2 + (gpa - r.0)
    }

    fn pinned(&self, p: usize) -> u64 {
        let part = &self.parts[p];
        let mut pages = 0;
        for (&id, set) in &part.sets {
            let mut spans: Vec<(u64, u64)> = part
                .ioas
                .values()
                .flat_map(|i| i.areas.iter())
                .filter(|(_, a)| a.set == id)
                .map(|(s, a)| ((a.gpa - set.gpa) / PAGE_SIZE, (a.gpa - set.gpa + (a.last - s + 1)) / PAGE_SIZE))
                .collect();
            spans.sort_unstable();
            let mut end = 0;
            for (a, b) in spans {
                pages += b.saturating_sub(a.max(end));
                end = end.max(b);
            }
        }
        pages
    }

    /// Drop pin sets no area uses.
    fn gc_sets(&mut self, p: usize) {
        let part = &mut self.parts[p];
        let used: Vec<u64> = part.ioas.values().flat_map(|i| i.areas.values().map(|a| a.set)).collect();
        part.sets.retain(|id, _| used.contains(id));
    }

    fn areas_total(&self, p: usize) -> usize {
        self.parts[p].ioas.values().map(|i| i.areas.len()).sum()
    }

    /// The reserved ranges of IOAS `id` of `p`: the regions of the devices
    /// attached to it.
    fn reserved(&self, p: usize, id: u32) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .devs
            .iter()
            .filter(|d| d.part == p && d.hwpt.is_some_and(|h| self.parts[p].objects.get(&h) == Some(&MObj::Hwpt { ioas: id, unit: d.unit })))
            .flat_map(|d| d.regions.iter().copied())
            .collect();
        v.sort_unstable();
        v
    }

    fn usable(&self, p: usize, id: u32) -> Vec<(u64, u64)> {
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, l) in self.reserved(p, id) {
            match merged.last_mut() {
                Some(m) if s <= m.1.saturating_add(1) => m.1 = m.1.max(l),
                _ => merged.push((s, l)),
            }
        }
        let mut out = Vec::new();
        let mut next = Some(0u64);
        for (s, l) in merged {
            if let Some(n) = next.filter(|n| s > *n) {
                out.push((n, s - 1));
            }
            next = l.checked_add(1);
        }
        if let Some(n) = next {
            out.push((n, u64::MAX));
        }
        out
    }

    /// ABI.md's automatic allocation, written from the text.
    fn first_fit(&self, p: usize, id: u32, len: u64, gpa: u64) -> Option<u64> {
        let mut align = len.checked_next_power_of_two().unwrap_or(1 << 63);
        if gpa != 0 {
            align = align.min(1 << gpa.trailing_zeros());
        }
        align = align.min(GIB);
        let ioas = &self.parts[p].ioas[&id];
        let mut blockers: Vec<(u64, u64)> = self.reserved(p, id);
        blockers.extend(ioas.areas.iter().map(|(s, a)| (*s, a.last)));
        blockers.sort_unstable();
        let span = (0x1000u64, u64::MAX - 0x1000);
        let mut spans: Vec<(u64, u64)> = if ioas.allowed.is_empty() {
            vec![span]
        } else {
            ioas.allowed.iter().filter_map(|&(s, l)| (s.max(span.0) <= l.min(span.1)).then_some((s.max(span.0), l.min(span.1)))).collect()
        };
        spans.sort_unstable();
        let up = |v: u64| v.checked_add(align - 1).map(|x| x & !(align - 1));
        for (s, l) in spans {
            let mut next = up(s.max(1));
            while let Some(cur) = next {
                let Some(last) = cur.checked_add(len - 1).filter(|last| *last <= l) else { break };
                match blockers.iter().filter(|b| intersects(**b, (cur, last))).map(|b| b.1).max() {
                    None => return Some(cur),
                    Some(end) => next = end.checked_add(1).and_then(up),
                }
            }
        }
        None
    }

    /// What device `d` reaches at `iova`: (host address, read, write).
    fn translate(&self, d: usize, iova: u64) -> Option<(u64, bool, bool)> {
        let dev = &self.devs[d];
        let MObj::Hwpt { ioas, .. } = self.parts[dev.part].objects[&dev.hwpt?] else { unreachable!() };
        let (s, a) = self.parts[dev.part].ioas[&ioas].areas.range(..=iova).next_back()?;
        if a.last < iova {
            return None;
        }
        let hpa = self.hpa(dev.part, a.gpa + (iova - s));
        // Stage 1 has no write-only.
        let read = a.read || (a.write && self.stage1[dev.unit]);
        Some((hpa, read, a.write))
    }

    fn ioas_ids(&self, p: usize) -> Vec<u32> {
        self.parts[p].ioas.keys().copied().collect()
    }

    fn hwpt_ids(&self, p: usize) -> Vec<u32> {
        self.parts[p].objects.iter().filter(|(_, o)| matches!(o, MObj::Hwpt { .. })).map(|(i, _)| *i).collect()
    }

    fn pick(&self, p: usize, id: IdPick) -> u32 {
        let nth = |v: Vec<u32>, n: u8| if v.is_empty() { 0x77 } else { v[n as usize % v.len()] };
        match id.kind % 10 {
            0..=6 => nth(self.ioas_ids(p), id.n),
            7 => nth(self.hwpt_ids(p), id.n),
            8 => nth(self.devs.iter().filter(|d| d.part == p).map(|d| d.id).collect(), id.n),
            _ => u32::from(id.n % 24),
        }
    }

    /// Like [`Self::pick`], but an IOAS pick lands on one with areas when
    /// there is one.
    fn pick_mapped(&self, p: usize, id: IdPick) -> u32 {
        let mapped: Vec<u32> = self.parts[p].ioas.iter().filter(|(_, i)| !i.areas.is_empty()).map(|(k, _)| *k).collect();
        if id.kind % 10 <= 6 && !mapped.is_empty() { mapped[id.n as usize % mapped.len()] } else { self.pick(p, id) }
    }

    fn all_areas(&self) -> Vec<(u64, u64)> {
        self.parts.iter().flat_map(|p| p.ioas.values()).flat_map(|i| i.areas.iter().map(|(s, a)| (*s, a.last))).collect()
    }

    fn iova(&self, pick: IovaPick) -> u64 {
        let areas = self.all_areas();
        let nth = |n: u8| (!areas.is_empty()).then(|| areas[n as usize % areas.len()]);
        match pick {
            IovaPick::AfterArea(n, k) => nth(n).map_or(0x10_0000, |a| a.1.wrapping_add(1).wrapping_add(u64::from(k % 8) * PAGE_SIZE)),
            IovaPick::InArea(n, k) => nth(n).map_or(0x1000, |a| a.0.wrapping_add(u64::from(k % 8) * PAGE_SIZE)),
            IovaPick::Fixed(n) => FIXED_IOVAS[n as usize % FIXED_IOVAS.len()],
            IovaPick::Page(n) => u64::from(n) * PAGE_SIZE * 16,
        }
    }
}

// ----- running ops -----

struct Rig {
    sim: Sim,
    model: Model,
    log: Vec<String>,
}

fn errno(ret: i64) -> Result<(), Errno> {
    if ret == 0 { Ok(()) } else { Err(Errno::ALL.into_iter().find(|e| e.to_return() == ret).unwrap_or_else(|| panic!("errno {ret}"))) }
}

impl Rig {
    fn new() -> Self {
        let mut sim = Sim::new();
        for l in MACHINE {
            assert_eq!(sim.statement(l).unwrap().status, "ok", "{l}");
        }
        let model = Model::new(&sim);
        Self { sim, model, log: Vec::new() }
    }

    /// Some state to start from: IOASes in both partitions, a few areas.
    fn fixture(&mut self) {
        let map = |q, n, page, pages| Op::Map { q, ioas: ioas(n), ram: 0, page, pages, huge: false, fixed: None, perm: PermPick::Rw };
        for op in [
            Op::IoasAlloc { q: false },
            Op::IoasAlloc { q: false },
            Op::IoasAlloc { q: false },
            Op::IoasAlloc { q: true },
            Op::IoasAlloc { q: true },
            map(false, 0, 0x100, 4),
            map(false, 0, 0x200, 8),
            map(false, 1, 0x300, 2),
            map(true, 0, 0x10, 3),
        ] {
            self.apply(&op);
        }
    }

    /// Write `cmd` into partition `p`'s RAM, call, read it back.
    fn call<T: Command + FromBytes + IntoBytes + Immutable + Copy>(&mut self, p: usize, mut cmd: T) -> (Result<(), Errno>, T) {
        let bytes = cmd.as_mut_bytes();
        let n = size_of::<T>() as u32;
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        self.sim.hv.write_guest(p, SCRATCH, cmd.as_bytes()).unwrap();
        let out = self.sim.hv.hypercall(p, u64::from(T::NR), SCRATCH);
        let Outcome::Return(ret) = out else { panic!("exit") };
        let mut back = [0u8; 64];
        self.sim.hv.read_guest(p, SCRATCH, &mut back[..size_of::<T>()]).unwrap();
        (errno(ret), T::read_from_bytes(&back[..size_of::<T>()]).unwrap())
    }

    /// Everything a failed command must leave as it was.
    fn state(&self) -> String {
        let hv = &self.sim.hv;
        let mut s = String::new();
        for p in 0..hv.partition_count() {
            s += &format!("{:?}\n", hv.partition(p));
        }
        s += &format!("{:?}\n", hv.devices());
        for u in hv.units() {
            for d in hv.devices() {
                s += &format!("{:?} ", u.context(d.rid));
            }
        }
        s + &tables_digest(&self.sim)
    }

    fn apply(&mut self, op: &Op) {
        self.log.push(format!("{op:?}"));
        let before = self.state();
        // Ok(true): changed as the model says; the closure returns the
        // expected and the real result.
        let (want, got, partial) = self.step(op);
        stats::record(op, &got);
        assert_eq!(got, want, "{op:?}: result\nlog: {:#?}", self.log);
        if got.is_err() && !partial {
            assert_eq!(self.state(), before, "{op:?} failed with {got:?} and changed state");
        }
        self.check();
    }

    /// Run `op`: (model's result, real result, whether a failure may have
    /// changed something).
    fn step(&mut self, op: &Op) -> (Result<u64, Errno>, Result<u64, Errno>, bool) {
        let m = &self.model;
        match *op {
            Op::IoasAlloc { q } => {
                let p = usize::from(q);
                let want = lowest_free(&m.parts[p].objects);
                let (r, c) = self.call(p, IoasAlloc::default());
                if r.is_ok() {
                    let part = &mut self.model.parts[p];
                    part.objects.insert(want, MObj::Ioas);
                    part.ioas.insert(want, MIoas::default());
                }
                (Ok(u64::from(want)), r.map(|()| u64::from(c.out_ioas_id)), false)
            }
            Op::Map { q, ioas, ram, page, pages, huge, fixed, perm } => {
                let p = usize::from(q);
                let id = m.pick(p, ioas);
                let r = m.parts[p].ram[ram as usize % m.parts[p].ram.len()];
                let (mut gpa, mut len) = (r.0 + u64::from(page) % (r.1 / PAGE_SIZE + 8) * PAGE_SIZE, u64::from(pages % 24 + 1) * PAGE_SIZE);
                let mut iova = fixed.map(|f| m.iova(f) & !(PAGE_SIZE - 1));
                if huge {
                    gpa &= !(MIB2 - 1);
                    len = MIB2 * u64::from(pages % 2 + 1);
                    iova = iova.map(|i| i & !(MIB2 - 1));
                }
                let want = self.model_map(p, id, gpa, len, iova, perm.rw());
                let mut flags = perm.flags();
                if iova.is_some() {
                    flags |= map_flags::FIXED_IOVA;
                }
                let (r, c) = self.call(p, IoasMap { flags, ioas_id: id, gpa, length: len, iova: iova.unwrap_or(0), ..Default::default() });
                let got = r.map(|()| c.iova);
                if let (Ok(at), Ok(_)) = (want, got) {
                    let part = &mut self.model.parts[p];
                    let set = part.next_set;
                    part.next_set += 1;
                    part.sets.insert(set, MSet { gpa, writable: perm.rw().1 });
                    let (read, write) = perm.rw();
                    part.ioas.get_mut(&id).unwrap().areas.insert(at, MArea { last: at + (len - 1), gpa, read, write, set });
                }
                (want, got, false)
            }
            Op::Unmap { q, ioas, what } => {
                let p = usize::from(q);
                let id = m.pick_mapped(p, ioas);
                let areas: Vec<(u64, u64)> =
                    m.parts[p].ioas.get(&id).map(|i| i.areas.iter().map(|(s, a)| (*s, a.last)).collect()).unwrap_or_default();
                let nth = |n: u8| (!areas.is_empty()).then(|| areas[n as usize % areas.len()]);
                let (iova, length) = match what {
                    UnmapPick::All => (0, u64::MAX),
                    UnmapPick::Area(n) => nth(n).map_or((0x1000, 0x1000), |a| (a.0, a.1 - a.0 + 1)),
                    UnmapPick::From(n, k) => nth(n).map_or((0x1000, 0x1000), |a| (a.0, u64::from(k % 40 + 1) * PAGE_SIZE)),
                    UnmapPick::Range(i, k) => (m.iova(i), u64::from(k) * PAGE_SIZE),
                };
                let want = self.model_unmap(p, id, iova, length);
                let (r, c) = self.call(p, IoasUnmap { ioas_id: id, iova, length, ..Default::default() });
                (want, r.map(|()| c.length), true)
            }
            Op::Copy { q, dst, src, area, off, pages, fixed, perm } => {
                let p = usize::from(q);
                let (dst, src) = (m.pick(p, dst), m.pick_mapped(p, src));
                let areas: Vec<(u64, u64)> =
                    m.parts[p].ioas.get(&src).map(|i| i.areas.iter().map(|(s, a)| (*s, a.last)).collect()).unwrap_or_default();
                let (src_iova, length) = if areas.is_empty() {
                    (0x1000, 0x1000)
                } else {
                    // Mostly inside one area; else possibly across the next.
                    let (s, l) = areas[area as usize % areas.len()];
                    let n = (l - s + 1) / PAGE_SIZE;
                    let off = u64::from(off) % n;
                    let pages = u64::from(pages % 12 + 1);
                    let pages = if pages % 3 == 0 { pages } else { pages.min(n - off) };
                    (s + off * PAGE_SIZE, pages * PAGE_SIZE)
                };
                let dst_iova = fixed.map(|f| m.iova(f) & !(PAGE_SIZE - 1));
                let want = self.model_copy(p, dst, src, src_iova, length, dst_iova, perm.rw());
                let mut flags = perm.flags();
                if dst_iova.is_some() {
                    flags |= map_flags::FIXED_IOVA;
                }
                let (r, c) = self.call(
                    p,
                    IoasCopy { flags, dst_ioas_id: dst, src_ioas_id: src, length, dst_iova: dst_iova.unwrap_or(0), src_iova, ..Default::default() },
                );
                let got = r.map(|()| c.dst_iova);
                if let (Ok(at), Ok(_)) = (want, got) {
                    self.commit_copy(p, dst, src, src_iova, length, at, perm.rw());
                }
                (want, got, false)
            }
            Op::AllowIovas { q, ioas, ref ranges } => {
                let p = usize::from(q);
                let id = m.pick(p, ioas);
                let list: Vec<(u64, u64)> = ranges
                    .iter()
                    .take(6)
                    .map(|&(s, l)| {
                        let start = u64::from(s) * 0x10_0000;
                        (start, start + u64::from(l) * 0x10_0000 + 0xf_ffff * u64::from(l != 0))
                    })
                    .collect();
                let want = self.model_allow(p, id, &list);
                let raw: Vec<IovaRange> = list.iter().map(|&(start, last)| IovaRange { start, last }).collect();
                self.sim.hv.write_guest(p, ARRAY, raw.as_bytes()).unwrap();
                let (r, _) = self.call(p, IoasAllowIovas { ioas_id: id, num_iovas: list.len() as u32, allowed_iovas: ARRAY, ..Default::default() });
                if want.is_ok() && r.is_ok() {
                    self.model.parts[p].ioas.get_mut(&id).unwrap().allowed = list;
                }
                (want, r.map(|()| 0), false)
            }
            Op::Attach { dev, to } => {
                let d = dev as usize % m.devs.len();
                let p = m.devs[d].part;
                let pt = m.pick(p, to);
                let want = self.model_attach(d, pt);
                let (r, c) = self.call(p, DeviceAttach { dev_id: m.devs[d].id, pt_id: pt, ..Default::default() });
                let got = r.map(|()| u64::from(c.pt_id));
                if let (Ok(h), Ok(_)) = (want, got) {
                    self.commit_attach(d, pt, h as u32);
                }
                (want, got, false)
            }
            Op::Detach { dev } => {
                let d = dev as usize % m.devs.len();
                let p = m.devs[d].part;
                let (r, _) = self.call(p, DeviceDetach { dev_id: m.devs[d].id, ..Default::default() });
                self.set_hwpt(d, None);
                (Ok(0), r.map(|()| 0), false)
            }
            Op::Destroy { q, id } => {
                let p = usize::from(q);
                let id = m.pick(p, id);
                let want = match m.parts[p].objects.get(&id) {
                    None => Err(Errno::ENOENT),
                    Some(MObj::Device(_) | MObj::Hwpt { .. }) => Err(Errno::EBUSY),
                    Some(MObj::Ioas) if m.parts[p].objects.values().any(|o| matches!(o, MObj::Hwpt { ioas, .. } if *ioas == id)) => Err(Errno::EBUSY),
                    Some(MObj::Ioas) => Ok(0),
                };
                let (r, _) = self.call(p, Destroy { id, ..Default::default() });
                if want.is_ok() && r.is_ok() {
                    let part = &mut self.model.parts[p];
                    part.objects.remove(&id);
                    part.ioas.remove(&id);
                    self.model.gc_sets(p);
                }
                (want, r.map(|()| 0), false)
            }
            Op::Huge { q, ioas, set } => {
                let p = usize::from(q);
                let id = m.pick(p, ioas);
                let cur = m.parts[p].ioas.get(&id).map(|i| !i.no_huge);
                let has_hwpt = m.parts[p].objects.values().any(|o| matches!(o, MObj::Hwpt { ioas, .. } if *ioas == id));
                let want = match (cur, set) {
                    (None, _) => Err(Errno::ENOENT),
                    (Some(on), None) => Ok(u64::from(on)),
                    (Some(true), Some(false)) if has_hwpt && !m.parts[p].ioas[&id].areas.is_empty() => Err(Errno::EINVAL),
                    (Some(_), Some(v)) => Ok(u64::from(v)),
                };
                let cmd = OptionCmd {
                    option_id: option::HUGE_PAGES,
                    op: if set.is_some() { option::OP_SET } else { option::OP_GET },
                    object_id: id,
                    val64: u64::from(set.unwrap_or(false)),
                    ..Default::default()
                };
                let (r, c) = self.call(p, cmd);
                if let (Some(v), Ok(_)) = (set, &want) {
                    self.model.parts[p].ioas.get_mut(&id).unwrap().no_huge = !v;
                }
                (want, r.map(|()| if set.is_some() { u64::from(set == Some(true)) } else { c.val64 }), false)
            }
            Op::Dma { dev, iova, offset, write } => {
                let d = dev as usize % m.devs.len();
                let at = (m.iova(iova) & !(PAGE_SIZE - 1)) | u64::from(offset % 4089);
                self.dma(d, at, write);
                (Ok(0), Ok(0), false)
            }
        }
    }

    fn model_map(&self, p: usize, id: u32, gpa: u64, len: u64, iova: Option<u64>, (_, w): (bool, bool)) -> Result<u64, Errno> {
        let m = &self.model;
        let part = &m.parts[p];
        let ioas = part.ioas.get(&id).ok_or(Errno::ENOENT)?;
        let _ = w;
        gpa.checked_add(len).ok_or(Errno::EOVERFLOW)?;
        let at = match iova {
            Some(i) => {
                let last = i.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
                if m.reserved(p, id).iter().any(|r| intersects(*r, (i, last))) {
                    return Err(Errno::EINVAL);
                }
                if ioas.areas.iter().any(|(s, a)| intersects((*s, a.last), (i, last))) {
                    return Err(Errno::EEXIST);
                }
                i
            }
            None => m.first_fit(p, id, len, gpa).ok_or(Errno::ENOSPC)?,
        };
        if !m.is_ram(p, gpa, len) {
            return Err(Errno::EFAULT);
        }
        if m.pinned(p) + len / PAGE_SIZE > part.pin_limit {
            return Err(Errno::ENOMEM);
        }
        if m.areas_total(p) + 1 > part.max_areas {
            return Err(Errno::ENOMEM);
        }
        Ok(at)
    }

    fn model_unmap(&mut self, p: usize, id: u32, iova: u64, length: u64) -> Result<u64, Errno> {
        let part = &mut self.model.parts[p];
        let ioas = part.ioas.get_mut(&id).ok_or(Errno::ENOENT)?;
        let all = iova == 0 && length == u64::MAX;
        let (first, last) = if all {
            (0, u64::MAX)
        } else {
            if iova == u64::MAX || length == u64::MAX {
                return Err(Errno::EOVERFLOW);
            }
            if length == 0 {
                return Err(Errno::EINVAL);
            }
            (iova, iova.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?)
        };
        let mut bytes = 0;
        let mut count = 0;
        let mut partial = false;
        let victims: Vec<(u64, MArea)> = ioas.areas.iter().filter(|(s, a)| intersects((**s, a.last), (first, last))).map(|(s, a)| (*s, *a)).collect();
        for (s, a) in victims {
            if s < first || a.last > last {
                partial = true;
                break;
            }
            ioas.areas.remove(&s);
            bytes += a.last - s + 1;
            count += 1;
        }
        self.model.gc_sets(p);
        if partial || (count == 0 && !all) { Err(Errno::ENOENT) } else { Ok(bytes) }
    }

    /// The pieces of `[src_iova, +length)` in IOAS `src`: (offset, len, area).
    fn pieces(&self, p: usize, src: u32, src_iova: u64, length: u64) -> Result<Vec<(u64, u64, MArea)>, Errno> {
        let ioas = &self.model.parts[p].ioas[&src];
        let last = src_iova.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?;
        let mut cur = src_iova;
        let mut out = Vec::new();
        loop {
            let Some((s, a)) = ioas.areas.range(..=cur).next_back().filter(|(_, a)| a.last >= cur) else { return Err(Errno::ENOENT) };
            let end = a.last.min(last);
            out.push((cur, end - cur + 1, MArea { gpa: a.gpa + (cur - s), ..*a }));
            if end == last {
                return Ok(out);
            }
            cur = end + 1;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn model_copy(
        &self,
        p: usize,
        dst: u32,
        src: u32,
        src_iova: u64,
        length: u64,
        dst_iova: Option<u64>,
        (_, w): (bool, bool),
    ) -> Result<u64, Errno> {
        let m = &self.model;
        let part = &m.parts[p];
        if !part.ioas.contains_key(&src) {
            return Err(Errno::ENOENT);
        }
        let pieces = self.pieces(p, src, src_iova, length)?;
        let ioas = part.ioas.get(&dst).ok_or(Errno::ENOENT)?;
        let at = match dst_iova {
            Some(i) => {
                let last = i.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?;
                if m.reserved(p, dst).iter().any(|r| intersects(*r, (i, last))) {
                    return Err(Errno::EINVAL);
                }
                if ioas.areas.iter().any(|(s, a)| intersects((*s, a.last), (i, last))) {
                    return Err(Errno::EEXIST);
                }
                i
            }
            None => m.first_fit(p, dst, length, pieces[0].2.gpa).ok_or(Errno::ENOSPC)?,
        };
        for (_, _, a) in &pieces {
            if w && !part.sets[&a.set].writable {
                return Err(Errno::EPERM);
            }
        }
        if m.areas_total(p) + pieces.len() > part.max_areas {
            return Err(Errno::ENOMEM);
        }
        Ok(at)
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_copy(&mut self, p: usize, dst: u32, src: u32, src_iova: u64, length: u64, at: u64, (r, w): (bool, bool)) {
        let pieces = self.pieces(p, src, src_iova, length).unwrap();
        let ioas = self.model.parts[p].ioas.get_mut(&dst).unwrap();
        let mut iova = at;
        for (_, len, a) in pieces {
            ioas.areas.insert(iova, MArea { last: iova + (len - 1), gpa: a.gpa, read: r, write: w, set: a.set });
            iova = iova.wrapping_add(len);
        }
    }

    fn model_allow(&self, p: usize, id: u32, list: &[(u64, u64)]) -> Result<u64, Errno> {
        let m = &self.model;
        if !m.parts[p].ioas.contains_key(&id) {
            return Err(Errno::ENOENT);
        }
        for (i, r) in list.iter().enumerate() {
            if r.0 >= r.1 || list[..i].iter().any(|o| intersects(*o, *r)) {
                return Err(Errno::EINVAL);
            }
        }
        if list.iter().any(|r| m.reserved(p, id).iter().any(|x| intersects(*x, *r))) {
            return Err(Errno::EADDRINUSE);
        }
        Ok(0)
    }

    fn model_attach(&self, d: usize, pt: u32) -> Result<u64, Errno> {
        let m = &self.model;
        let dev = &m.devs[d];
        let part = &m.parts[dev.part];
        let (ioas, given) = match part.objects.get(&pt) {
            None => return Err(Errno::ENOENT),
            Some(MObj::Device(_)) => return Err(Errno::EINVAL),
            Some(MObj::Ioas) => (pt, None),
            Some(MObj::Hwpt { ioas, unit }) => {
                if *unit != dev.unit {
                    return Err(Errno::EINVAL);
                }
                (*ioas, Some(pt))
            }
        };
        let reuse = given.or_else(|| part.objects.iter().find(|(_, o)| **o == MObj::Hwpt { ioas, unit: dev.unit }).map(|(i, _)| *i));
        if dev.hwpt.is_some() && dev.hwpt == reuse {
            return Ok(u64::from(reuse.unwrap()));
        }
        let old_ioas = dev.hwpt.map(|h| match part.objects[&h] {
            MObj::Hwpt { ioas, .. } => ioas,
            _ => unreachable!(),
        });
        if old_ioas != Some(ioas) {
            let io = &part.ioas[&ioas];
            for r in &dev.regions {
                if io.areas.iter().any(|(s, a)| intersects((*s, a.last), *r)) || io.allowed.iter().any(|x| intersects(*x, *r)) {
                    return Err(Errno::EADDRINUSE);
                }
            }
        }
        Ok(u64::from(reuse.unwrap_or_else(|| lowest_free(&part.objects))))
    }

    fn commit_attach(&mut self, d: usize, pt: u32, h: u32) {
        let dev = &self.model.devs[d];
        let (p, unit) = (dev.part, dev.unit);
        let part = &mut self.model.parts[p];
        if !part.objects.contains_key(&h) {
            let ioas = match part.objects[&pt] {
                MObj::Ioas => pt,
                MObj::Hwpt { ioas, .. } => ioas,
                MObj::Device(_) => unreachable!(),
            };
            part.objects.insert(h, MObj::Hwpt { ioas, unit });
        }
        self.set_hwpt(d, Some(h));
    }

    /// Move device `d` to `h`, freeing an HWPT its last device leaves.
    fn set_hwpt(&mut self, d: usize, h: Option<u32>) {
        let old = std::mem::replace(&mut self.model.devs[d].hwpt, h);
        let p = self.model.devs[d].part;
        if let Some(o) = old.filter(|o| Some(*o) != h) {
            if !self.model.devs.iter().any(|x| x.part == p && x.hwpt == Some(o)) {
                self.model.parts[p].objects.remove(&o);
            }
        }
    }

    /// A DMA of 8 bytes by device `d` at `iova`, through its unit's IOTLB
    /// and walk: it must reach what the model says, or fault.
    fn dma(&mut self, d: usize, iova: u64, write: bool) {
        let want = self.model.translate(d, iova).filter(|&(_, r, w)| if write { w } else { r });
        let (unit, rid) = (self.model.devs[d].unit, self.model.devs[d].rid);
        let pattern = iova.to_le_bytes().map(|b| b ^ 0xa5);
        if let (Some((hpa, ..)), false) = (want, write) {
            sluice_kernel::hv::PhysMem::write(self.sim.hv.machine().ram, Hpa(hpa), &pattern);
        }
        let m = self.sim.hv.machine();
        let res = m.units[unit].dma(rid, iova, 8, write, m.mem);
        match (want, res) {
            (None, Err(_)) => {}
            (Some((hpa, ..)), Ok(pieces)) => {
                let mut off = 0;
                for (pa, n) in pieces {
                    // 8 bytes within one page of one area: one piece.
                    assert_eq!(pa, hpa + off, "device {d} DMA at {iova:#x}");
                    if write {
                        sluice_kernel::hv::PhysMem::write(m.ram, Hpa(pa), &pattern[off as usize..(off + n) as usize]);
                    } else {
                        let mut got = [0u8; 8];
                        sluice_kernel::hv::PhysMem::read(&*m.ram, Hpa(pa), &mut got[..n as usize]);
                        assert_eq!(got[..n as usize], pattern[off as usize..(off + n) as usize]);
                    }
                    off += n;
                }
            }
            (w, r) => panic!("device {d} DMA {} at {iova:#x}: model {w:x?}, unit {r:x?}\nlog: {:#?}", if write { "write" } else { "read" }, self.log),
        }
        self.sim.hv.poll_faults();
        // Keep the fault queues short: drop what the DMAs recorded.
        for p in 0..self.sim.hv.partition_count() {
            let n = self.sim.hv.pending_faults(p);
            let _ = self.sim.hv.take_faults(p, n);
        }
    }

    /// Every check that does not depend on the op.
    fn check(&mut self) {
        if let Err(e) = self.sim.invariants() {
            panic!("invariant: {e}\nlog: {:#?}", self.log);
        }
        let hv = &self.sim.hv;
        for p in 0..hv.partition_count() {
            assert_eq!(hv.partition(p).pinned(), self.model.pinned(p), "partition {p} pins\nlog: {:#?}", self.log);
        }
        // What each device's unit walks (its context, the table bytes).
        let mut samples: Vec<u64> = vec![0, 0x1000, MIB2, GIB, 0xfee0_0000, 1 << 39, 1 << 40];
        for (s, l) in self.model.all_areas() {
            samples.extend([s, l & !(PAGE_SIZE - 1), (s + (l - s) / 2) & !(PAGE_SIZE - 1), s.wrapping_sub(PAGE_SIZE), l.wrapping_add(1)]);
        }
        for (d, dev) in self.model.devs.iter().enumerate() {
            let ctx = hv.units()[dev.unit].context(dev.rid).copied();
            assert_eq!(ctx.is_some(), dev.hwpt.is_some(), "device {d} blocked or not\nlog: {:#?}", self.log);
            for &iova in &samples {
                let want = self.model.translate(d, iova);
                let got = ctx.and_then(|c| SimUnit::walk(&c, iova, hv.table_memory()).ok()).map(|w| (w.pa, w.read, w.write));
                assert_eq!(got, want, "device {d} at {iova:#x}\nlog: {:#?}", self.log);
            }
        }
        // IOVA_RANGES through the decoder.
        for p in 0..self.sim.hv.partition_count() {
            for id in self.model.ioas_ids(p) {
                let (r, c) = self.call(p, IoasIovaRanges { ioas_id: id, num_iovas: 16, allowed_iovas: ARRAY, ..Default::default() });
                assert_eq!(r, Ok(()));
                let mut raw = vec![0u8; 16 * c.num_iovas as usize];
                self.sim.hv.read_guest(p, ARRAY, &mut raw).unwrap();
                let got: Vec<(u64, u64)> = <[IovaRange]>::ref_from_bytes(&raw).unwrap().iter().map(|r| (r.start, r.last)).collect();
                assert_eq!(got, self.model.usable(p, id), "IOVA_RANGES of {p}/{id}\nlog: {:#?}", self.log);
                assert_eq!(c.out_iova_alignment, PAGE_SIZE);
            }
        }
    }
}

/// How often each op kind ran and succeeded (printed by the coverage test).
mod stats {
    use std::sync::Mutex;

    use super::{Errno, Op};

    pub static COUNTS: Mutex<Vec<(String, u64, u64)>> = Mutex::new(Vec::new());

    pub fn record(op: &Op, got: &Result<u64, Errno>) {
        let name =
            format!("{op:?}").split([' ', '{']).next().unwrap_or("").to_string() + &got.err().map(|e| format!(" {}", e.name())).unwrap_or_default();
        let mut c = COUNTS.lock().unwrap();
        let i = match c.iter().position(|(n, ..)| *n == name) {
            Some(i) => i,
            None => {
                c.push((name, 0, 0));
                c.len() - 1
            }
        };
        c[i].1 += 1;
        c[i].2 += u64::from(got.is_ok());
    }
}

/// Every live table page's bytes and the set of free ones.
fn tables_digest(sim: &Sim) -> String {
    let mem = sim.hv.table_memory();
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
    format!("tables {live:?} {h:#x}")
}

fn run_bytes(bytes: &[u8]) {
    let mut u = Unstructured::new(bytes);
    let mut rig = Rig::new();
    rig.fixture();
    for _ in 0..64 {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        rig.apply(&op);
        if u.is_empty() {
            break;
        }
    }
    // Everything goes: no pin and no table page may be left.
    for d in 0..rig.model.devs.len() {
        rig.apply(&Op::Detach { dev: d as u8 });
    }
    for p in 0..2 {
        for id in rig.model.ioas_ids(p) {
            let (r, _) = rig.call(p, Destroy { id, ..Default::default() });
            assert_eq!(r, Ok(()));
        }
        assert_eq!(rig.sim.hv.partition(p).pinned(), 0);
    }
    assert_eq!(rig.sim.hv.table_memory().in_use(), 0, "every table page was freed");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, max_shrink_iters: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn op_sequences_match_the_model(bytes in prop::collection::vec(any::<u8>(), 64..1536)) {
        run_bytes(&bytes);
        if std::env::var_os("MODEL_STATS").is_some() {
            eprintln!("{:?}", stats::COUNTS.lock().unwrap());
        }
    }
}

/// A fixed sequence touching every op, so the model test never degenerates
/// to failures only.
#[test]
fn every_op_succeeds_in_a_scripted_sequence() {
    let mut rig = Rig::new();
    let ops = [
        Op::IoasAlloc { q: false },
        Op::IoasAlloc { q: false },
        Op::IoasAlloc { q: true },
        Op::Attach { dev: 0, to: ioas(0) },
        Op::Attach { dev: 1, to: ioas(0) },
        Op::Map { q: false, ioas: ioas(0), ram: 0, page: 0x200, pages: 1, huge: true, fixed: None, perm: PermPick::Rw },
        Op::Map { q: false, ioas: ioas(0), ram: 1, page: 3, pages: 3, huge: false, fixed: Some(IovaPick::AfterArea(0, 0)), perm: PermPick::W },
        Op::Map { q: false, ioas: ioas(0), ram: 0, page: 0x10, pages: 2, huge: false, fixed: None, perm: PermPick::R },
        Op::Copy { q: false, dst: ioas(1), src: ioas(0), area: 0, off: 1, pages: 4, fixed: None, perm: PermPick::R },
        Op::Attach { dev: 2, to: ioas(1) },
        Op::Attach { dev: 0, to: ioas(1) },
        Op::AllowIovas { q: true, ioas: ioas(0), ranges: vec![(1, 2), (8, 1)] },
        Op::Map { q: true, ioas: ioas(0), ram: 0, page: 5, pages: 4, huge: false, fixed: None, perm: PermPick::Rw },
        Op::Attach { dev: 3, to: ioas(0) },
        Op::Dma { dev: 3, iova: IovaPick::Page(16), offset: 8, write: true },
        Op::Dma { dev: 0, iova: IovaPick::InArea(1, 0), offset: 100, write: false },
        Op::Dma { dev: 1, iova: IovaPick::InArea(0, 1), offset: 0, write: true },
        Op::Huge { q: false, ioas: ioas(1), set: None },
        Op::Huge { q: false, ioas: ioas(1), set: Some(false) },
        Op::Unmap { q: false, ioas: ioas(0), what: UnmapPick::From(0, 3) },
        Op::Unmap { q: false, ioas: ioas(0), what: UnmapPick::Area(1) },
        Op::Destroy { q: false, id: hwpt(0) },
        Op::Detach { dev: 0 },
        Op::Detach { dev: 1 },
        Op::Destroy { q: false, id: ioas(0) },
        Op::Unmap { q: false, ioas: ioas(0), what: UnmapPick::All },
    ];
    let mut ok = 0;
    for op in &ops {
        let (want, got, _) = {
            rig.log.push(format!("{op:?}"));
            let before = rig.state();
            let r = rig.step(op);
            if r.1.is_err() && !r.2 {
                assert_eq!(rig.state(), before);
            }
            r
        };
        assert_eq!(got, want, "{op:?}\nlog: {:#?}", rig.log);
        ok += usize::from(got.is_ok());
        rig.check();
    }
    assert!(ok >= ops.len() - 4, "{ok} of {} ops succeeded\nlog: {:#?}", ops.len(), rig.log);
}
