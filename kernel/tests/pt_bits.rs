//! Bit-exact checks of entries the engine writes, against the layouts in the
//! VT-d specification (9.8) and the Arm ARM (D8.3), with the expected words
//! written out by hand from those layouts.

use sluice_kernel::pt::{ArmStage1, ArmStage2, Format, Gather, LeafSizes, PageTable, Perm, TableMemory, VecTableMemory, VtdSecondLevel};
use sluice_kernel::{Hpa, Iova};

const POOL: u64 = 0x40_0000_0000;
const RW: Perm = Perm::READ.union(Perm::WRITE);

/// The raw entry at `index` of the table reached by following `path`
/// (entry indices from the root).
fn entry<F: Format>(pt: &PageTable<F>, mem: &VecTableMemory, path: &[usize], index: usize) -> u64 {
    let mut table = pt.root().raw();
    for &i in path {
        table = mem.read_u64(table + 8 * i as u64).unwrap() & 0x000f_ffff_ffff_f000;
    }
    mem.read_u64(table + 8 * index as u64).unwrap()
}

fn map<F: Format>(pt: &mut PageTable<F>, mem: &mut VecTableMemory, iova: u64, hpa: u64, len: u64, perm: Perm) {
    pt.map(mem, Iova(iova), Hpa(hpa), len, perm, &mut Gather::new()).unwrap();
}

#[test]
fn vtd_four_level_entries() {
    let mut mem = VecTableMemory::new(Hpa(POOL));
    let fmt = VtdSecondLevel::new(4, 48, LeafSizes::all(), false).unwrap();
    assert_eq!(fmt.context_aw(), 2);
    let mut pt = PageTable::new(fmt, &mut mem).unwrap();
    map(&mut pt, &mut mem, 0x1000, 0x1234_5000, 0x1000, RW);
    map(&mut pt, &mut mem, 0x20_0000, 0x4060_0000, 0x20_0000, Perm::WRITE);
    map(&mut pt, &mut mem, 0x4000_0000, 0x8000_0000, 0x4000_0000, Perm::READ);
    // Tables: root = POOL, then one table per level allocated in order.
    // Non-leaf entries: address | R | W.
    assert_eq!(entry(&pt, &mem, &[], 0), (POOL + 0x1000) | 0b11);
    assert_eq!(entry(&pt, &mem, &[0], 0), (POOL + 0x2000) | 0b11);
    assert_eq!(entry(&pt, &mem, &[0, 0], 0), (POOL + 0x3000) | 0b11);
    // 4 KiB leaf (SL-PTE): address | W | R.
    assert_eq!(entry(&pt, &mem, &[0, 0, 0], 1), 0x1234_5003);
    // 2 MiB leaf (SL-PDE with PS, bit 7): W only.
    assert_eq!(entry(&pt, &mem, &[0, 0], 1), 0x4060_0000 | 1 << 7 | 0b10);
    // 1 GiB leaf (SL-PDPE with PS): R only.
    assert_eq!(entry(&pt, &mem, &[0], 1), 0x8000_0000 | 1 << 7 | 0b01);
}

#[test]
fn vtd_snoop_only_in_leaves_and_only_when_asked() {
    let mut mem = VecTableMemory::new(Hpa(POOL));
    let mut pt = PageTable::new(VtdSecondLevel::new(3, 39, LeafSizes::SZ_2M, true).unwrap(), &mut mem).unwrap();
    map(&mut pt, &mut mem, 0x7f_c000_0000 - 0x1000, 0x5000, 0x1000, RW);
    // 3 levels: root indexes bits 38:30.
    assert_eq!(entry(&pt, &mem, &[], 0x1fe), (POOL + 0x1000) | 0b11);
    assert_eq!(entry(&pt, &mem, &[0x1fe], 0x1ff), (POOL + 0x2000) | 0b11);
    assert_eq!(entry(&pt, &mem, &[0x1fe, 0x1ff], 0x1ff), 0x5000 | 1 << 11 | 0b11);
}

#[test]
fn arm_stage2_entries() {
    let mut mem = VecTableMemory::new(Hpa(POOL));
    let fmt = ArmStage2::new(40, 44, LeafSizes::all()).unwrap();
    assert_eq!((fmt.t0sz(), fmt.sl0(), fmt.geometry().levels), (24, 2, 4));
    let mut pt = PageTable::new(fmt, &mut mem).unwrap();
    map(&mut pt, &mut mem, 0x1000, 0x1234_5000, 0x1000, RW);
    map(&mut pt, &mut mem, 0x2000, 0x1234_6000, 0x1000, Perm::READ);
    map(&mut pt, &mut mem, 0x3000, 0x1234_7000, 0x1000, Perm::WRITE);
    map(&mut pt, &mut mem, 0x20_0000, 0x4060_0000, 0x20_0000, RW);
    map(&mut pt, &mut mem, 0x4000_0000, 0x8000_0000, 0x4000_0000, Perm::READ);
    // Table descriptor: address | 0b11.
    assert_eq!(entry(&pt, &mem, &[], 0), (POOL + 0x1000) | 0b11);
    // Page: 0b11, MemAttr 0b1111 (normal WB) [5:2], S2AP [7:6], SH 0b11 [9:8], AF [10].
    assert_eq!(entry(&pt, &mem, &[0, 0, 0], 1), 0x1234_5000 | 0b11 | 0b1111 << 2 | 0b11 << 6 | 0b11 << 8 | 1 << 10);
    assert_eq!(entry(&pt, &mem, &[0, 0, 0], 1), 0x1234_57ff);
    assert_eq!(entry(&pt, &mem, &[0, 0, 0], 2), 0x1234_6000 | 0b11 | 0b1111 << 2 | 0b01 << 6 | 0b11 << 8 | 1 << 10);
    assert_eq!(entry(&pt, &mem, &[0, 0, 0], 3), 0x1234_7000 | 0b11 | 0b1111 << 2 | 0b10 << 6 | 0b11 << 8 | 1 << 10);
    // Blocks: 0b01.
    assert_eq!(entry(&pt, &mem, &[0, 0], 1), 0x4060_07fd);
    assert_eq!(entry(&pt, &mem, &[0], 1), 0x8000_0000 | 0b01 | 0b1111 << 2 | 0b01 << 6 | 0b11 << 8 | 1 << 10);
}

#[test]
fn arm_stage2_three_levels_for_small_ipa() {
    let fmt = ArmStage2::new(36, 40, LeafSizes::all()).unwrap();
    assert_eq!((fmt.t0sz(), fmt.sl0(), fmt.geometry().levels), (28, 1, 3));
    let fmt = ArmStage2::new(32, 40, LeafSizes::all()).unwrap();
    assert_eq!((fmt.t0sz(), fmt.sl0(), fmt.geometry().levels), (32, 1, 3));
    let fmt = ArmStage2::new(48, 48, LeafSizes::all()).unwrap();
    assert_eq!((fmt.t0sz(), fmt.sl0(), fmt.geometry().levels), (16, 2, 4));
    assert!(ArmStage2::new(31, 40, LeafSizes::all()).is_err());
    assert!(ArmStage2::new(49, 40, LeafSizes::all()).is_err());
    assert!(ArmStage2::new(40, 52, LeafSizes::all()).is_err());
}

#[test]
fn arm_stage1_entries() {
    let mut mem = VecTableMemory::new(Hpa(POOL));
    let fmt = ArmStage1::new(48, 44, LeafSizes::all(), 1).unwrap();
    assert_eq!(fmt.t0sz(), 16);
    let mut pt = PageTable::new(fmt, &mut mem).unwrap();
    map(&mut pt, &mut mem, 0x1000, 0x1234_5000, 0x1000, RW);
    map(&mut pt, &mut mem, 0x2000, 0x1234_6000, 0x1000, Perm::READ);
    map(&mut pt, &mut mem, 0x3000, 0x1234_7000, 0x1000, Perm::WRITE);
    map(&mut pt, &mut mem, 0x20_0000, 0x4060_0000, 0x20_0000, Perm::READ);
    // Page: 0b11, AttrIndx 1 [4:2], AP[1] (EL0) bit 6, SH 0b11, AF, nG bit 11, PXN 53, UXN 54.
    let rw = 0x1234_5000 | 0b11 | 1 << 2 | 1 << 6 | 0b11 << 8 | 1 << 10 | 1 << 11 | 1 << 53 | 1 << 54;
    assert_eq!(entry(&pt, &mem, &[0, 0, 0], 1), rw);
    assert_eq!(entry(&pt, &mem, &[0, 0, 0], 1), 0x0060_0000_1234_5f47);
    // Read-only: AP[2], bit 7.
    assert_eq!(entry(&pt, &mem, &[0, 0, 0], 2), 0x0060_0000_1234_6fc7);
    // Stage 1 cannot say write-only: it is read-write.
    assert_eq!(entry(&pt, &mem, &[0, 0, 0], 3), 0x0060_0000_1234_7f47);
    assert_eq!(pt.translate(&mem, Iova(0x3000)).unwrap().perm, RW);
    // 2 MiB block: 0b01, read-only.
    assert_eq!(entry(&pt, &mem, &[0, 0], 1), 0x0060_0000_4060_0fc5);
}

#[test]
fn cache_maintenance_hook_sees_every_written_entry() {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    struct Recording {
        inner: VecTableMemory,
        synced: RefCell<BTreeSet<(u64, usize)>>,
    }
    impl TableMemory for Recording {
        fn alloc_table(&mut self) -> Option<Hpa> {
            self.inner.alloc_table()
        }
        fn free_table(&mut self, t: Hpa) {
            self.inner.free_table(t);
        }
        fn table(&self, t: Hpa) -> &sluice_kernel::pt::Table {
            self.inner.table(t)
        }
        fn sync_entries(&self, t: Hpa, first: usize, count: usize) {
            self.synced.borrow_mut().extend((first..first + count).map(|i| (t.raw(), i)));
        }
    }
    let mut mem = Recording { inner: VecTableMemory::new(Hpa(POOL)), synced: RefCell::default() };
    let mut pt = PageTable::new(VtdSecondLevel::new(4, 48, LeafSizes::all(), false).unwrap(), &mut mem).unwrap();
    let mut g = Gather::new();
    pt.map(&mut mem, Iova(0x1ff000), Hpa(0x10_0000), 0x3000, RW, &mut g).unwrap();
    // Every non-zero entry now in the tables was reported.
    let mut written = BTreeSet::new();
    pt.for_each_table(&mem, |_, t| {
        for i in 0..512 {
            if mem.inner.read_u64(t.raw() + 8 * i as u64).unwrap() != 0 {
                written.insert((t.raw(), i));
            }
        }
    });
    // Links root->L3, L3->L2, L2->two leaf tables (the range crosses 2 MiB), 3 leaves.
    assert_eq!(written.len(), 4 + 3);
    assert!(written.is_subset(&mem.synced.borrow()));
    // Clearing reports too.
    mem.synced.borrow_mut().clear();
    pt.unmap(&mut mem, Iova(0x1ff000), 0x3000, &mut g).unwrap();
    for w in &written {
        assert!(mem.synced.borrow().contains(w), "cleared entry {w:x?} not synced");
    }
}
