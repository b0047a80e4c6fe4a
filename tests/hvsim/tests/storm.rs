//! Fault storms on the simulated machine: the per-partition queue keeps
//! its size and counts the rest in out_lost, the fault limit quarantines
//! the device with a notice even when the queue is full, and a reset
//! leaves nothing behind.

use hvsim::script::Sim;
use sluice_kernel::hv::FAULT_QUEUE;

fn machine(limit: u64) -> Sim {
    let mut sim = Sim::new();
    for l in [
        "iommu vtd0 kind=vtd aw=48".to_string(),
        format!("partition p ram=0x0:0x1000000 fault_limit={limit}"),
        "partition q ram=0x0:0x1000000".into(),
        "device d partition=p iommu=vtd0 rid=0x10".into(),
        "device e partition=q iommu=vtd0 rid=0x18".into(),
    ] {
        assert_eq!(sim.statement(&l).unwrap().status, "ok", "{l}");
    }
    sim
}

fn run(sim: &mut Sim, line: &str) -> String {
    sim.statement(line)
        .unwrap_or_else(|e| panic!("{line}: {e}"))
        .line()
}

/// `n` DMAs of blocked device `d`, each to its own page.
fn storm(sim: &mut Sim, dev: &str, n: u64) -> (u64, u64) {
    let (mut faults, mut blocked) = (0, 0);
    for i in 0..n {
        match run(
            sim,
            &format!("dma {dev} write iova={:#x} len=8", 0x10_0000 + i * 0x1000),
        )
        .as_str()
        {
            "fault" => faults += 1,
            "blocked" => blocked += 1,
            other => panic!("dma {i}: {other}"),
        }
    }
    (faults, blocked)
}

/// Read every record of `p`; (records, flags of the last, out_lost summed).
fn drain(sim: &mut Sim, p: &str) -> (usize, String, u64) {
    let (mut records, mut last, mut lost) = (0, String::new(), 0);
    loop {
        let r = sim
            .statement(&format!("{p} fault_read num_faults=16"))
            .unwrap();
        assert_eq!(r.status, "ok");
        let get = |k: &str| {
            r.fields
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let n = hvsim::script::number(&get("num_faults")).unwrap() as usize;
        lost += hvsim::script::number(&get("out_lost")).unwrap_or(0);
        if n == 0 {
            return (records, last, lost);
        }
        records += n;
        last = get("faults").rsplit(',').next().unwrap().to_string();
    }
}

#[test]
fn records_past_the_queue_are_counted_as_lost() {
    let mut sim = machine(0);
    let n = FAULT_QUEUE as u64 + 44;
    assert_eq!(storm(&mut sim, "d", n), (n, 0));
    // Repeats of the newest dropped fault (one transfer faulting word by
    // word) fold into it: one lost record, not one per access.
    let last = 0x10_0000 + (n - 1) * 0x1000;
    for off in [8, 16, 24] {
        assert_eq!(
            run(
                &mut sim,
                &format!("dma d write iova={:#x} len=8", last + off)
            ),
            "fault"
        );
    }
    let (records, last, lost) = drain(&mut sim, "p");
    assert_eq!((records, lost), (FAULT_QUEUE, 44));
    assert_eq!(
        last,
        format!(
            "0x1:0x1:{:#x}:0x2",
            0x10_0000 + (FAULT_QUEUE as u64 - 1) * 0x1000
        )
    );
    // The other partition saw none of it and still works.
    assert_eq!(drain(&mut sim, "q"), (0, String::new(), 0));
    assert!(run(&mut sim, "q ioas_alloc").starts_with("ok"));
    assert_eq!(run(&mut sim, "invariants"), "ok");
}

#[test]
fn the_limit_quarantines_with_a_notice_even_when_the_queue_is_full() {
    let limit = FAULT_QUEUE as u64 + 10;
    let mut sim = machine(limit);
    assert_eq!(storm(&mut sim, "d", limit + 5), (limit, 5));
    let (records, last, lost) = drain(&mut sim, "p");
    // The notice took the newest record's place.
    assert_eq!((records, lost), (FAULT_QUEUE, 11));
    assert_eq!(last, "0x1:0x4:0x0:0x80000000");
    assert!(sim.hv.devices()[0].quarantined && !sim.hv.devices()[1].quarantined);
    // Another partition's device is not affected by p's limit.
    assert_eq!(storm(&mut sim, "e", 3), (3, 0));
}

#[test]
fn the_limit_counts_folded_runs_once() {
    let mut sim = machine(2);
    for _ in 0..100 {
        assert_eq!(
            run(&mut sim, "dma d write iova=0x5000 len=4 data=00"),
            "fault"
        );
    }
    assert!(!sim.hv.devices()[0].quarantined);
    assert_eq!(sim.hv.partition(0).coalesced_faults(), 99);
    assert_eq!(run(&mut sim, "dma d read iova=0x5000 len=4"), "fault");
    assert!(sim.hv.devices()[0].quarantined);
}

#[test]
fn reset_releases_everything_and_zeroes_ram() {
    let mut sim = machine(0);
    let before = sim.hv.table_memory().in_use();
    assert!(run(&mut sim, "p ioas_alloc as a").starts_with("ok"));
    assert!(run(&mut sim, "p device_attach dev=d pt_id=$a").starts_with("ok"));
    for i in 0..8u64 {
        let line = format!(
            "p ioas_map ioas_id=$a flags=fixed|read|write gpa={:#x} length=0x200000 iova={:#x}",
            i * 0x20_0000,
            0x1_0000_0000 + i * 0x40_0000
        );
        assert!(run(&mut sim, &line).starts_with("ok"), "{line}");
    }
    assert_eq!(run(&mut sim, "mem p write gpa=0xabc000 data=11"), "ok");
    storm(&mut sim, "d", 10);
    assert!(sim.hv.table_memory().in_use() > before);
    assert_eq!(
        run(&mut sim, "reset p"),
        "ok devices=1 objects=1 pins=4096 scrubbed=0x1000000"
    );
    assert_eq!(
        sim.hv.table_memory().in_use(),
        before,
        "every table page back"
    );
    assert_eq!(sim.hv.partition(0).pinned(), 0);
    assert_eq!(sim.hv.partition(0).resets(), 1);
    assert_eq!(drain(&mut sim, "p"), (0, String::new(), 0));
    assert_eq!(run(&mut sim, "mem p read gpa=0xabc000 len=1"), "ok data=00");
    assert_eq!(run(&mut sim, "dma d read iova=0x100000000 len=4"), "fault");
    assert_eq!(run(&mut sim, "invariants"), "ok");
}
