//! Each engine error, and the operations the property test does not reach.

use sluice_kernel::pt::{ArmStage2, Gather, LeafSizes, PageTable, Perm, PtError, VecTableMemory, VtdSecondLevel};
use sluice_kernel::{Hpa, Iova};

const RW: Perm = Perm::READ.union(Perm::WRITE);

fn vtd3() -> (PageTable<VtdSecondLevel>, VecTableMemory) {
    let mut mem = VecTableMemory::new(Hpa(0x40_0000_0000));
    let pt = PageTable::new(VtdSecondLevel::new(3, 39, LeafSizes::all(), false).unwrap(), &mut mem).unwrap();
    (pt, mem)
}

#[test]
fn map_refuses_bad_arguments_without_touching_the_table() {
    let (mut pt, mut mem) = vtd3();
    let mut g = Gather::new();
    let mut try_map = |iova: u64, hpa: u64, len: u64, perm: Perm| pt.map(&mut mem, Iova(iova), Hpa(hpa), len, perm, &mut g);
    assert_eq!(try_map(0x1000, 0x1000, 0, RW), Err(PtError::Unaligned));
    assert_eq!(try_map(0x1800, 0x1000, 0x1000, RW), Err(PtError::Unaligned));
    assert_eq!(try_map(0x1000, 0x1800, 0x1000, RW), Err(PtError::Unaligned));
    assert_eq!(try_map(0x1000, 0x1000, 0x1800, RW), Err(PtError::Unaligned));
    assert_eq!(try_map(0x1000, 0x1000, 0x1000, Perm::empty()), Err(PtError::NoPermission));
    // 3 levels: the input space ends at 2^39.
    assert_eq!(try_map((1 << 39) - 0x1000, 0, 0x2000, RW), Err(PtError::InputOutOfRange));
    assert_eq!(try_map(u64::MAX - 0xfff, 0, 0x1000, RW), Err(PtError::InputOutOfRange));
    // Output addresses must stay below 2^39 (the host address width).
    assert_eq!(try_map(0, (1 << 39) - 0x1000, 0x2000, RW), Err(PtError::OutputOutOfRange));
    assert_eq!(try_map(0, u64::MAX - 0xfff, 0x1000, RW), Err(PtError::OutputOutOfRange));
    assert!(try_map((1 << 39) - 0x1000, (1 << 39) - 0x1000, 0x1000, RW).is_ok());
    assert!(g.is_empty());
}

#[test]
fn overlap_is_an_error_and_rolls_back() {
    let (mut pt, mut mem) = vtd3();
    let mut g = Gather::new();
    pt.map(&mut mem, Iova(0x5000), Hpa(0x5000), 0x1000, RW, &mut g).unwrap();
    let tables = mem.in_use();
    // Overlaps the last page: the first pages were written, then removed.
    assert_eq!(pt.map(&mut mem, Iova(0x1000), Hpa(0x10_0000), 0x5000, RW, &mut g), Err(PtError::Exists(Iova(0x5000))));
    assert_eq!(g.range(), Some((Iova(0x1000), 0x4000)), "the rollback must be invalidated");
    g.release(&mut mem);
    assert_eq!(mem.in_use(), tables);
    assert!(pt.translate(&mem, Iova(0x1000)).is_none());
    assert_eq!(pt.translate(&mem, Iova(0x5000)).unwrap().hpa, Hpa(0x5000));
    // A huge leaf in the way.
    pt.map(&mut mem, Iova(0x4000_0000), Hpa(0x4000_0000), 0x4000_0000, Perm::READ, &mut g).unwrap();
    assert_eq!(
        pt.map(&mut mem, Iova(0x4020_0000), Hpa(0), 0x1000, RW, &mut g),
        Err(PtError::Exists(Iova(0x4020_0000)))
    );
}

#[test]
fn unmap_refuses_to_cut_a_leaf_and_skips_holes() {
    let (mut pt, mut mem) = vtd3();
    let mut g = Gather::new();
    pt.map(&mut mem, Iova(0x20_0000), Hpa(0x20_0000), 0x20_0000, RW, &mut g).unwrap();
    assert_eq!(pt.translate(&mem, Iova(0x20_0000)).unwrap().size, 0x20_0000);
    assert_eq!(pt.unmap(&mut mem, Iova(0x20_0000), 0x1000, &mut g), Err(PtError::SplitsLeaf(Iova(0x20_0fff))));
    assert_eq!(pt.unmap(&mut mem, Iova(0x3f_f000), 0x2000, &mut g), Err(PtError::SplitsLeaf(Iova(0x3f_f000))));
    assert_eq!(pt.unmap(&mut mem, Iova(0x20_0000), 0x800, &mut g), Err(PtError::Unaligned));
    assert!(g.is_empty());
    // A range with holes around the leaf.
    assert_eq!(pt.unmap(&mut mem, Iova(0), 0x80_0000, &mut g), Ok(0x20_0000));
    assert_eq!(g.range(), Some((Iova(0x20_0000), 0x20_0000)));
    assert_eq!(g.leaf_levels(), 0b10);
    // Beyond the input space: nothing there.
    assert_eq!(pt.unmap(&mut mem, Iova(1 << 39), 0x1000, &mut g), Ok(0));
    assert_eq!(pt.unmap(&mut mem, Iova(0), !0xfff, &mut g), Ok(0));
}

#[test]
fn huge_pages_switch_and_unit_limits() {
    let mut mem = VecTableMemory::new(Hpa(0x40_0000_0000));
    let mut g = Gather::new();
    // No 1 GiB blocks on this unit: a 1 GiB aligned map uses 2 MiB blocks.
    let mut pt = PageTable::new(ArmStage2::new(40, 44, LeafSizes::SZ_2M).unwrap(), &mut mem).unwrap();
    pt.map(&mut mem, Iova(0x4000_0000), Hpa(0x8000_0000), 0x4000_0000, RW, &mut g).unwrap();
    assert_eq!(pt.translate(&mem, Iova(0x4000_0000)).unwrap().size, 0x20_0000);
    // Huge pages off: 4 KiB leaves only.
    pt.set_huge_pages(false);
    assert!(!pt.huge_pages());
    pt.map(&mut mem, Iova(0x1_0000_0000), Hpa(0x1_0000_0000), 0x20_0000, RW, &mut g).unwrap();
    assert_eq!(pt.translate(&mem, Iova(0x1_0000_0000)).unwrap().size, 0x1000);
}

#[test]
fn destroy_hands_back_every_table() {
    let (mut pt, mut mem) = vtd3();
    let mut g = Gather::new();
    pt.map(&mut mem, Iova(0x1000), Hpa(0x1000), 0x40_0000, RW, &mut g).unwrap();
    pt.map(&mut mem, Iova(0x7f_0000_0000), Hpa(0x1000), 0x1000, Perm::READ, &mut g).unwrap();
    let tables = mem.in_use();
    assert!(tables > 4);
    pt.destroy(&mut mem, &mut g);
    assert_eq!(g.freed_count(), tables);
    g.release(&mut mem);
    assert_eq!(mem.in_use(), 0);
    assert!(g.is_empty());
}

#[test]
fn new_fails_cleanly_without_memory() {
    let mut mem = VecTableMemory::new(Hpa(0));
    mem.fail_from(Some(0));
    let fmt = VtdSecondLevel::new(4, 48, LeafSizes::all(), false).unwrap();
    assert_eq!(PageTable::new(fmt, &mut mem).err(), Some(PtError::NoMemory));
    assert_eq!(mem.in_use(), 0);
}

#[test]
fn format_constructors_reject_what_hardware_cannot_do() {
    use sluice_kernel::pt::{ArmStage1, Format, VmsaError, VtdError};
    assert_eq!(VtdSecondLevel::new(5, 48, LeafSizes::all(), false), Err(VtdError::BadLevels(5)));
    assert_eq!(VtdSecondLevel::new(4, 53, LeafSizes::all(), false), Err(VtdError::BadOutputBits(53)));
    assert_eq!(VtdSecondLevel::from_caps(0b0001, 0, 48, false), Err(VtdError::NoSupportedWidth));
    // QEMU aw-bits=48: SAGAW 39|48, SLLPS 2M|1G.
    let f = VtdSecondLevel::from_caps(0b0110, 0b0011, 48, false).unwrap();
    assert_eq!((f.geometry().levels, f.context_aw()), (4, 2));
    let f = VtdSecondLevel::from_caps(0b0010, 0b0001, 39, false).unwrap();
    assert_eq!((f.geometry().levels, f.context_aw()), (3, 1));
    assert_eq!(f.geometry().leaf_sizes, LeafSizes::SZ_2M);
    assert_eq!(ArmStage1::new(48, 44, LeafSizes::all(), 8), Err(VmsaError::BadAttrIndex(8)));
    assert_eq!(ArmStage1::new(30, 44, LeafSizes::all(), 0), Err(VmsaError::BadInputBits(30)));
}
