//! The core on the simulated machine: failure atomicity (table-memory
//! exhaustion at every allocation, IOMMU units that stop answering), and
//! random hypercalls that must never panic, never break an invariant, and
//! never change anything when they fail.

use hvsim::script::Sim;
use proptest::prelude::*;
use sluice_kernel::abi::{self, Errno};
use sluice_kernel::hypercall::Outcome;

fn machine(lines: &[&str]) -> Sim {
    let mut sim = Sim::new();
    for l in lines {
        let r = sim.statement(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert_eq!(r.status, "ok", "{l}");
    }
    sim
}

fn run(sim: &mut Sim, line: &str) -> String {
    sim.statement(line).unwrap_or_else(|e| panic!("{line}: {e}")).line()
}

/// Everything a failed command must leave as it was: every partition's
/// objects, areas, allowed/reserved ranges, HWPTs and pins, the devices'
/// attachments, what each unit's contexts point at, and the table pages
/// in use.
fn snapshot(sim: &Sim) -> String {
    let hv = &sim.hv;
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
    s += &format!("\ntables in use {}", hv.table_memory().in_use());
    s
}

/// Run `line` with the n-th table allocation failing, for n = 0, 1, ...
/// until it succeeds. Each failure must be ENOMEM, change nothing, and
/// pass `check`. Returns how many allocations failed.
fn fail_each_allocation(sim: &mut Sim, line: &str, mut check: impl FnMut(&mut Sim)) -> u64 {
    let mut n = 0;
    loop {
        let before = snapshot(sim);
        let at = sim.hv.table_memory().allocations() + n;
        sim.hv.table_memory_mut().fail_from(Some(at));
        let r = run(sim, line);
        sim.hv.table_memory_mut().fail_from(None);
        if r.starts_with("ok") {
            return n;
        }
        assert_eq!(r, "err ENOMEM", "allocation {n}");
        assert_eq!(snapshot(sim), before, "{line} failing at allocation {n} changed state");
        check(sim);
        n += 1;
    }
}

const TWO_UNITS: &[&str] = &[
    "iommu vtd0 kind=vtd aw=48",
    "iommu smmu0 kind=smmuv3 stage=2 ias=44",
    "partition p ram=0x0:0x40000000",
    "device a partition=p iommu=vtd0 rid=0x8",
    "device b partition=p iommu=smmu0 rid=0x10",
];

#[test]
fn map_is_atomic_at_every_table_allocation_failure() {
    let mut sim = machine(TWO_UNITS);
    run(&mut sim, "p ioas_alloc as i");
    assert!(run(&mut sim, "p device_attach dev=a pt_id=$i").starts_with("ok"));
    assert!(run(&mut sim, "p device_attach dev=b pt_id=$i").starts_with("ok"));
    assert!(run(&mut sim, "p ioas_map ioas_id=$i flags=read|write|fixed gpa=0x200000 length=0x200000 iova=0x40000000").starts_with("ok"));
    // A map that needs new tables in both HWPTs (two segments' worth of
    // levels each): fail the n-th table allocation for every n.
    let line = "p ioas_map ioas_id=$i flags=read|write|fixed gpa=0x1000 length=0x3000 iova=0xf0000001000";
    let n = fail_each_allocation(&mut sim, line, |sim| assert_eq!(sim.invariants(), Ok(())));
    assert!(n >= 2, "the map needed new tables in both HWPTs");
    assert_eq!(sim.invariants(), Ok(()));
    assert_eq!(run(&mut sim, "dma b write iova=0xf0000002000 len=4 data=aabbccdd"), "ok");
    assert_eq!(run(&mut sim, "mem p read gpa=0x2000 len=4"), "ok data=aabbccdd");
}

#[test]
fn attach_is_atomic_at_every_table_allocation_failure() {
    let mut sim = machine(TWO_UNITS);
    run(&mut sim, "p ioas_alloc as i");
    assert!(run(&mut sim, "p device_attach dev=a pt_id=$i").starts_with("ok"));
    for k in 0..8u64 {
        let line = format!("p ioas_map ioas_id=$i flags=read|write|fixed gpa={:#x} length=0x1000 iova={:#x}", 0x1000 * (k + 1), (k + 1) << 31);
        assert!(run(&mut sim, &line).starts_with("ok"), "{line}");
    }
    let n = fail_each_allocation(&mut sim, "p device_attach dev=b pt_id=$i", |sim| {
        assert_eq!(run(sim, "dma b read iova=0x80000000 len=4"), "fault", "b stays blocked");
    });
    assert!(n > 8, "filling the new HWPT allocated tables for every area");
    assert_eq!(sim.invariants(), Ok(()));
    assert_eq!(run(&mut sim, "dma b read iova=0x80000000 len=4"), "ok data=00000000");
}

#[test]
fn unmap_that_cannot_invalidate_keeps_pins_and_tables() {
    let mut sim = machine(&["iommu vtd0 kind=vtd", "partition p ram=0x0:0x10000000 pin_limit=4", "device a partition=p iommu=vtd0 rid=0x8"]);
    run(&mut sim, "p ioas_alloc as i");
    run(&mut sim, "p device_attach dev=a pt_id=$i");
    assert_eq!(run(&mut sim, "p ioas_map ioas_id=$i flags=read gpa=0x4000 length=0x4000"), "ok iova=0x4000");
    assert_eq!(run(&mut sim, "dma a read iova=0x4000 len=4"), "ok data=00000000");
    let tables = sim.hv.table_memory().in_use();
    sim.hv.machine().units[0].fail = true;
    // The areas are gone from the tables, so UNMAP reports them; the
    // failure is counted.
    assert_eq!(run(&mut sim, "p ioas_unmap ioas_id=$i iova=0x4000 length=0x4000"), "ok length=0x4000");
    sim.hv.machine().units[0].fail = false;
    assert_eq!(sim.hv.iommu_failures(), 1);
    // The pages stay pinned for good and the tables are not reused: the
    // unit may still hold translations to them.
    assert_eq!(sim.hv.partition(0).pinned(), 4);
    assert_eq!(sim.hv.table_memory().in_use(), tables);
    assert_eq!(run(&mut sim, "p ioas_map ioas_id=$i flags=read gpa=0x8000 length=0x1000"), "err ENOMEM");
    // The unit really kept a translation the tables no longer have: that
    // is why the pages stay pinned.
    assert_eq!(sim.hv.check_invariants(), Ok(()));
    assert!(sim.invariants().is_err_and(|e| e.contains("stale IOTLB")));
}

#[test]
fn dma_after_unmap_faults_even_with_a_warm_iotlb() {
    let mut sim = machine(&["iommu smmu0 kind=smmuv3 stage=1", "partition p ram=0x40000000:0x10000000", "device a partition=p iommu=smmu0 rid=0x3"]);
    run(&mut sim, "p ioas_alloc as i");
    run(&mut sim, "p device_attach dev=a pt_id=$i");
    assert_eq!(run(&mut sim, "p ioas_map ioas_id=$i flags=read|write gpa=0x40200000 length=0x200000"), "ok iova=0x200000");
    assert_eq!(run(&mut sim, "walk a iova=0x3ff000"), "ok page_size=0x200000 perm=rw");
    for _ in 0..3 {
        assert_eq!(run(&mut sim, "dma a write iova=0x3ff000 len=2 data=5a5a"), "ok");
    }
    assert!(sim.hv.units()[0].stats.iotlb_hits > 0, "the IOTLB served the repeated DMA");
    assert_eq!(run(&mut sim, "p ioas_unmap ioas_id=$i iova=0x200000 length=0x200000"), "ok length=0x200000");
    assert_eq!(run(&mut sim, "dma a write iova=0x3ff000 len=2 data=a5a5"), "fault");
    assert_eq!(run(&mut sim, "mem p read gpa=0x403ff000 len=2"), "ok data=5a5a");
    assert_eq!(sim.invariants(), Ok(()));
}

/// One random hypercall: command number, struct placement, and the struct
/// words drawn from values that hit the interesting paths.
#[derive(Clone, Debug)]
struct Call {
    nr: u64,
    at: u8,
    size: u8,
    words: Vec<u8>,
}

const VALUES: [u64; 16] = [
    0,
    1,
    2,
    3,
    4,
    7,
    0x1000,
    0x2000,
    0x20_0000,
    0x800,
    0x4000_0000,
    0x3fff_f000,
    0xfee0_0000,
    u64::MAX,
    u64::MAX - 0xfff,
    0xdead_0000,
];

fn call_strategy() -> impl Strategy<Value = Call> {
    let nrs: Vec<u64> = abi::COMMANDS.iter().map(|c| u64::from(c.nr)).filter(|n| *n != 0xC6).chain([0x88, 0xff, 1 << 40]).collect();
    (prop::sample::select(nrs), 0u8..4, 0u8..6, prop::collection::vec(0u8..16, 10))
        .prop_map(|(nr, at, size, words)| Call { nr, at, size, words })
}

fn encode(c: &Call, ram_top: u64) -> (u64, Vec<u8>) {
    let info = abi::command(c.nr as u32);
    let known = info.map_or(16, |i| i.size as usize);
    let size = match c.size {
        0 => known as u32,
        1 => known as u32 - 4,
        2 => known as u32 + 8,
        3 => 0,
        _ => info.map_or(8, |i| i.min_size),
    };
    let mut bytes = vec![0u8; (size as usize).max(known) + 8];
    // Fill the struct with u32/u64 values in each 8-byte slot, keeping
    // field 0 (size).
    for (i, w) in c.words.iter().enumerate() {
        let v = VALUES[*w as usize];
        let off = 4 + i * 4;
        if off + 4 <= known {
            let small = if i % 2 == 0 { v as u32 & 0x7 } else { v as u32 };
            bytes[off..off + 4].copy_from_slice(&small.to_le_bytes());
        }
    }
    for (slot, w) in c.words.iter().enumerate().take(4) {
        let off = 16 + slot * 8;
        if off + 8 <= known && w % 3 == 0 {
            bytes[off..off + 8].copy_from_slice(&VALUES[*w as usize].to_le_bytes());
        }
    }
    bytes[..4].copy_from_slice(&size.to_le_bytes());
    let at = match c.at {
        0 => 0x1000,
        1 => ram_top - 8,
        2 => ram_top + 0x1000,
        _ => 0x4000_0000 - 0x20,
    };
    (at, bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_hypercalls_keep_every_invariant(calls in prop::collection::vec(call_strategy(), 1..40)) {
        let mut sim = machine(&[
            "iommu vtd0 kind=vtd aw=39",
            "iommu smmu0 kind=smmuv3 stage=2 ias=40",
            "partition p ram=0x0:0x40000000 pin_limit=0x800",
            "partition q ram=0x0:0x1000000",
            "device a partition=p iommu=vtd0 rid=0x8 dma_bits=32",
            "device b partition=p iommu=smmu0 rid=0x10",
            "device c partition=q iommu=vtd0 rid=0x18",
            "p ioas_alloc",
            "p ioas_alloc",
            "p device_attach dev=a pt_id=3",
            "p ioas_map ioas_id=3 flags=read|write gpa=0x200000 length=0x200000",
            "q ioas_alloc",
            "q device_attach dev=c pt_id=2",
            "q ioas_map ioas_id=2 flags=read|write|fixed gpa=0x1000 length=0x1000 iova=0x1000",
        ]);
        let ram_top = 0x4000_0000u64;
        let q_before = format!("{:?}", sim.hv.partition(1));
        for c in &calls {
            let (at, bytes) = encode(c, ram_top);
            for (i, b) in bytes.iter().enumerate() {
                let _ = sim.hv.write_guest(0, at.wrapping_add(i as u64), &[*b]);
            }
            let before = snapshot(&sim);
            let out = sim.hv.hypercall(0, c.nr, at);
            let Outcome::Return(ret) = out else { panic!("no exit was sent") };
            prop_assert!(ret <= 0, "{c:?}: {ret}");
            if ret < 0 {
                let e = Errno::ALL.into_iter().find(|e| e.to_return() == ret);
                prop_assert!(e.is_some(), "{c:?}: unknown errno {ret}");
                // UNMAP's partial case may remove areas before failing.
                let partial_unmap = c.nr == 0x86 && e == Some(Errno::ENOENT);
                if !partial_unmap && c.nr != 0xC4 {
                    prop_assert_eq!(snapshot(&sim), before, "{:?} failed with {:?} and changed state", c, e);
                }
            }
            if let Err(msg) = sim.invariants() {
                prop_assert!(false, "{c:?}: {msg}");
            }
        }
        // Nothing partition p did reached partition q.
        prop_assert_eq!(format!("{:?}", sim.hv.partition(1)), q_before);
        prop_assert_eq!(run(&mut sim, "dma c read iova=0x1000 len=4"), "ok data=00000000");
    }
}

#[test]
fn table_memory_is_returned_when_everything_goes() {
    let mut sim = machine(TWO_UNITS);
    let base = sim.hv.table_memory().in_use();
    run(&mut sim, "p ioas_alloc as i");
    run(&mut sim, "p device_attach dev=a pt_id=$i");
    run(&mut sim, "p device_attach dev=b pt_id=$i");
    for k in 0..16u64 {
        run(&mut sim, &format!("p ioas_map ioas_id=$i flags=read gpa={:#x} length=0x1000", k * 0x20_0000));
    }
    assert!(sim.hv.table_memory().in_use() > base + 2);
    assert_eq!(run(&mut sim, "p ioas_unmap ioas_id=$i iova=0 length=0xffffffffffffffff"), "ok length=0x10000");
    assert_eq!(sim.hv.table_memory().in_use(), base + 2, "only the two roots are left");
    run(&mut sim, "p device_detach dev=a");
    run(&mut sim, "p device_detach dev=b");
    assert_eq!(sim.hv.table_memory().in_use(), base, "the HWPTs went with their last device");
    assert_eq!(run(&mut sim, "p destroy id=$i"), "ok");
    assert_eq!(sim.hv.partition(0).pinned(), 0);
    assert_eq!(sim.invariants(), Ok(()));
}

/// Found in review: these inputs panicked the core (a reversed B-tree range
/// and an overflow at the top of the IOVA space).
#[test]
fn copy_edge_inputs_return_errnos() {
    let mut sim = machine(&["iommu vtd0 kind=vtd", "partition p ram=0x0:0x1000000"]);
    run(&mut sim, "p ioas_alloc as i");
    assert_eq!(run(&mut sim, "p ioas_map ioas_id=$i flags=read|write gpa=0x1000 length=0x2000"), "ok iova=0x1000");
    assert_eq!(run(&mut sim, "p ioas_copy dst_ioas_id=$i src_ioas_id=$i flags=read length=1 src_iova=0x1000"), "err EINVAL");
    assert_eq!(
        run(&mut sim, "p ioas_copy dst_ioas_id=$i src_ioas_id=$i flags=read|fixed length=0x1000 src_iova=0x1000 dst_iova=0xfffffffffffff000"),
        "ok dst_iova=0xfffffffffffff000"
    );
    assert_eq!(run(&mut sim, "p ioas_unmap ioas_id=$i iova=0xfffffffffffff000 length=0x1000"), "ok length=0x1000");
    // An unaligned gpa with no room: ABI.md's MAP order puts ENOSPC first.
    run(&mut sim, "p ioas_allow_iovas ioas_id=$i ranges=0x100000-0x100fff");
    assert_eq!(run(&mut sim, "p ioas_map ioas_id=$i flags=read gpa=0x100800 length=0x2000"), "err ENOSPC");
    assert_eq!(run(&mut sim, "p ioas_map ioas_id=$i flags=read gpa=0x100800 length=0x1000"), "err EINVAL");
    assert_eq!(sim.invariants(), Ok(()));
}

#[test]
fn area_budget_bounds_copies() {
    let mut sim = machine(&["iommu vtd0 kind=vtd", "partition p ram=0x0:0x1000000 max_areas=3"]);
    run(&mut sim, "p ioas_alloc as i");
    assert!(run(&mut sim, "p ioas_map ioas_id=$i flags=read gpa=0x1000 length=0x1000 as a").starts_with("ok"));
    assert!(run(&mut sim, "p ioas_copy dst_ioas_id=$i src_ioas_id=$i flags=read length=0x1000 src_iova=$a").starts_with("ok"));
    assert!(run(&mut sim, "p ioas_copy dst_ioas_id=$i src_ioas_id=$i flags=read length=0x1000 src_iova=$a").starts_with("ok"));
    let before = snapshot(&sim);
    assert_eq!(run(&mut sim, "p ioas_copy dst_ioas_id=$i src_ioas_id=$i flags=read length=0x1000 src_iova=$a"), "err ENOMEM");
    assert_eq!(snapshot(&sim), before);
    assert_eq!(sim.hv.partition(0).pinned(), 1, "copies share the map's pin");
    assert_eq!(run(&mut sim, "p ioas_unmap ioas_id=0x1 iova=0 length=0xffffffffffffffff"), "ok length=0x3000");
    assert_eq!(sim.hv.partition(0).pinned(), 0);
}

/// Pins are pages: overlapping COPY pieces keep exactly the pages some
/// area still covers.
#[test]
fn overlapping_copies_release_pages_one_by_one() {
    let mut sim = machine(&["iommu vtd0 kind=vtd", "partition p ram=0x0:0x1000000 pin_limit=64"]);
    run(&mut sim, "p ioas_alloc as i");
    assert_eq!(run(&mut sim, "p ioas_map ioas_id=$i flags=read|fixed gpa=0x10000 length=0x8000 iova=0x100000"), "ok iova=0x100000");
    assert!(run(&mut sim, "p ioas_copy dst_ioas_id=$i src_ioas_id=$i flags=read|fixed length=0x4000 src_iova=0x102000 dst_iova=0x200000").starts_with("ok"));
    assert!(run(&mut sim, "p ioas_copy dst_ioas_id=$i src_ioas_id=$i flags=read|fixed length=0x4000 src_iova=0x104000 dst_iova=0x300000").starts_with("ok"));
    assert!(run(&mut sim, "p ioas_copy dst_ioas_id=$i src_ioas_id=$i flags=read|fixed length=0x2000 src_iova=0x202000 dst_iova=0x400000").starts_with("ok"));
    assert_eq!(sim.hv.partition(0).pinned(), 8);
    let steps = [(0x100000u64, 0x8000u64, 6u64), (0x200000, 0x4000, 4), (0x400000, 0x2000, 4), (0x300000, 0x4000, 0)];
    for (iova, len, left) in steps {
        assert_eq!(run(&mut sim, &format!("p ioas_unmap ioas_id=$i iova={iova:#x} length={len:#x}")), format!("ok length={len:#x}"));
        assert_eq!(sim.hv.partition(0).pinned(), left, "after unmapping {iova:#x}");
        assert_eq!(sim.invariants(), Ok(()));
    }
}

/// Found by the fail-nth tests (tests/fail_nth.rs): a COPY that ran out of
/// table memory filling an HWPT left the source's pin cover map behind
/// (internal state changed, heap kept). Pins are now shared only once the
/// copy is in.
#[test]
fn copy_is_atomic_at_every_table_allocation_failure() {
    let mut sim = machine(TWO_UNITS);
    run(&mut sim, "p ioas_alloc as i");
    assert!(run(&mut sim, "p device_attach dev=a pt_id=$i").starts_with("ok"));
    assert!(run(&mut sim, "p ioas_map ioas_id=$i flags=read|write|fixed gpa=0x10000 length=0x4000 iova=0x100000").starts_with("ok"));
    let line = "p ioas_copy dst_ioas_id=$i src_ioas_id=$i flags=read|fixed length=0x2000 src_iova=0x101000 dst_iova=0x7f00000000";
    let n = fail_each_allocation(&mut sim, line, |sim| assert_eq!(sim.invariants(), Ok(())));
    assert!(n >= 2, "the copy needed new tables");
    assert_eq!(sim.hv.partition(0).pinned(), 4, "the copy shares the map's pins");
}
