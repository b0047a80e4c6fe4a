//! The VT-d driver against a RAM-backed fake unit (tests/fake): bring-up,
//! attach/block through real context entries, invalidation descriptors and
//! what they leave in a simulated IOTLB, caching mode, the register-based
//! fallback, bounded waits, queue errors and fault recording.

#![allow(clippy::type_complexity)]

mod fake;

use std::rc::Rc;

use fake::{Event, FakeClock, HostPages, Hw};
use sluice_kernel::abi::fault_reason;
use sluice_kernel::iommu::{Domain, DomainFormat, Flush, Iommu, IommuError, UnitFault};
use sluice_kernel::pt::{Gather, PageTable, Perm, TableMemory};
use sluice_kernel::{Hpa, Iova};
use sluice_vtd::{VtdUnit, WAIT_US};

type Unit = VtdUnit<HostPages, FakeClock>;

fn bring_up(hw: &Rc<Hw>) -> (Unit, HostPages, FakeClock) {
    let mem = HostPages::default();
    let clock = fake::clock(&[hw]);
    // SAFETY: `hw.base()` is the fake's register block, alive as long as
    // `hw`, and only this unit uses it.
    let unit = unsafe { VtdUnit::new(hw.base(), 48, mem.clone(), clock.clone()) }.expect("bring-up");
    (unit, mem, clock)
}

fn domain(unit: &Unit, mem: &mut HostPages, tag: u32) -> (PageTable<sluice_kernel::pt::VtdSecondLevel>, Domain) {
    let DomainFormat::Vtd(f) = unit.info().format else { panic!("not a VT-d format") };
    let pt = PageTable::new(f, mem).unwrap();
    let d = Domain { tag, root: pt.root(), format: unit.info().format };
    (pt, d)
}

fn map(pt: &mut PageTable<sluice_kernel::pt::VtdSecondLevel>, mem: &mut HostPages, iova: u64, pa: u64, len: u64, perm: Perm) {
    let mut g = Gather::new();
    pt.map(mem, Iova(iova), Hpa(pa), len, perm, &mut g).unwrap();
}

fn drain(unit: &mut Unit) -> Vec<UnitFault> {
    let mut v = Vec::new();
    unit.drain_faults(&mut |f| v.push(f));
    v
}

const RW: Perm = Perm::READ.union(Perm::WRITE);

#[test]
fn bring_up_enables_translation_with_everything_blocked() {
    let hw = Hw::qemu_like(1, false, true);
    let (unit, _mem, _clock) = bring_up(&hw);
    assert_eq!(hw.gsts() & (1 << 31 | 1 << 26), 1 << 31 | 1 << 26, "TE and QIE on");
    assert_eq!(hw.r64(0x20), unit.root_table().raw(), "RTADDR is the root table, legacy mode");
    assert_eq!(hw.r32(0x38) >> 31, 1, "fault interrupt masked (faults are polled)");
    // Root pointer set before translation is enabled, and global
    // invalidations between the two.
    let ev = hw.events();
    let srtp = ev.iter().position(|e| matches!(e, Event::Gcmd(v) if v & (1 << 30) != 0)).expect("SRTP issued");
    let te = ev.iter().position(|e| matches!(e, Event::Gcmd(v) if v & (1 << 31) != 0)).expect("TE issued");
    let inv: Vec<_> = hw.invalidations();
    assert_eq!(inv, vec![(0x11, 0), (0x12 | (3 << 6), 0)], "global context + global IOTLB (with drain)");
    assert!(srtp < te);
    assert!(!ev.iter().any(|e| matches!(e, Event::Gcmd(v) if v & (1 << 31) != 0 && v & (1 << 30) != 0)), "GCMD never repeats the one-shot SRTP with TE");
    // Nobody can DMA: every requester faults (root entry not present).
    assert_eq!(hw.dma(0x0010, 0x1000, true), Err(1));
    let info = unit.info();
    assert_eq!(info.max_domains, 65535);
    assert_eq!(info.hw_info.kind, 1);
    assert_eq!(&info.hw_info.data[8..16], &hw.r64(0x08).to_le_bytes(), "GET_HW_INFO carries CAP as read");
    assert_eq!(info.format.input_bits(), 48);
}

#[test]
fn attach_translates_through_the_engines_tables_and_block_faults() {
    let hw = Hw::qemu_like(4, false, true);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let data = mem.alloc_table().unwrap();
    let (mut pt, d) = domain(&unit, &mut mem, 7);
    map(&mut pt, &mut mem, 0x10_0000, data.raw(), 0x1000, RW);

    unit.block(0x18).unwrap();
    assert_eq!(hw.dma(0x18, 0x10_0000, true), Err(2), "blocked: context entry not present");
    unit.attach(0x18, &d).unwrap();
    assert_eq!(unit.domain_of(0x18), Some(7));
    assert_eq!(hw.dma(0x18, 0x10_0123, true), Ok(data.raw() + 0x123));
    assert_eq!(hw.dma(0x18, 0x10_1000, false), Err(6), "unmapped page");
    // The other function on the bus stays blocked.
    assert_eq!(hw.dma(0x20, 0x10_0000, false), Err(2));

    unit.block(0x18).unwrap();
    assert_eq!(hw.dma(0x18, 0x10_0000, true), Err(2), "block removes the context entry and its cached copies");
    let inv = hw.invalidations();
    let last = &inv[inv.len() - 2..];
    assert_eq!(last[0], (1 | (3 << 4) | (7 << 16) | (0x18 << 32), 0), "device-selective context invalidation");
    assert_eq!(last[1], (2 | (2 << 4) | (3 << 6) | (7 << 16), 0), "domain-selective IOTLB invalidation");

    let faults = drain(&mut unit);
    assert_eq!(faults.len(), 4);
    assert_eq!(faults[0], UnitFault { rid: 0x18, iova: 0x10_0000, reason: fault_reason::NOT_PRESENT, flags: fault_reason::FLAG_WRITE });
    assert_eq!(faults[1], UnitFault { rid: 0x18, iova: 0x10_1000, reason: fault_reason::READ_FROM_WRITE_ONLY, flags: fault_reason::FLAG_READ });
    assert_eq!(faults[2].rid, 0x20);
    assert_eq!(faults[3].iova, 0x10_0000);
    hw.settle(); // the fake applies write-1-to-clear when it next runs
    assert!(drain(&mut unit).is_empty(), "records were cleared");
    let raw = unit.take_raw_faults();
    assert_eq!(raw.iter().map(|r| r.reason).collect::<Vec<_>>(), [2, 6, 2, 2]);
}

#[test]
fn replacing_a_domain_never_leaves_the_old_translation_cached() {
    let hw = Hw::qemu_like(1, false, true);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let (a, b) = (mem.alloc_table().unwrap(), mem.alloc_table().unwrap());
    let (mut pa, da) = domain(&unit, &mut mem, 1);
    let (mut pb, db) = domain(&unit, &mut mem, 2);
    map(&mut pa, &mut mem, 0x4000, a.raw(), 0x1000, RW);
    map(&mut pb, &mut mem, 0x4000, b.raw(), 0x1000, RW);
    unit.attach(0x0100, &da).unwrap();
    assert_eq!(hw.dma(0x0100, 0x4000, true), Ok(a.raw()));
    unit.attach(0x0100, &db).unwrap();
    assert_eq!(hw.dma(0x0100, 0x4000, true), Ok(b.raw()), "the context cache and IOTLB of domain 1 were invalidated");
    assert_eq!(unit.domain_of(0x0100), Some(2));
}

#[test]
fn unmap_flush_is_page_selective_and_really_drops_the_iotlb_entry() {
    let hw = Hw::qemu_like(1, false, true);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let data = mem.alloc_table().unwrap();
    let (mut pt, d) = domain(&unit, &mut mem, 3);
    map(&mut pt, &mut mem, 0x20_0000, data.raw(), 0x1000, RW);
    map(&mut pt, &mut mem, 0x20_1000, data.raw(), 0x1000, Perm::READ);
    unit.attach(0x08, &d).unwrap();
    assert!(hw.dma(0x08, 0x20_0000, true).is_ok());
    assert!(hw.dma(0x08, 0x20_1000, false).is_ok());
    assert_eq!(hw.iotlb_len(), 2);
    let mut g = Gather::new();
    assert_eq!(pt.unmap(&mut mem, Iova(0x20_0000), 0x1000, &mut g).unwrap(), 0x1000);
    // Still cached: the hardware keeps translating until invalidated.
    assert!(hw.dma(0x08, 0x20_0000, true).is_ok(), "the fake IOTLB really caches");
    hw.clear_events();
    unit.flush(&Flush { tag: 3, range: g.range(), leaf_levels: g.leaf_levels(), tables: !g.freed_tables().is_empty() }).unwrap();
    assert_eq!(hw.invalidations(), vec![(2 | (3 << 4) | (3 << 6) | (3 << 16), 0x20_0000 | (1 << 6))], "PSI, AM 0, leaf-only hint");
    assert_eq!(hw.dma(0x08, 0x20_0000, true), Err(5));
    assert!(hw.dma(0x08, 0x20_1000, false).is_ok(), "the neighbour page stays cached and mapped");
    assert_eq!(unit.stats().iotlb_pages, 1);
}

#[test]
fn flush_granularity_follows_psi_and_mamv() {
    let hw = Hw::qemu_like(1, false, true);
    let (mut unit, _mem, _clock) = bring_up(&hw);
    let cases: [(Option<(u64, u64)>, bool, (u64, u64)); 4] = [
        // Pages 3 and 4 straddle a 16 KiB boundary: the 32 KiB block at 0.
        (Some((0x3000, 0x2000)), true, (2 | (3 << 4) | (3 << 6) | (5 << 16), 3)),
        (Some((0x4000_0000, 0x4000_0000)), false, (2 | (3 << 4) | (3 << 6) | (5 << 16), 0x4000_0000 | 18)),
        // 2 GiB: a mask of 19 is above MAMV (18): the whole domain.
        (Some((0x8000_0000, 0x8000_0000)), false, (2 | (2 << 4) | (3 << 6) | (5 << 16), 0)),
        (None, false, (2 | (2 << 4) | (3 << 6) | (5 << 16), 0)),
    ];
    for (range, tables, want) in cases {
        hw.clear_events();
        unit.flush(&Flush { tag: 5, range: range.map(|(i, l)| (Iova(i), l)), leaf_levels: 1, tables }).unwrap();
        let mut want = want;
        if !tables && want.0 & (3 << 4) == 3 << 4 {
            want.1 |= 1 << 6;
        }
        assert_eq!(hw.invalidations(), vec![want], "range {range:x?}");
    }
}

#[test]
fn without_psi_every_flush_is_domain_selective() {
    let cap_no_psi = {
        let hw = Hw::qemu_like(1, false, true);
        hw.r64(0x08) & !(1 << 39)
    };
    let hw = Hw::new(cap_no_psi, (1 << 1) | ((fake::IRO as u64 / 16) << 8));
    let (mut unit, _mem, _clock) = bring_up(&hw);
    hw.clear_events();
    unit.flush(&Flush { tag: 9, range: Some((Iova(0x1000), 0x1000)), leaf_levels: 1, tables: false }).unwrap();
    assert_eq!(hw.invalidations(), vec![(2 | (2 << 4) | (3 << 6) | (9 << 16), 0)]);
}

#[test]
fn caching_mode_invalidates_not_present_to_present() {
    let hw = Hw::qemu_like(1, true, true);
    let (mut unit, _mem, _clock) = bring_up(&hw);
    hw.clear_events();
    unit.mapped(4, Iova(0x20_0000), 0x20_0000).unwrap();
    assert_eq!(hw.invalidations(), vec![(2 | (3 << 4) | (3 << 6) | (4 << 16), 0x20_0000 | (1 << 6) | 9)]);

    let hw = Hw::qemu_like(1, false, true);
    let (mut unit, _mem, _clock) = bring_up(&hw);
    hw.clear_events();
    unit.mapped(4, Iova(0x20_0000), 0x20_0000).unwrap();
    assert!(hw.invalidations().is_empty(), "no CM: nothing to do");
}

#[test]
fn register_based_invalidation_without_a_queue() {
    let hw = Hw::qemu_like(1, false, false);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    assert_eq!(hw.gsts() & (1 << 26), 0, "no queue enabled");
    let data = mem.alloc_table().unwrap();
    let (mut pt, d) = domain(&unit, &mut mem, 6);
    map(&mut pt, &mut mem, 0x5000, data.raw(), 0x1000, RW);
    unit.attach(0x30, &d).unwrap();
    assert!(hw.dma(0x30, 0x5000, false).is_ok());
    let mut g = Gather::new();
    pt.unmap(&mut mem, Iova(0x5000), 0x1000, &mut g).unwrap();
    hw.clear_events();
    unit.flush(&Flush { tag: 6, range: g.range(), leaf_levels: g.leaf_levels(), tables: false }).unwrap();
    let ev = hw.events();
    assert_eq!(ev, vec![Event::Iotlb { iva: 0x5000 | (1 << 6), reg: (1 << 63) | (3 << 60) | (3 << 48) | (6 << 32) }]);
    assert_eq!(hw.dma(0x30, 0x5000, false), Err(6));
    assert_eq!(hw.r64(fake::IRO + 8) >> 63, 0, "IVT cleared by the unit");
    assert!(hw.events().is_empty() || hw.events().iter().all(|e| !matches!(e, Event::Desc(..))));
    assert!(hw.invalidations().is_empty(), "no descriptors without a queue");
}

#[test]
fn every_wait_is_bounded() {
    let hw = Hw::qemu_like(1, false, true);
    let (mut unit, _mem, clock) = bring_up(&hw);
    hw.stall.set(true);
    let t0 = clock.now.get();
    let r = unit.flush(&Flush { tag: 1, range: None, leaf_levels: 1, tables: true });
    assert_eq!(r, Err(IommuError::Timeout));
    let waited = clock.now.get() - t0;
    assert!((WAIT_US..=WAIT_US + 10).contains(&waited), "waited {waited} us");
    assert_eq!(unit.stats().timeouts, 1);
    // The unit comes back: the next request works (the stale one completes
    // first, its status value is older).
    hw.stall.set(false);
    unit.flush(&Flush { tag: 1, range: None, leaf_levels: 1, tables: true }).unwrap();

    // Bring-up against a unit that never answers fails with a typed
    // timeout, not a hang.
    let dead = Hw::qemu_like(1, false, true);
    dead.stall.set(true);
    let clock = fake::clock(&[&dead]);
    // SAFETY: as in `bring_up`.
    let r = unsafe { VtdUnit::new(dead.base(), 48, HostPages::default(), clock) };
    assert!(matches!(r, Err(sluice_vtd::InitError::Timeout(_))), "{r:?}");
}

#[test]
fn a_queue_error_is_reported_and_cleared() {
    let hw = Hw::qemu_like(1, false, true);
    let (mut unit, _mem, _clock) = bring_up(&hw);
    hw.reject_next.set(true);
    let r = unit.flush(&Flush { tag: 1, range: Some((Iova(0x1000), 0x1000)), leaf_levels: 1, tables: false });
    assert_eq!(r, Err(IommuError::Refused));
    assert_eq!(unit.stats().queue_errors, 1);
    hw.settle();
    assert_eq!(hw.fault_status() & (1 << 4), 0, "IQE cleared");
    hw.clear_events();
    unit.flush(&Flush { tag: 1, range: Some((Iova(0x1000), 0x1000)), leaf_levels: 1, tables: false }).unwrap();
    assert_eq!(hw.invalidations().len(), 1, "the queue runs again");
}

#[test]
fn faults_drain_oldest_first_and_overflow_is_counted() {
    let hw = Hw::qemu_like(2, false, true);
    let (mut unit, _mem, _clock) = bring_up(&hw);
    hw.record(0x10, 0x1000, 6, true);
    hw.record(0x11, 0x2000, 5, false);
    hw.record(0x12, 0x3000, 5, false); // both records full: lost
    assert_eq!(hw.fault_status() & 1, 1);
    let f = drain(&mut unit);
    assert_eq!(f.iter().map(|f| (f.rid, f.iova)).collect::<Vec<_>>(), [(0x10, 0x1000), (0x11, 0x2000)]);
    assert_eq!(f[0].flags, fault_reason::FLAG_READ);
    assert_eq!(f[1].reason, fault_reason::WRITE_TO_READ_ONLY);
    assert_eq!(unit.stats().overflows, 1);
    hw.settle();
    assert_eq!(hw.fault_status() & 3, 0, "PFO and PPF clear");
    // FRI now points at record 0 again... record two more, starting at the
    // record after the last one used; they come out in order.
    hw.record(0x13, 0x4000, 5, false);
    hw.record(0x14, 0x5000, 5, false);
    let f = drain(&mut unit);
    assert_eq!(f.iter().map(|f| f.rid).collect::<Vec<_>>(), [0x13, 0x14]);
    hw.settle();
    hw.record(0x15, 0x6000, 1, false);
    let f = drain(&mut unit);
    assert_eq!((f[0].rid, f[0].reason), (0x15, fault_reason::NOT_PRESENT));
}

#[test]
fn several_units_are_independent() {
    let (h1, h2) = (Hw::qemu_like(1, false, true), Hw::qemu_like(1, true, false));
    let (mut u1, mut mem, _c1) = bring_up(&h1);
    let (u2, _m2, _c2) = bring_up(&h2);
    let data = mem.alloc_table().unwrap();
    let (mut pt, d) = domain(&u1, &mut mem, 1);
    map(&mut pt, &mut mem, 0x1000, data.raw(), 0x1000, RW);
    u1.attach(0x08, &d).unwrap();
    assert!(h1.dma(0x08, 0x1000, true).is_ok());
    assert_eq!(h2.dma(0x08, 0x1000, true), Err(1), "the same requester id on the other unit stays blocked");
    assert!(u2.caps().caching_mode && !u2.caps().queued_invalidation);
}

#[test]
fn bad_requests_are_refused_without_touching_the_unit() {
    let hw = Hw::qemu_like(1, false, true);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let (_pt, d) = domain(&unit, &mut mem, 1);
    hw.clear_events();
    assert_eq!(unit.attach(0x1_0000, &d), Err(IommuError::Refused), "requester id above 16 bits");
    assert_eq!(unit.attach(0x08, &Domain { tag: 0, ..d }), Err(IommuError::Refused), "domain id 0");
    assert_eq!(unit.attach(0x08, &Domain { tag: 70_000, ..d }), Err(IommuError::Refused));
    assert_eq!(unit.flush(&Flush { tag: 0, range: None, leaf_levels: 0, tables: false }), Err(IommuError::Refused));
    assert!(hw.events().is_empty());
    assert_eq!(unit.domain_of(0x08), None);
}

#[test]
fn table_depth_follows_mgaw_not_only_sagaw() {
    // SAGAW offers 39 and 48 bits, but MGAW is 39: 3-level tables.
    let cap = Hw::qemu_like(1, false, true).r64(0x08);
    let cap = (cap & !(0x3f << 16)) | (38 << 16);
    let hw = Hw::new(cap, (1 << 1) | ((fake::IRO as u64 / 16) << 8));
    let (unit, _mem, _clock) = bring_up(&hw);
    assert_eq!(unit.caps().mgaw, 39);
    assert_eq!(unit.info().format.input_bits(), 39);
    assert_eq!(unit.format().context_aw(), 1);
}
