//! The engine against a simple model: random map/unmap sequences in every
//! format; after each step the tables (read back by the independent spec
//! walkers) must translate exactly what the model says, with the leaf sizes
//! ABI.md rule 5 prescribes, and table memory must return to the root.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sluice_kernel::hwwalk::vmsa::{self, Stage, VmsaConfig};
use sluice_kernel::hwwalk::vtd::{self, VtdConfig};
use sluice_kernel::hwwalk::{Walk, WalkFault};
use sluice_kernel::pt::{ArmStage1, ArmStage2, Format, Gather, LeafSizes, PageTable, Perm, Pte, PtError, VecTableMemory, VtdSecondLevel};
use sluice_kernel::{Hpa, Iova};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
const IOVA_SPACE: u64 = 8 * G1;
const HPA_SPACE: u64 = 64 * G1;
const POOL: u64 = 0x40_0000_0000;

type Walker = fn(root: u64, iova: u64, mem: &VecTableMemory) -> Result<Walk, WalkFault>;

fn vtd4() -> (VtdSecondLevel, Walker) {
    let w: Walker = |r, i, m| vtd::translate(&VtdConfig { aw: 2, haw: 48, sllps: 3, snoop: false }, r, i, m);
    (VtdSecondLevel::new(4, 48, LeafSizes::all(), false).unwrap(), w)
}
fn vtd3_2m_snoop() -> (VtdSecondLevel, Walker) {
    let w: Walker = |r, i, m| vtd::translate(&VtdConfig { aw: 1, haw: 39, sllps: 1, snoop: true }, r, i, m);
    (VtdSecondLevel::new(3, 39, LeafSizes::SZ_2M, true).unwrap(), w)
}
fn s2_40() -> (ArmStage2, Walker) {
    let w: Walker = |r, i, m| vmsa::translate(&VmsaConfig { stage: Stage::Two { t0sz: 24, sl0: 2 }, oa_bits: 44 }, r, i, m);
    (ArmStage2::new(40, 44, LeafSizes::all()).unwrap(), w)
}
fn s2_36_no_blocks() -> (ArmStage2, Walker) {
    let w: Walker = |r, i, m| vmsa::translate(&VmsaConfig { stage: Stage::Two { t0sz: 28, sl0: 1 }, oa_bits: 40 }, r, i, m);
    (ArmStage2::new(36, 40, LeafSizes::empty()).unwrap(), w)
}
fn s1_48() -> (ArmStage1, Walker) {
    let w: Walker = |r, i, m| vmsa::translate(&VmsaConfig { stage: Stage::One { t0sz: 16 }, oa_bits: 44 }, r, i, m);
    (ArmStage1::new(48, 44, LeafSizes::all(), 0).unwrap(), w)
}
fn s1_39_1g() -> (ArmStage1, Walker) {
    let w: Walker = |r, i, m| vmsa::translate(&VmsaConfig { stage: Stage::One { t0sz: 25 }, oa_bits: 44 }, r, i, m);
    (ArmStage1::new(39, 44, LeafSizes::SZ_1G, 3).unwrap(), w)
}

#[derive(Clone, Debug)]
enum Op {
    Map { iova: u64, hpa: u64, len: u64, perm: u8 },
    Unmap { iova: u64, len: u64 },
    UnmapArea { pick: usize },
    Huge(bool),
}

fn address(space: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        (0..space / K4).prop_map(|p| p * K4),
        (0..space / M2).prop_map(|p| p * M2),
        (0..space / G1).prop_map(|p| p * G1),
    ]
}

fn length() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (1u64..=40).prop_map(|n| n * K4),
        2 => (1u64..=3, 0u64..=2).prop_map(|(m, p)| m * M2 + p * K4),
        1 => (0u64..=1).prop_map(|m| G1 + m * M2),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (address(IOVA_SPACE - 2 * G1), address(HPA_SPACE - 2 * G1), length(), 0u8..4)
            .prop_map(|(iova, hpa, len, perm)| Op::Map { iova, hpa, len, perm }),
        2 => (address(IOVA_SPACE - 2 * G1), length()).prop_map(|(iova, len)| Op::Unmap { iova, len }),
        3 => any::<usize>().prop_map(|pick| Op::UnmapArea { pick }),
        1 => any::<bool>().prop_map(Op::Huge),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Leaf {
    size: u64,
    hpa: u64,
    perm: Perm,
}

#[derive(Default)]
struct Model {
    leaves: BTreeMap<u64, Leaf>,
    areas: Vec<(u64, u64)>,
}

impl Model {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.leaves.range(start..end).next().is_some()
            || self.leaves.range(..start).next_back().is_some_and(|(s, l)| s + l.size > start)
    }

    fn containing(&self, iova: u64) -> Option<(u64, Leaf)> {
        self.leaves.range(..=iova).next_back().filter(|(s, l)| *s + l.size > iova).map(|(s, l)| (*s, *l))
    }

    /// ABI.md rule 5: the largest leaf allowed for which IOVA, address and
    /// remaining length are multiples of its size.
    fn map(&mut self, fmt: &impl Format, huge: bool, iova: u64, hpa: u64, len: u64, perm: Perm) {
        let (mut p, mut h, end) = (iova, hpa, iova + len);
        while p < end {
            let size = [G1, M2, K4]
                .into_iter()
                .zip([2u32, 1, 0])
                .find(|&(s, level)| {
                    (level == 0 || (huge && fmt.geometry().leaf_sizes.allows(level))) && p % s == 0 && h % s == 0 && end - p >= s
                })
                .unwrap()
                .0;
            self.leaves.insert(p, Leaf { size, hpa: h, perm: fmt.effective_perm(perm) });
            p += size;
            h += size;
        }
        self.areas.push((iova, len));
    }

    fn unmap(&mut self, start: u64, end: u64) -> Result<u64, PtError> {
        if let Some((s, _)) = self.containing(start) {
            if s < start {
                return Err(PtError::SplitsLeaf(Iova(start)));
            }
        }
        if let Some((s, l)) = self.containing(end - 1) {
            if s + l.size > end {
                return Err(PtError::SplitsLeaf(Iova(end - 1)));
            }
        }
        let gone: Vec<u64> = self.leaves.range(start..end).map(|(s, _)| *s).collect();
        let mut bytes = 0;
        for s in gone {
            bytes += self.leaves.remove(&s).unwrap().size;
        }
        self.areas.retain(|&(a, l)| a + l <= start || a >= end);
        Ok(bytes)
    }
}

struct Rig<F: Format> {
    pt: PageTable<F>,
    mem: VecTableMemory,
    walk: Walker,
    model: Model,
}

impl<F: Format + Copy> Rig<F> {
    fn new((fmt, walk): (F, Walker)) -> Self {
        let mut mem = VecTableMemory::new(Hpa(POOL));
        let pt = PageTable::new(fmt, &mut mem).unwrap();
        Self { pt, mem, walk, model: Model::default() }
    }

    fn apply(&mut self, op: &Op) {
        let mut g = Gather::new();
        match *op {
            Op::Map { iova, hpa, len, perm } => {
                let perm = Perm::from_bits_truncate(perm);
                let got = self.pt.map(&mut self.mem, Iova(iova), Hpa(hpa), len, perm, &mut g);
                if perm.is_empty() {
                    assert_eq!(got, Err(PtError::NoPermission));
                } else if self.model.overlaps(iova, iova + len) {
                    assert!(matches!(got, Err(PtError::Exists(_))), "overlapping map gave {got:?}");
                } else {
                    assert_eq!(got, Ok(()));
                    let fmt = *self.pt.format();
                    self.model.map(&fmt, self.pt.huge_pages(), iova, hpa, len, perm);
                }
            }
            Op::Unmap { iova, len } => {
                let want = self.model.unmap(iova, iova + len);
                assert_eq!(self.pt.unmap(&mut self.mem, Iova(iova), len, &mut g), want);
            }
            Op::UnmapArea { pick } => {
                if self.model.areas.is_empty() {
                    return;
                }
                let (iova, len) = self.model.areas[pick % self.model.areas.len()];
                let want = self.model.unmap(iova, iova + len);
                assert!(want.is_ok());
                assert_eq!(self.pt.unmap(&mut self.mem, Iova(iova), len, &mut g), want);
            }
            Op::Huge(on) => self.pt.set_huge_pages(on),
        }
        g.release(&mut self.mem);
        self.check();
    }

    fn expect_at(&self, iova: u64) {
        let engine = self.pt.translate(&self.mem, Iova(iova));
        let hw = (self.walk)(self.pt.root().raw(), iova, &self.mem);
        match self.model.containing(iova) {
            Some((start, leaf)) => {
                let pa = leaf.hpa + (iova - start);
                let t = engine.unwrap_or_else(|| panic!("engine: {iova:#x} unmapped, model has {leaf:x?}"));
                assert_eq!((t.hpa.raw(), t.size, t.leaf_iova.raw(), t.perm), (pa, leaf.size, start, leaf.perm));
                let w = hw.unwrap_or_else(|e| panic!("hardware walk of {iova:#x}: {e:?}"));
                assert_eq!((w.pa, w.page_size), (pa, leaf.size), "hardware walk of {iova:#x}");
                assert_eq!((w.read, w.write), (leaf.perm.contains(Perm::READ), leaf.perm.contains(Perm::WRITE)));
            }
            None => {
                assert_eq!(engine, None, "engine translates unmapped {iova:#x}");
                assert!(matches!(hw, Err(WalkFault::NotPresent { .. })), "hardware walk of unmapped {iova:#x}: {hw:?}");
            }
        }
    }

    fn check(&self) {
        // Every table is reachable, none but the root is empty, and the
        // leaves in the tree are the model's, no more.
        let fmt = self.pt.format();
        let (mut tables, mut leaves, mut bytes) = (0, 0u64, 0u64);
        self.pt.for_each_table(&self.mem, |level, t| {
            tables += 1;
            let mut present = 0;
            for i in 0..512u64 {
                let e = self.mem.read_u64(t.raw() + 8 * i).unwrap();
                match fmt.decode(level, e) {
                    Pte::Absent => assert_eq!(e, 0, "non-present entry with stray bits"),
                    Pte::Leaf { .. } => {
                        present += 1;
                        leaves += 1;
                        bytes += 1 << (12 + 9 * level);
                    }
                    Pte::Table(_) => present += 1,
                }
            }
            assert!(present > 0 || t == self.pt.root(), "empty table {t:#x} left at level {level}");
        });
        assert_eq!(tables, self.mem.in_use(), "table pages leaked");
        assert_eq!(leaves, self.model.leaves.len() as u64);
        assert_eq!(bytes, self.model.leaves.values().map(|l| l.size).sum::<u64>());
        // Translations: both ends of (a sample of) the model's leaves, and
        // the pages just outside them.
        let step = (self.model.leaves.len() / 256).max(1);
        for (&start, leaf) in self.model.leaves.iter().step_by(step) {
            for iova in [start, start + leaf.size - 8, start.wrapping_sub(K4), start + leaf.size] {
                if iova < IOVA_SPACE {
                    self.expect_at(iova);
                }
            }
        }
    }

    fn unmap_everything(&mut self) {
        let mut g = Gather::new();
        self.pt.unmap(&mut self.mem, Iova(0), IOVA_SPACE, &mut g).unwrap();
        g.release(&mut self.mem);
        self.model.leaves.clear();
        self.model.areas.clear();
        self.check();
        assert_eq!(self.mem.in_use(), 1, "only the root is left");
    }
}

fn run<F: Format + Copy>(cfg: (F, Walker), ops: &[Op]) {
    let mut rig = Rig::new(cfg);
    for op in ops {
        rig.apply(op);
    }
    rig.unmap_everything();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn vtd_4level(ops in prop::collection::vec(op(), 1..40)) { run(vtd4(), &ops); }
    #[test]
    fn vtd_3level_2m_only(ops in prop::collection::vec(op(), 1..40)) { run(vtd3_2m_snoop(), &ops); }
    #[test]
    fn stage2_40bit(ops in prop::collection::vec(op(), 1..40)) { run(s2_40(), &ops); }
    #[test]
    fn stage2_36bit_no_blocks(ops in prop::collection::vec(op(), 1..40)) { run(s2_36_no_blocks(), &ops); }
    #[test]
    fn stage1_48bit(ops in prop::collection::vec(op(), 1..40)) { run(s1_48(), &ops); }
    #[test]
    fn stage1_39bit_1g_only(ops in prop::collection::vec(op(), 1..40)) { run(s1_39_1g(), &ops); }
}

/// Snapshot of every reachable table's bytes.
fn snapshot<F: Format>(pt: &PageTable<F>, mem: &VecTableMemory) -> Vec<(u32, u64, Vec<u64>)> {
    let mut out = Vec::new();
    pt.for_each_table(mem, |level, t| {
        out.push((level, t.raw(), (0..512).map(|i| mem.read_u64(t.raw() + 8 * i).unwrap()).collect()));
    });
    out
}

fn fail_every_allocation<F: Format + Copy>(cfg: (F, Walker)) {
    let mut rig = Rig::new(cfg);
    // Something already there, sharing tables with what follows.
    rig.apply(&Op::Map { iova: 0x3fe0_0000, hpa: 0x1000_0000, len: 0x1000, perm: 3 });
    let before = snapshot(&rig.pt, &rig.mem);
    // This map crosses a 1 GiB boundary and, with IOVA and address aligned
    // differently, needs 4 KiB leaves: one new level-1 table per 2 MiB.
    let (iova, hpa, len) = (0x3fe0_1000, 0x2000_3000, 0x60_0000);
    let mut n = 0;
    loop {
        let mut g = Gather::new();
        rig.mem.fail_from(Some(rig.mem.allocations() + n));
        let got = rig.pt.map(&mut rig.mem, Iova(iova), Hpa(hpa), len, Perm::READ, &mut g);
        rig.mem.fail_from(None);
        g.release(&mut rig.mem);
        if got.is_ok() {
            break;
        }
        assert_eq!(got, Err(PtError::NoMemory));
        assert_eq!(snapshot(&rig.pt, &rig.mem), before, "state changed after failing allocation {n}");
        assert_eq!(rig.mem.in_use(), before.len());
        rig.check();
        n += 1;
    }
    assert!(n >= 4, "the map needed only {n} tables");
    rig.model.map(&rig.pt.format().clone(), true, iova, hpa, len, Perm::READ);
    rig.check();
    rig.unmap_everything();
}

#[test]
fn allocation_failure_changes_nothing_vtd() {
    fail_every_allocation(vtd4());
    fail_every_allocation(vtd3_2m_snoop());
}

#[test]
fn allocation_failure_changes_nothing_arm() {
    fail_every_allocation(s2_40());
    fail_every_allocation(s1_48());
}
