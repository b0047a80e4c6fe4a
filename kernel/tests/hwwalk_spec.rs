//! The spec walkers against tables written by hand (not by the engine), so
//! that a mistake shared by the engine and the walker cannot hide.

use std::sync::atomic::Ordering::Relaxed;

use sluice_kernel::Hpa;
use sluice_kernel::hwwalk::vmsa::{self, Stage, VmsaConfig};
use sluice_kernel::hwwalk::vtd::{self, VtdConfig};
use sluice_kernel::hwwalk::{Walk, WalkFault};
use sluice_kernel::pt::{TableMemory, VecTableMemory};

struct Hand {
    mem: VecTableMemory,
}

impl Hand {
    fn new() -> Self {
        Self { mem: VecTableMemory::new(Hpa(0x10_0000_0000)) }
    }
    fn table(&mut self) -> u64 {
        self.mem.alloc_table().unwrap().raw()
    }
    fn set(&self, table: u64, index: usize, value: u64) {
        self.mem.table(Hpa(table))[index].store(value, Relaxed);
    }
}

const VTD48: VtdConfig = VtdConfig { aw: 2, haw: 48, sllps: 0b11, snoop: false };

/// PML4 -> PDPT -> PD -> PT for IOVA 0x4020_3000.
fn vtd_chain(h: &mut Hand, pt_entry: u64) -> u64 {
    let (l4, l3, l2, l1) = (h.table(), h.table(), h.table(), h.table());
    h.set(l4, 0, l3 | 0b11);
    h.set(l3, 1, l2 | 0b11);
    h.set(l2, 1, l1 | 0b11);
    h.set(l1, 3, pt_entry);
    l4
}

#[test]
fn vtd_four_level_page() {
    let mut h = Hand::new();
    let root = vtd_chain(&mut h, 0xabcd_e000 | 0b11);
    let w = vtd::translate(&VTD48, root, 0x4020_3123, &h.mem).unwrap();
    assert_eq!(w, Walk { pa: 0xabcd_e123, page_size: 0x1000, read: true, write: true, leaf: 0xabcd_e003 });
    // Neighbouring page: not present at the PTE level.
    assert_eq!(vtd::translate(&VTD48, root, 0x4020_4000, &h.mem), Err(WalkFault::NotPresent { level: 1 }));
    // Beyond the 48-bit input range.
    assert_eq!(vtd::translate(&VTD48, root, 1 << 48, &h.mem), Err(WalkFault::InputBeyondRange));
}

#[test]
fn vtd_rights_are_anded_over_levels() {
    let mut h = Hand::new();
    let root = vtd_chain(&mut h, 0xabcd_e000 | 0b11);
    // PDPT entry read-only: the page below is read-only.
    let l3 = h.mem.read_u64(root).unwrap() & !0xfff;
    let l2 = h.mem.read_u64(l3 + 8).unwrap() & !0xfff;
    h.set(l3, 1, l2 | 0b01);
    let w = vtd::translate(&VTD48, root, 0x4020_3000, &h.mem).unwrap();
    assert!(w.read && !w.write);
}

#[test]
fn vtd_reserved_bits() {
    let mut h = Hand::new();
    // SNP in a leaf without snoop control.
    let root = vtd_chain(&mut h, 0xabcd_e000 | 1 << 11 | 0b11);
    assert!(matches!(vtd::translate(&VTD48, root, 0x4020_3000, &h.mem), Err(WalkFault::Reserved { level: 1, .. })));
    let snoop = VtdConfig { snoop: true, ..VTD48 };
    assert!(vtd::translate(&snoop, root, 0x4020_3000, &h.mem).is_ok());
    // An address at or above HAW.
    let mut h = Hand::new();
    let root = vtd_chain(&mut h, 1 << 40 | 0b11);
    let haw39 = VtdConfig { haw: 39, ..VTD48 };
    assert!(matches!(vtd::translate(&haw39, root, 0x4020_3000, &h.mem), Err(WalkFault::Reserved { .. })));
    assert!(vtd::translate(&VTD48, root, 0x4020_3000, &h.mem).is_ok());
    // Bits 52..61 are ignored, bit 62 (TM) is not.
    let mut h = Hand::new();
    let root = vtd_chain(&mut h, 0xabcd_e000 | 0x3ff << 52 | 0b11);
    assert!(vtd::translate(&VTD48, root, 0x4020_3000, &h.mem).is_ok());
    let mut h = Hand::new();
    let root = vtd_chain(&mut h, 0xabcd_e000 | 1 << 62 | 0b11);
    assert!(vtd::translate(&VTD48, root, 0x4020_3000, &h.mem).is_err());
}

#[test]
fn vtd_superpages() {
    let mut h = Hand::new();
    let (l4, l3, l2) = (h.table(), h.table(), h.table());
    h.set(l4, 0, l3 | 0b11);
    h.set(l3, 1, 0x1_c000_0000 | 1 << 7 | 0b11); // 1 GiB at IOVA 0x4000_0000
    h.set(l3, 2, l2 | 0b11);
    h.set(l2, 0, 0x60_0000 | 1 << 7 | 0b10); // 2 MiB write-only at 0x8000_0000
    h.set(l2, 1, 0x61_0000 | 1 << 7 | 0b11); // address not 2 MiB aligned
    let w = vtd::translate(&VTD48, l4, 0x4123_4567, &h.mem).unwrap();
    assert_eq!((w.pa, w.page_size), (0x1_c123_4567, 1 << 30));
    let w = vtd::translate(&VTD48, l4, 0x8001_0000, &h.mem).unwrap();
    assert_eq!((w.pa, w.page_size, w.read, w.write), (0x61_0000, 2 << 20, false, true));
    assert!(matches!(vtd::translate(&VTD48, l4, 0x8020_0000, &h.mem), Err(WalkFault::Reserved { level: 2, .. })));
    // A unit without 1 GiB pages treats PS in a PDPE as reserved.
    let no1g = VtdConfig { sllps: 0b01, ..VTD48 };
    assert!(matches!(vtd::translate(&no1g, l4, 0x4000_0000, &h.mem), Err(WalkFault::Reserved { level: 3, .. })));
    // PS in a PML4E is reserved.
    h.set(l4, 1, 0x80_0000_0000 | 1 << 7 | 0b11);
    assert!(matches!(vtd::translate(&VTD48, l4, 0x80_0000_0000, &h.mem), Err(WalkFault::Reserved { level: 4, .. })));
}

#[test]
fn vtd_three_levels() {
    let mut h = Hand::new();
    let (l3, l2, l1) = (h.table(), h.table(), h.table());
    h.set(l3, 0x1ff, l2 | 0b11);
    h.set(l2, 0, l1 | 0b11);
    h.set(l1, 0, 0x7000 | 0b01);
    let cfg = VtdConfig { aw: 1, haw: 39, sllps: 1, snoop: false };
    let w = vtd::translate(&cfg, l3, 0x7f_c000_0010, &h.mem).unwrap();
    assert_eq!((w.pa, w.read, w.write), (0x7010, true, false));
    assert_eq!(vtd::translate(&cfg, l3, 1 << 39, &h.mem), Err(WalkFault::InputBeyondRange));
}

const PAGE_S2: u64 = 0b11 | 0b1111 << 2 | 0b11 << 6 | 0b11 << 8 | 1 << 10;

#[test]
fn stage2_four_levels_and_blocks() {
    let mut h = Hand::new();
    let (l0, l1, l2, l3) = (h.table(), h.table(), h.table(), h.table());
    h.set(l0, 0, l1 | 0b11);
    h.set(l1, 1, l2 | 0b11);
    h.set(l2, 2, l3 | 0b11);
    h.set(l3, 3, 0x9_0000_0000 | PAGE_S2);
    h.set(l1, 2, 0x1_8000_0000 | (PAGE_S2 & !0b10)); // 1 GiB block, IPA 0x8000_0000
    h.set(l2, 3, 0x4000_0000 | (PAGE_S2 & !0b10 & !(1 << 7))); // 2 MiB read-only block
    let cfg = VmsaConfig { stage: Stage::Two { t0sz: 24, sl0: 2 }, oa_bits: 40 };
    let w = vmsa::translate(&cfg, l0, 0x4040_3abc, &h.mem).unwrap();
    assert_eq!((w.pa, w.page_size, w.read, w.write), (0x9_0000_0abc, 0x1000, true, true));
    let w = vmsa::translate(&cfg, l0, 0x8765_4321, &h.mem).unwrap();
    assert_eq!((w.pa, w.page_size), (0x1_8765_4321, 1 << 30));
    let w = vmsa::translate(&cfg, l0, 0x4060_0008, &h.mem).unwrap();
    assert_eq!((w.pa, w.page_size, w.read, w.write), (0x4000_0008, 2 << 20, true, false));
    // Output beyond 40 bits: address size fault.
    h.set(l3, 4, 1 << 41 | PAGE_S2);
    assert_eq!(vmsa::translate(&cfg, l0, 0x4040_4000, &h.mem), Err(WalkFault::AddressSize { level: 3 }));
    // Level-3 descriptor with bit 1 clear is invalid.
    h.set(l3, 5, 0x5000 | (PAGE_S2 & !0b10));
    assert_eq!(vmsa::translate(&cfg, l0, 0x4040_5000, &h.mem), Err(WalkFault::NotPresent { level: 3 }));
    // AF clear.
    h.set(l3, 6, 0x6000 | (PAGE_S2 & !(1 << 10)));
    assert_eq!(vmsa::translate(&cfg, l0, 0x4040_6000, &h.mem), Err(WalkFault::AccessFlag { level: 3 }));
    // Level-0 block is invalid with a 4 KiB granule.
    h.set(l0, 1, 0x80_0000_0000 | (PAGE_S2 & !0b10));
    assert_eq!(vmsa::translate(&cfg, l0, 0x80_0000_0000, &h.mem), Err(WalkFault::NotPresent { level: 0 }));
    // Beyond the IPA size.
    assert_eq!(vmsa::translate(&cfg, l0, 1 << 40, &h.mem), Err(WalkFault::InputBeyondRange));
}

#[test]
fn stage2_concatenated_root() {
    // 40-bit IPA starting at level 1: two concatenated level-1 tables.
    let mut h = Hand::new();
    let (a, b, l2, l3) = (h.table(), h.table(), h.table(), h.table());
    assert_eq!(b, a + 0x1000, "concatenated tables must be adjacent");
    h.set(b, 3, l2 | 0b11); // index 512 + 3: IPA 0x80_c000_0000
    h.set(l2, 0, l3 | 0b11);
    h.set(l3, 0, 0x7000 | PAGE_S2);
    let cfg = VmsaConfig { stage: Stage::Two { t0sz: 24, sl0: 1 }, oa_bits: 40 };
    let w = vmsa::translate(&cfg, a, 0x80_c000_0042, &h.mem).unwrap();
    assert_eq!(w.pa, 0x7042);
    // A start level that would need more than 16 tables, or that resolves
    // nothing, is not a valid configuration.
    let bad = VmsaConfig { stage: Stage::Two { t0sz: 16, sl0: 0 }, oa_bits: 48 };
    assert_eq!(vmsa::translate(&bad, a, 0, &h.mem), Err(WalkFault::BadConfig));
    let bad = VmsaConfig { stage: Stage::Two { t0sz: 32, sl0: 2 }, oa_bits: 48 };
    assert_eq!(vmsa::translate(&bad, a, 0, &h.mem), Err(WalkFault::BadConfig));
}

#[test]
fn stage1_permissions() {
    let mut h = Hand::new();
    let (l0, l1, l2, l3) = (h.table(), h.table(), h.table(), h.table());
    let page = 0b11 | 1 << 6 | 0b11 << 8 | 1 << 10 | 1 << 11;
    h.set(l0, 0, l1 | 0b11);
    h.set(l1, 0, l2 | 0b11);
    h.set(l2, 0, l3 | 0b11);
    h.set(l3, 1, 0x11_000 | page);
    h.set(l3, 2, 0x12_000 | page | 1 << 7);
    let cfg = VmsaConfig { stage: Stage::One { t0sz: 16 }, oa_bits: 44 };
    let w = vmsa::translate(&cfg, l0, 0x1008, &h.mem).unwrap();
    assert_eq!((w.pa, w.read, w.write), (0x11_008, true, true));
    let w = vmsa::translate(&cfg, l0, 0x2000, &h.mem).unwrap();
    assert_eq!((w.pa, w.read, w.write), (0x12_000, true, false));
    // APTable[1] in the level-1 table descriptor makes everything below read-only.
    h.set(l1, 0, l2 | 0b11 | 1 << 62);
    assert!(!vmsa::translate(&cfg, l0, 0x1000, &h.mem).unwrap().write);
    // A 39-bit VA starts at level 1.
    let cfg39 = VmsaConfig { stage: Stage::One { t0sz: 25 }, oa_bits: 44 };
    let w = vmsa::translate(&cfg39, l1, 0x1000, &h.mem).unwrap();
    assert_eq!(w.pa, 0x11_000);
}

#[test]
fn unreadable_table_is_a_bus_error() {
    let cfg = VmsaConfig { stage: Stage::One { t0sz: 16 }, oa_bits: 44 };
    let h = Hand::new();
    assert!(matches!(vmsa::translate(&cfg, 0x1000, 0, &h.mem), Err(WalkFault::Bus { .. })));
    assert!(matches!(vtd::translate(&VTD48, 0x1000, 0, &h.mem), Err(WalkFault::Bus { .. })));
}
