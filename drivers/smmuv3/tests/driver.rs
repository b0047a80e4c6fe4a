//! The SMMUv3 driver against a RAM-backed fake SMMU (tests/fake): bring-up,
//! stage-2 and stage-1 STEs/CDs the fake decodes as QEMU does, DMA through
//! the engine's tables and a TLB that only commands clear, invalidation
//! commands (range and per-leaf), bounded waits, command errors, events.

mod fake;

use std::rc::Rc;

use fake::{Fault, FakeClock, HostPages, Hw, Log};
use sluice_kernel::abi::fault_reason;
use sluice_kernel::hwwalk::PhysRead;
use sluice_kernel::iommu::{Domain, DomainFormat, Flush, Iommu, IommuError, UnitFault};
use sluice_kernel::pt::{Format, Gather, PageTable, Perm, TableMemory};
use sluice_kernel::time::Clock;
use sluice_kernel::{Hpa, Iova};
use sluice_smmuv3::{InitError, SmmuV3Unit, Stage, StagePreference, WAIT_US};

type Unit = SmmuV3Unit<HostPages, FakeClock>;

const RW: Perm = Perm::READ.union(Perm::WRITE);
const S2_IPA: u8 = 0x2a;
const NH_VA: u8 = 0x12;
const S12_VMALL: u8 = 0x28;
const NH_ASID: u8 = 0x11;
const CFGI_STE: u8 = 0x03;
const CFGI_CD_ALL: u8 = 0x06;

fn bring_up_with(hw: &Rc<Hw>, pref: StagePreference) -> (Unit, HostPages, FakeClock) {
    let mem = hw.mem.clone();
    let clock = fake::clock(&[hw]);
    // SAFETY: `hw.base()` is the fake's register block (both pages), alive
    // as long as `hw`, and only this unit uses it.
    let unit = unsafe { SmmuV3Unit::new(hw.base(), pref, mem.clone(), clock.clone()) }.expect("bring-up");
    (unit, mem, clock)
}

fn bring_up(hw: &Rc<Hw>) -> (Unit, HostPages, FakeClock) {
    bring_up_with(hw, StagePreference::Auto)
}

/// A domain of the unit's format with `(iova, pa, len, perm)` mapped.
struct Dom {
    pt2: Option<PageTable<sluice_kernel::pt::ArmStage2>>,
    pt1: Option<PageTable<sluice_kernel::pt::ArmStage1>>,
    d: Domain,
}

impl Dom {
    fn new(unit: &Unit, mem: &mut HostPages, tag: u32) -> Self {
        match unit.info().format {
            DomainFormat::ArmStage2(f) => {
                let pt = PageTable::new(f, mem).unwrap();
                let d = Domain { tag, root: pt.root(), format: unit.info().format };
                Self { pt2: Some(pt), pt1: None, d }
            }
            DomainFormat::ArmStage1(f) => {
                let pt = PageTable::new(f, mem).unwrap();
                let d = Domain { tag, root: pt.root(), format: unit.info().format };
                Self { pt2: None, pt1: Some(pt), d }
            }
            DomainFormat::Vtd(_) => panic!("not an Arm format"),
        }
    }
    fn map(&mut self, mem: &mut HostPages, iova: u64, pa: u64, len: u64, perm: Perm) {
        let mut g = Gather::new();
        match (&mut self.pt2, &mut self.pt1) {
            (Some(pt), _) => pt.map(mem, Iova(iova), Hpa(pa), len, perm, &mut g).unwrap(),
            (_, Some(pt)) => pt.map(mem, Iova(iova), Hpa(pa), len, perm, &mut g).unwrap(),
            _ => unreachable!(),
        }
    }
    fn unmap(&mut self, mem: &mut HostPages, iova: u64, len: u64) -> Flush {
        let mut g = Gather::new();
        let n = match (&mut self.pt2, &mut self.pt1) {
            (Some(pt), _) => pt.unmap(mem, Iova(iova), len, &mut g).unwrap(),
            (_, Some(pt)) => pt.unmap(mem, Iova(iova), len, &mut g).unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(n, len);
        Flush { tag: self.d.tag, range: g.range(), leaf_levels: g.leaf_levels(), tables: !g.freed_tables().is_empty() }
    }
}

fn drain(unit: &mut Unit) -> Vec<UnitFault> {
    let mut v = Vec::new();
    unit.drain_faults(&mut |f| v.push(f));
    v
}

/// Decoded TLBI-by-address fields: (addr, leaf, ttl, tg, num, scale).
fn tlbi_fields(c: [u64; 2]) -> (u64, bool, u64, u64, u64, u64) {
    (c[1] & 0x000f_ffff_ffff_f000, c[1] & 1 != 0, (c[1] >> 8) & 3, (c[1] >> 10) & 3, (c[0] >> 12) & 0x1f, (c[0] >> 20) & 0x1f)
}

/// 2 MiB of contiguous, 2 MiB-aligned host memory for block mappings
/// (only its address matters: the fake never touches data pages).
const BLOCK_PA: u64 = 0x40_0000_0000;

#[test]
fn bring_up_disables_aborts_and_enables_in_order() {
    let hw = Hw::qemu_left_enabled(2);
    let (unit, _mem, _clock) = bring_up(&hw);
    let log = hw.log();
    let pos = |want: Log| log.iter().position(|l| *l == want).unwrap_or_else(|| panic!("{want:x?} missing from {log:x?}"));
    let gbpa = log.iter().position(|l| matches!(l, Log::Gbpa(v) if v & fake::GBPA_ABORT != 0)).expect("GBPA abort");
    let off = pos(Log::Cr0(0));
    let cmdq = pos(Log::Cr0(fake::CMDQEN));
    let evq = pos(Log::Cr0(fake::CMDQEN | fake::EVENTQEN));
    let on = pos(Log::Cr0(fake::CMDQEN | fake::EVENTQEN | fake::SMMUEN));
    assert!(gbpa < off && off < cmdq && cmdq < evq && evq < on, "{log:x?}");
    // Invalidate everything between CMDQEN and SMMUEN.
    let cmds: Vec<u8> = log[cmdq..on].iter().filter_map(|l| if let Log::Cmd(c) = l { Some(c[0] as u8) } else { None }).collect();
    assert_eq!(cmds, [0x04, 0x30, 0x46], "CFGI_ALL, TLBI_NSNH_ALL, CMD_SYNC (no TLBI_EL2_ALL without IDR0.HYP)");
    assert_eq!(hw.commands()[0], [0x04, 31], "CFGI_ALL is CFGI_STE_RANGE with Range 31");
    assert_eq!(hw.r32(fake::GBPA), 0x1000 | fake::GBPA_ABORT, "UPDATE completed, SHCFG kept");
    assert_eq!(hw.r32(fake::IRQ_CTRL), 0, "interrupts off: everything is polled");
    assert_eq!(hw.r32(fake::CR1), 0xd75, "coherent: tables and queues WB, inner shareable");
    assert_eq!(hw.r32(fake::CR2), 0b110, "PTM and RECINVSID");
    // SIDSIZE 16: 2-level, SPLIT 6, 15 StreamID bits in a one-page L1.
    assert_eq!(hw.r32(fake::STRTAB_BASE_CFG), (1 << 16) | (6 << 6) | 15);
    assert!(unit.two_level());
    assert_eq!(unit.sid_bits(), 15);
    assert_eq!(hw.r64(fake::STRTAB_BASE) & 0x000f_ffff_ffff_ffc0, unit.stream_table().raw());
    assert_eq!(hw.r64(fake::CMDQ_BASE) & 0x1f, 8, "256-entry command queue (one page)");
    assert_eq!(hw.r64(fake::EVENTQ_BASE) & 0x1f, 7, "128-entry event queue (one page)");
    assert_eq!(hw.r64(fake::CMDQ_BASE) >> 62, 1, "RWA hint");
    // Nothing is attached: every StreamID faults, none bypasses.
    assert_eq!(hw.dma(0x10, 0x1000, true), Err(Fault::Event(0x02)), "no level-2 table: C_BAD_STREAMID");
    let info = unit.info();
    assert_eq!(info.max_domains, 65535);
    assert_eq!(info.hw_info.kind, 2);
    assert_eq!(info.hw_info.len, 40);
    let idr: Vec<u32> = (0..6).map(|i| u32::from_le_bytes(info.hw_info.data[8 + 4 * i..12 + 4 * i].try_into().unwrap())).collect();
    assert_eq!(idr, fake::qemu_idr(2), "GET_HW_INFO carries IDR0-5 as read");
    assert_eq!(&info.hw_info.data[32..40], &[0x3b, 0x04, 0, 0, 1, 0, 0, 0], "IIDR, AIDR");
    let DomainFormat::ArmStage2(f) = info.format else { panic!("stage 2 expected") };
    assert_eq!(f.geometry().input_bits, 44, "IPA limited to the OAS (S2T0SZ >= 64 - 44)");
    assert_eq!(f.geometry().output_bits, 44);
    assert_eq!(unit.stage(), Stage::Two);
}

#[test]
fn stage2_attach_translates_and_block_aborts() {
    let hw = Hw::qemu(2);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let data = mem.alloc_table().unwrap();
    let ro = mem.alloc_table().unwrap();
    let mut dom = Dom::new(&unit, &mut mem, 7);
    dom.map(&mut mem, 0x10_0000, data.raw(), 0x1000, RW);
    dom.map(&mut mem, 0x10_1000, ro.raw(), 0x1000, Perm::READ);

    unit.block(0x18).unwrap();
    assert_eq!(hw.dma(0x18, 0x10_0000, true), Err(Fault::Abort), "abort STE: terminated, no event");
    assert_eq!(hw.ste(0x18), [1, 0, 0, 0], "V=1, Config=abort");
    unit.attach(0x18, &dom.d).unwrap();
    assert_eq!(unit.domain_of(0x18), Some(7));
    let ste = hw.ste(0x18);
    assert_eq!(ste[0], 1 | (6 << 1), "S2 translate");
    assert_eq!(ste[2] & 0xffff, 7, "S2VMID = tag");
    assert_eq!((ste[2] >> 32) & 0x3f, 20, "S2T0SZ = 64 - 44");
    assert_eq!((ste[2] >> 38) & 3, 2, "S2SL0: start at level 0");
    assert_eq!((ste[2] >> 48) & 7, 4, "S2PS = 44 bits");
    assert_eq!(ste[3], dom.d.root.raw());
    assert_eq!(hw.dma(0x18, 0x10_0123, true), Ok(data.raw() + 0x123));
    assert_eq!(hw.dma(0x18, 0x10_1008, false), Ok(ro.raw() + 8));
    assert_eq!(hw.dma(0x18, 0x10_1000, true), Err(Fault::Event(0x13)), "write to read-only");
    assert_eq!(hw.dma(0x18, 0x20_0000, false), Err(Fault::Event(0x10)), "unmapped");
    // Its neighbour in the same level-2 table has an invalid STE.
    assert_eq!(hw.dma(0x19, 0x10_0000, false), Err(Fault::Event(0x04)));

    unit.block(0x18).unwrap();
    assert_eq!(unit.domain_of(0x18), None);
    assert_eq!(hw.dma(0x18, 0x10_0000, true), Err(Fault::Abort), "blocked again: the cached STE was invalidated");
    assert!(hw.opcodes().ends_with(&[CFGI_STE, S12_VMALL]), "block: CFGI_STE and the old VMID's TLB: {:x?}", hw.opcodes());

    let f = drain(&mut unit);
    let w = fault_reason::FLAG_WRITE;
    let r = fault_reason::FLAG_READ;
    assert_eq!(
        f,
        [
            UnitFault { rid: 0x18, iova: 0x10_1000, reason: fault_reason::WRITE_TO_READ_ONLY, flags: w },
            UnitFault { rid: 0x18, iova: 0x20_0000, reason: fault_reason::NOT_PRESENT, flags: r },
            UnitFault { rid: 0x19, iova: 0, reason: fault_reason::NOT_PRESENT, flags: 0 },
        ]
    );
    assert!(drain(&mut unit).is_empty(), "CONS caught up with PROD");
    let raw = unit.take_raw_events();
    assert_eq!(raw.iter().map(|e| e.kind()).collect::<Vec<_>>(), [0x13, 0x10, 0x04]);
    assert!(raw[0].stage2());
    assert_eq!(unit.stats().events, 3);
}

#[test]
fn stage1_unit_uses_a_context_descriptor_per_domain() {
    let hw = Hw::qemu(1);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    assert_eq!(unit.stage(), Stage::One);
    let DomainFormat::ArmStage1(f) = unit.info().format else { panic!("stage 1 expected") };
    assert_eq!(f.geometry().input_bits, 48);
    let data = mem.alloc_table().unwrap();
    let mut a = Dom::new(&unit, &mut mem, 3);
    a.map(&mut mem, 0x4000, data.raw(), 0x1000, RW);
    a.map(&mut mem, 0x6000, data.raw(), 0x1000, Perm::READ);
    unit.attach(0x08, &a.d).unwrap();
    unit.attach(0x09, &a.d).unwrap();
    let (s8, s9) = (hw.ste(0x08), hw.ste(0x09));
    assert_eq!(s8[0] & 0xf, 1 | (5 << 1), "S1 translate");
    assert_eq!(s8, s9, "both StreamIDs point at the domain's one CD");
    let cd = s8[0] & 0x000f_ffff_ffff_ffc0;
    let read = |pa: u64| hw.mem.read_u64(pa).unwrap();
    assert_eq!(read(cd) >> 48, 3, "ASID = tag");
    assert_eq!(read(cd) & 0x3f, 16, "T0SZ = 64 - 48");
    assert_eq!(read(cd + 8), a.d.root.raw(), "TTB0 = root");
    assert_eq!(read(cd + 24) & 0xff, 0xff, "MAIR index 0: normal write-back");
    assert_eq!(hw.dma(0x08, 0x4010, true), Ok(data.raw() + 0x10));
    assert_eq!(hw.dma(0x09, 0x4010, false), Ok(data.raw() + 0x10));
    assert_eq!(hw.dma(0x08, 0x5000, false), Err(Fault::Event(0x10)));
    let f = drain(&mut unit);
    assert_eq!(f, [UnitFault { rid: 8, iova: 0x5000, reason: fault_reason::NOT_PRESENT, flags: fault_reason::FLAG_READ }]);

    assert_eq!(hw.dma(0x08, 0x6000, true), Err(Fault::Event(0x13)), "stage-1 read-only page");
    let f = drain(&mut unit);
    assert_eq!(f, [UnitFault { rid: 8, iova: 0x6000, reason: fault_reason::WRITE_TO_READ_ONLY, flags: fault_reason::FLAG_WRITE }]);
    assert!(!unit.take_raw_events()[1].stage2());

    // A different domain with the same live tag is refused.
    let other = Dom::new(&unit, &mut mem, 3);
    assert_eq!(unit.attach(0x0a, &other.d), Err(IommuError::Refused));

    // Unmap + flush: TLBI_NH_VA with the ASID, then the translation is gone.
    hw.clear_log();
    let fl = a.unmap(&mut mem, 0x4000, 0x1000);
    assert_eq!(hw.dma(0x08, 0x4000, true), Ok(data.raw()), "still cached until invalidated");
    unit.flush(&fl).unwrap();
    let c = hw.commands();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0][0] as u8, c[0][0] >> 48), (NH_VA, 3));
    assert_eq!(tlbi_fields(c[0]), (0x4000, true, 3, 1, 0, 0));
    assert_eq!(hw.dma(0x08, 0x4000, true), Err(Fault::Event(0x10)));
    hw.clear_log();
    unit.flush(&Flush { tag: 3, range: None, leaf_levels: 0, tables: true }).unwrap();
    assert_eq!(hw.commands(), [[u64::from(NH_ASID) | (3 << 48), 0]]);

    // Moving both devices away frees the CD for a new domain with tag 3.
    unit.block(0x08).unwrap();
    unit.block(0x09).unwrap();
    assert!(hw.opcodes().ends_with(&[CFGI_STE, CFGI_CD_ALL, NH_ASID]), "{:x?}", hw.opcodes());
    let data2 = mem.alloc_table().unwrap();
    let mut b = Dom::new(&unit, &mut mem, 3);
    b.map(&mut mem, 0x4000, data2.raw(), 0x1000, RW);
    unit.attach(0x08, &b.d).unwrap();
    assert_eq!(hw.dma(0x08, 0x4000, true), Ok(data2.raw()));
}

#[test]
fn stage_preference() {
    let nested = Hw::qemu(3);
    let (unit, _m, _c) = bring_up_with(&nested, StagePreference::Stage1);
    assert_eq!(unit.stage(), Stage::One);
    let nested = Hw::qemu(3);
    let (unit, _m, _c) = bring_up(&nested);
    assert_eq!(unit.stage(), Stage::Two, "Auto prefers stage 2");
    let s1 = Hw::qemu(1);
    let (unit, _m, _c) = bring_up(&s1);
    assert_eq!(unit.stage(), Stage::One, "Auto falls back to stage 1 without S2P");
    let s1 = Hw::qemu(1);
    let clock = fake::clock(&[&s1]);
    // SAFETY: as in `bring_up_with`.
    let r = unsafe { SmmuV3Unit::new(s1.base(), StagePreference::Stage2, HostPages::default(), clock) };
    assert!(matches!(r, Err(InitError::Unsupported(_))), "{r:?}");
}

#[test]
fn unsupported_units_are_refused() {
    for (what, patch) in [
        ("no 4K granule", (5usize, !(1u32 << 4), 0u32)),
        ("preset tables", (1, !0, 1 << 30)),
        ("AArch32 tables only", (0, !(3 << 2), 1 << 2)),
        ("no stage at all", (0, !3, 0)),
    ] {
        let mut idr = fake::qemu_idr(2);
        idr[patch.0] = (idr[patch.0] & patch.1) | patch.2;
        let hw = Hw::new(idr);
        let clock = fake::clock(&[&hw]);
        // SAFETY: as in `bring_up_with`.
        let r = unsafe { SmmuV3Unit::new(hw.base(), StagePreference::Auto, HostPages::default(), clock) };
        assert!(matches!(r, Err(InitError::Unsupported(_))), "{what}: {r:?}");
        assert!(hw.log().is_empty(), "{what}: the unit was not touched");
    }
}

#[test]
fn replacing_a_domain_never_translates_through_a_mixed_ste() {
    let hw = Hw::qemu(2);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let (pa, pb) = (mem.alloc_table().unwrap(), mem.alloc_table().unwrap());
    let mut a = Dom::new(&unit, &mut mem, 1);
    let mut b = Dom::new(&unit, &mut mem, 2);
    a.map(&mut mem, 0x4000, pa.raw(), 0x1000, RW);
    b.map(&mut mem, 0x4000, pb.raw(), 0x1000, RW);
    unit.attach(0x100, &a.d).unwrap();
    assert_eq!(hw.dma(0x100, 0x4000, true), Ok(pa.raw()));
    hw.clear_log();
    // The fake panics if a translating STE changes without passing through
    // abort between two of its steps.
    unit.attach(0x100, &b.d).unwrap();
    assert_eq!(hw.dma(0x100, 0x4000, true), Ok(pb.raw()));
    assert_eq!(unit.domain_of(0x100), Some(2));
    assert_eq!(hw.opcodes(), [CFGI_STE, S12_VMALL, CFGI_STE, CFGI_STE], "abort + old VMID flushed, then the new STE in two steps");
    assert_eq!(hw.syncs(), 3);
    // Attaching the same domain again changes nothing.
    hw.clear_log();
    unit.attach(0x100, &b.d).unwrap();
    assert!(hw.log().is_empty());
}

#[test]
fn ril_flush_drops_exactly_the_unmapped_page() {
    let hw = Hw::qemu(2);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let data = mem.alloc_table().unwrap();
    let mut dom = Dom::new(&unit, &mut mem, 3);
    dom.map(&mut mem, 0x20_0000, data.raw(), 0x1000, RW);
    dom.map(&mut mem, 0x20_1000, data.raw(), 0x1000, Perm::READ);
    unit.attach(0x08, &dom.d).unwrap();
    assert!(hw.dma(0x08, 0x20_0000, true).is_ok());
    assert!(hw.dma(0x08, 0x20_1000, false).is_ok());
    assert_eq!(hw.tlb_len(), 2);
    let fl = dom.unmap(&mut mem, 0x20_0000, 0x1000);
    assert!(hw.dma(0x08, 0x20_0000, true).is_ok(), "the fake TLB really caches");
    hw.clear_log();
    unit.flush(&fl).unwrap();
    let c = hw.commands();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0][0] as u8, (c[0][0] >> 32) as u16), (S2_IPA, 3));
    assert_eq!(tlbi_fields(c[0]), (0x20_0000, true, 3, 1, 0, 0), "leaf, TTL level 3, TG 4K, one page");
    assert_eq!(hw.syncs(), 1);
    assert_eq!(hw.dma(0x08, 0x20_0000, true), Err(Fault::Event(0x10)));
    assert!(hw.dma(0x08, 0x20_1000, false).is_ok(), "the neighbour stays");
    assert_eq!(unit.stats().tlbi_range, 1);
}

#[test]
fn ril_flush_of_a_block_uses_its_level() {
    let hw = Hw::qemu(2);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let mut dom = Dom::new(&unit, &mut mem, 4);
    dom.map(&mut mem, 0x4000_0000, BLOCK_PA, 0x20_0000, RW);
    // A neighbour keeps the table holding the block alive.
    let page = mem.alloc_table().unwrap();
    dom.map(&mut mem, 0x4020_0000, page.raw(), 0x1000, RW);
    unit.attach(0x08, &dom.d).unwrap();
    assert_eq!(hw.dma(0x08, 0x4012_3456, false), Ok(BLOCK_PA + 0x12_3456));
    let fl = dom.unmap(&mut mem, 0x4000_0000, 0x20_0000);
    assert_eq!((fl.leaf_levels, fl.tables), (0b10, false));
    hw.clear_log();
    unit.flush(&fl).unwrap();
    let c = hw.commands();
    assert_eq!(c.len(), 1);
    assert_eq!(tlbi_fields(c[0]), (0x4000_0000, true, 2, 1, 0, 9), "TTL level 2, 2^9 pages");
    assert_eq!(hw.dma(0x08, 0x4012_3456, false), Err(Fault::Event(0x10)));
    assert!(hw.dma(0x08, 0x4020_0000, false).is_ok());

    // Unmapping the last page frees its tables: Leaf and TTL clear, and
    // the single page becomes two (NUM 0, SCALE 1).
    let fl = dom.unmap(&mut mem, 0x4020_0000, 0x1000);
    assert!(fl.tables);
    hw.clear_log();
    unit.flush(&fl).unwrap();
    assert_eq!(tlbi_fields(hw.commands()[0]), (0x4020_0000, false, 0, 1, 0, 1));
    assert!(hw.dma(0x08, 0x4020_0000, false).is_err());
}

#[test]
fn ril_flush_of_an_odd_range_and_freed_tables() {
    let hw = Hw::qemu(2);
    let (mut unit, _mem, _clock) = bring_up(&hw);
    hw.clear_log();
    // 33 pages with freed tables: no TTL, no Leaf, a page added (as
    // Linux does) so no command has NUM = SCALE = TTL = 0.
    unit.flush(&Flush { tag: 5, range: Some((Iova(0x10_0000), 33 << 12)), leaf_levels: 1, tables: true }).unwrap();
    let c: Vec<_> = hw.commands().into_iter().map(tlbi_fields).collect();
    assert_eq!(c, [(0x10_0000, false, 0, 1, 16, 1)], "34 pages: NUM 16, SCALE 1");
    hw.clear_log();
    unit.flush(&Flush { tag: 5, range: None, leaf_levels: 0, tables: true }).unwrap();
    assert_eq!(hw.commands(), [[u64::from(S12_VMALL) | (5 << 32), 0]]);
    hw.clear_log();
    unit.flush(&Flush { tag: 5, range: Some((Iova(0x1000), 0)), leaf_levels: 0, tables: false }).unwrap();
    assert!(hw.log().is_empty(), "an empty range needs nothing");
}

fn no_ril(stage: u8) -> Rc<Hw> {
    let mut idr = fake::qemu_idr(stage);
    idr[3] &= !(1 << 10);
    Hw::new(idr)
}

#[test]
fn without_ril_flushes_are_per_leaf_or_domain_wide() {
    let hw = no_ril(2);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let data = mem.alloc_table().unwrap();
    let mut dom = Dom::new(&unit, &mut mem, 6);
    for i in 0..4 {
        dom.map(&mut mem, 0x30_0000 + i * 0x1000, data.raw(), 0x1000, RW);
    }
    unit.attach(0x30, &dom.d).unwrap();
    for i in 0..4 {
        assert!(hw.dma(0x30, 0x30_0000 + i * 0x1000, false).is_ok());
    }
    let fl = dom.unmap(&mut mem, 0x30_1000, 0x2000);
    hw.clear_log();
    unit.flush(&fl).unwrap();
    let c: Vec<_> = hw.commands().into_iter().map(|c| (c[0] as u8, tlbi_fields(c))).collect();
    assert_eq!(c, [(S2_IPA, (0x30_1000, true, 0, 0, 0, 0)), (S2_IPA, (0x30_2000, true, 0, 0, 0, 0))], "one per page, no range fields");
    assert_eq!(hw.syncs(), 1, "one CMD_SYNC for the batch");
    assert!(hw.dma(0x30, 0x30_1000, false).is_err());
    assert!(hw.dma(0x30, 0x30_2000, false).is_err());
    assert!(hw.dma(0x30, 0x30_0000, false).is_ok());
    assert!(hw.dma(0x30, 0x30_3000, false).is_ok());
    assert_eq!(unit.stats().tlbi_leaf, 2);

    // 2 MiB leaves: one command per 2 MiB.
    hw.clear_log();
    unit.flush(&Flush { tag: 6, range: Some((Iova(0x4000_0000), 0x40_0000)), leaf_levels: 0b10, tables: false }).unwrap();
    let c: Vec<_> = hw.commands().into_iter().map(|c| tlbi_fields(c).0).collect();
    assert_eq!(c, [0x4000_0000, 0x4020_0000]);

    // More than MAX_LEAF_COMMANDS pages: the whole VMID.
    hw.clear_log();
    unit.flush(&Flush { tag: 6, range: Some((Iova(0), 33 << 12)), leaf_levels: 1, tables: false }).unwrap();
    assert_eq!(hw.opcodes(), [S12_VMALL]);
    assert!(hw.dma(0x30, 0x30_0000, false).is_ok(), "re-walked after the VMID-wide flush");
    // Unlinked tables: Leaf clear.
    hw.clear_log();
    unit.flush(&Flush { tag: 6, range: Some((Iova(0x1000), 0x1000)), leaf_levels: 1, tables: true }).unwrap();
    assert!(!tlbi_fields(hw.commands()[0]).1, "Leaf clear");
}

#[test]
fn without_ril_stage1_uses_nh_va_and_nh_asid() {
    let hw = no_ril(1);
    let (mut unit, _mem, _clock) = bring_up(&hw);
    hw.clear_log();
    unit.flush(&Flush { tag: 9, range: Some((Iova(0x7000), 0x1000)), leaf_levels: 1, tables: false }).unwrap();
    assert_eq!(hw.commands(), [[u64::from(NH_VA) | (9 << 48), 0x7000 | 1]]);
    hw.clear_log();
    unit.flush(&Flush { tag: 9, range: Some((Iova(0), 1 << 30)), leaf_levels: 1, tables: false }).unwrap();
    assert_eq!(hw.opcodes(), [NH_ASID]);
}

#[test]
fn every_wait_is_bounded() {
    let hw = Hw::qemu(2);
    let (mut unit, _mem, clock) = bring_up(&hw);
    hw.stall.set(true);
    let t0 = clock.now.get();
    let r = unit.flush(&Flush { tag: 1, range: None, leaf_levels: 0, tables: true });
    assert_eq!(r, Err(IommuError::Timeout));
    let waited = clock.now.get() - t0;
    assert!((WAIT_US..=WAIT_US + 10).contains(&waited), "waited {waited} us");
    assert_eq!(unit.stats().timeouts, 1);
    hw.stall.set(false);
    unit.flush(&Flush { tag: 1, range: None, leaf_levels: 0, tables: true }).unwrap();
    assert_eq!(hw.opcodes().iter().filter(|o| **o == S12_VMALL).count(), 2, "the stalled command ran too");

    // Attach against a stalled unit: a typed timeout, not a hang.
    hw.stall.set(true);
    let mut mem = hw.mem.clone();
    let dom = Dom::new(&unit, &mut mem, 2);
    assert_eq!(unit.attach(0x10, &dom.d), Err(IommuError::Timeout));
    hw.stall.set(false);

    for stage in [1, 2] {
        let dead = Hw::qemu(stage);
        dead.stall.set(true);
        let clock = fake::clock(&[&dead]);
        // SAFETY: as in `bring_up_with`.
        let r = unsafe { SmmuV3Unit::new(dead.base(), StagePreference::Auto, HostPages::default(), clock.clone()) };
        assert!(matches!(r, Err(InitError::Timeout("GBPA update"))), "{r:?}");
        assert!(clock.now_us() <= WAIT_US + 10);
    }
}

#[test]
fn a_rejected_command_is_skipped_and_reported() {
    let hw = no_ril(2);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let data = mem.alloc_table().unwrap();
    let mut dom = Dom::new(&unit, &mut mem, 2);
    for i in 0..3 {
        dom.map(&mut mem, i * 0x1000, data.raw(), 0x1000, RW);
    }
    unit.attach(0x20, &dom.d).unwrap();
    for i in 0..3 {
        assert!(hw.dma(0x20, i * 0x1000, false).is_ok());
    }
    let fl = dom.unmap(&mut mem, 0, 0x3000);
    hw.clear_log();
    hw.reject.set(Some(S2_IPA));
    assert_eq!(unit.flush(&fl), Err(IommuError::Refused));
    assert_eq!(unit.stats().command_errors, 1);
    assert_eq!(hw.gerror_pending(), 0, "CMDQ_ERR acknowledged through GERRORN");
    assert_eq!(hw.r32(fake::CMDQ_CONS) >> 24 & 0x7f, 1, "CERROR_ILL reported in CMDQ_CONS");
    // The rejected command became a CMD_SYNC; the ones after it ran.
    assert_eq!(hw.opcodes(), [S2_IPA, S2_IPA]);
    assert!(hw.dma(0x20, 0, false).is_ok(), "the rejected invalidation did not happen");
    assert!(hw.dma(0x20, 0x1000, false).is_err());
    assert!(hw.dma(0x20, 0x2000, false).is_err());
    // The queue runs again.
    unit.flush(&fl).unwrap();
    assert!(hw.dma(0x20, 0, false).is_err());

    // A command QEMU rejects on a stage-2-only SMMU: TLBI_NH_* never sent.
    assert!(!hw.opcodes().iter().any(|o| (0x10..=0x13).contains(o)));
}

#[test]
fn events_drain_in_order_and_overflow_is_counted() {
    let hw = Hw::qemu(2);
    let (mut unit, _mem, _clock) = bring_up(&hw);
    // 130 events into 128 slots: two lost, OVFLG toggled once.
    for i in 0..130u64 {
        hw.record(0x10, 0x40 + i as u32, i << 12, i % 2 == 0, true);
    }
    assert_eq!(hw.r32(fake::EVENTQ_PROD) >> 31, 1);
    let f = drain(&mut unit);
    assert_eq!(f.len(), 128);
    assert!(f.iter().enumerate().all(|(i, f)| f.rid == 0x40 + i as u32 && f.iova == (i as u64) << 12), "oldest first");
    assert_eq!(f[0].flags, fault_reason::FLAG_READ);
    assert_eq!(f[1].flags, fault_reason::FLAG_WRITE);
    assert_eq!(unit.stats().event_overflows, 1);
    assert_eq!(hw.r32(fake::EVENTQ_CONS), 128 | (1 << 31), "CONS wrapped once, OVACKFLG acknowledged");
    // After the acknowledgement the queue records again, wrapping PROD.
    for i in 0..5 {
        hw.record(0x13, 0x99, 0x1000 * i, false, true);
    }
    let f = drain(&mut unit);
    assert_eq!(f.len(), 5);
    assert!(f.iter().all(|f| f.reason == fault_reason::WRITE_TO_READ_ONLY));
    assert_eq!(unit.stats().event_overflows, 1, "one overflow, counted once");
    assert_eq!(unit.stats().events, 133);
    assert_eq!(unit.take_raw_events().len(), 133);
}

#[test]
fn global_errors_are_acknowledged_and_counted() {
    let hw = Hw::qemu(2);
    let (mut unit, _mem, _clock) = bring_up(&hw);
    hw.raise_gerror(1 << 2 | 1 << 8);
    assert_ne!(hw.gerror_pending(), 0);
    assert!(drain(&mut unit).is_empty());
    assert_eq!(hw.gerror_pending(), 0);
    assert_eq!(unit.stats().global_errors, 2);
}

#[test]
fn small_sidsize_uses_a_linear_table() {
    let mut idr = fake::qemu_idr(2);
    idr[1] = (idr[1] & !0x3f) | 5;
    let hw = Hw::new(idr);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    assert!(!unit.two_level());
    assert_eq!(hw.r32(fake::STRTAB_BASE_CFG), 5, "linear, LOG2SIZE 5");
    let data = mem.alloc_table().unwrap();
    let mut dom = Dom::new(&unit, &mut mem, 1);
    dom.map(&mut mem, 0x1000, data.raw(), 0x1000, RW);
    unit.attach(31, &dom.d).unwrap();
    assert_eq!(hw.dma(31, 0x1000, true), Ok(data.raw()));
    assert_eq!(hw.dma(30, 0x1000, true), Err(Fault::Event(0x04)), "invalid STE");
    assert_eq!(unit.attach(32, &dom.d), Err(IommuError::Refused));
    assert_eq!(hw.dma(32, 0x1000, true), Err(Fault::Event(0x02)));

    // Without 2-level support a large SIDSIZE is served linearly, 6 bits.
    let mut idr = fake::qemu_idr(2);
    idr[0] &= !(3 << 27);
    let hw = Hw::new(idr);
    let (unit, _mem, _clock) = bring_up(&hw);
    assert!(!unit.two_level());
    assert_eq!((unit.sid_bits(), hw.r32(fake::STRTAB_BASE_CFG)), (6, 6));
}

#[test]
fn two_level_table_reaches_the_top_streamids() {
    let hw = Hw::qemu(2);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    let data = mem.alloc_table().unwrap();
    let mut dom = Dom::new(&unit, &mut mem, 1);
    dom.map(&mut mem, 0x1000, data.raw(), 0x1000, RW);
    let pages = mem.live();
    unit.attach(0x7fff, &dom.d).unwrap();
    assert_eq!(mem.live(), pages + 1, "one level-2 table made");
    let l1 = hw.mem.read_u64(unit.stream_table().raw() + 8 * 511).unwrap();
    assert_eq!(l1 & 0x1f, 7, "span: 64 STEs");
    assert_eq!(hw.dma(0x7fff, 0x1000, false), Ok(data.raw()));
    assert_eq!(hw.dma(0x7fc0, 0x1000, false), Err(Fault::Event(0x04)));
    // The first STE under a new level-1 descriptor is announced with Leaf
    // clear (the descriptor may be cached).
    assert!(hw.commands().contains(&[u64::from(CFGI_STE) | (0x7fff << 32), 0]));
    unit.attach(0x7ffe, &dom.d).unwrap();
    assert_eq!(mem.live(), pages + 1, "the level-2 table is shared");
    assert_eq!(unit.attach(0x8000, &dom.d), Err(IommuError::Refused), "beyond the 15 StreamID bits served");
}

#[test]
fn bad_requests_are_refused_without_touching_the_unit() {
    let mut idr = fake::qemu_idr(2);
    idr[0] &= !(1 << 18); // 8-bit VMIDs
    let hw = Hw::new(idr);
    let (mut unit, mut mem, _clock) = bring_up(&hw);
    assert_eq!(unit.info().max_domains, 255);
    let dom = Dom::new(&unit, &mut mem, 1);
    hw.clear_log();
    let pages = mem.live();
    assert_eq!(unit.attach(0x8000, &dom.d), Err(IommuError::Refused), "StreamID beyond the table");
    assert_eq!(unit.attach(u32::MAX, &dom.d), Err(IommuError::Refused));
    assert_eq!(unit.block(0x1_0000), Err(IommuError::Refused));
    assert_eq!(unit.attach(0x08, &Domain { tag: 0, ..dom.d }), Err(IommuError::Refused), "tag 0");
    assert_eq!(unit.attach(0x08, &Domain { tag: 256, ..dom.d }), Err(IommuError::Refused), "beyond 8-bit VMIDs");
    let s1 = sluice_kernel::pt::ArmStage1::new(48, 44, sluice_kernel::pt::LeafSizes::empty(), 0).unwrap();
    assert_eq!(unit.attach(0x08, &Domain { format: DomainFormat::ArmStage1(s1), ..dom.d }), Err(IommuError::Refused), "wrong format");
    assert_eq!(unit.flush(&Flush { tag: 0, range: None, leaf_levels: 0, tables: false }), Err(IommuError::Refused));
    assert_eq!(unit.flush(&Flush { tag: 256, range: None, leaf_levels: 0, tables: false }), Err(IommuError::Refused));
    assert_eq!(unit.mapped(0, Iova(0), 0x1000), Err(IommuError::Refused));
    assert!(hw.log().is_empty(), "no command issued");
    assert_eq!(mem.live(), pages, "nothing allocated");
    assert_eq!(unit.domain_of(0x08), None);
    assert_eq!(unit.mapped(1, Iova(0), 0x1000), Ok(()), "SMMUs cache no invalid entries");
}

#[test]
fn several_units_are_independent() {
    let (h1, h2) = (Hw::qemu(2), Hw::qemu(1));
    let (mut u1, mut mem, _c1) = bring_up(&h1);
    let (u2, _m2, _c2) = bring_up(&h2);
    let data = mem.alloc_table().unwrap();
    let mut dom = Dom::new(&u1, &mut mem, 1);
    dom.map(&mut mem, 0x1000, data.raw(), 0x1000, RW);
    u1.attach(0x08, &dom.d).unwrap();
    assert!(h1.dma(0x08, 0x1000, true).is_ok());
    assert_eq!(h2.dma(0x08, 0x1000, true), Err(Fault::Event(0x02)), "the same StreamID on the other unit stays blocked");
    assert_eq!(u2.stage(), Stage::One);
}

#[test]
fn long_batches_are_split_to_fit_a_small_command_queue() {
    let mut idr = no_ril(2).idr;
    idr[1] = (idr[1] & !(0x1f << 21)) | (2 << 21); // CMDQS = 2: four entries
    let hw = Hw::new(idr);
    let (mut unit, _mem, _clock) = bring_up(&hw);
    assert_eq!(hw.r64(fake::CMDQ_BASE) & 0x1f, 2);
    hw.clear_log();
    unit.flush(&Flush { tag: 1, range: Some((Iova(0), 10 << 12)), leaf_levels: 1, tables: false }).unwrap();
    let addrs: Vec<u64> = hw.commands().into_iter().map(|c| tlbi_fields(c).0).collect();
    assert_eq!(addrs, (0..10).map(|i| i << 12).collect::<Vec<_>>(), "every command ran, in order, across the wrap");
    assert_eq!(hw.syncs(), 4, "three commands and a CMD_SYNC per batch");
    for _ in 0..5 {
        unit.flush(&Flush { tag: 1, range: None, leaf_levels: 0, tables: true }).unwrap();
    }
    assert_eq!(unit.stats().timeouts, 0);
}
