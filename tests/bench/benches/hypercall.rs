//! Hypercall round trips through the real decoder on the host.
//!
//!     cargo bench -p sluice-bench --bench hypercall
//!
//! A partition with 4 GiB of (lazily backed) RAM and one device attached
//! to an IOAS on a simulated VT-d unit (hvsim's, so every unmap really
//! invalidates through the `Iommu` trait). Each pair is an IOAS_MAP of
//! 4 KiB (automatic IOVA) and the IOAS_UNMAP of it, both decoded from
//! structs in partition memory. Then the same pair in an IOAS that already
//! holds 10^3 .. 10^6 areas. Prints ns per pair (best run, and median).
//! SLUICE_BENCH_RUNS sets the number of runs (default 11),
//! SLUICE_BENCH_MAX_AREAS the largest prefill (default 1000000).
//!
//! Peer, for scale only (not measured here): pKVM's published 4 KiB map
//! and unmap hypercalls cost 0.3 + 1.3 us on its Arm board.

use std::hint::black_box;
use std::time::Instant;

use hvsim::script::Sim;
use sluice_kernel::abi::{DeviceAttach, IoasAlloc, IoasMap, IoasUnmap, map_flags};
use sluice_kernel::hypercall::Outcome;
use zerocopy::{FromBytes, IntoBytes};

const MAP_AT: u64 = 0x1000;
const UNMAP_AT: u64 = 0x2000;
const CMD_AT: u64 = 0x3000;
const BUFFER: u64 = 0x4000_0000;
const PAIRS: u64 = 20_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ok(o: Outcome) {
    assert_eq!(o, Outcome::Return(0), "hypercall failed");
}

struct Bench {
    sim: Sim,
    ioas: u32,
}

fn call<T: IntoBytes + zerocopy::Immutable>(sim: &mut Sim, nr: u64, cmd: &T) -> Outcome {
    sim.hv.write_guest(0, CMD_AT, cmd.as_bytes()).expect("RAM");
    sim.hv.hypercall(0, nr, CMD_AT)
}

fn setup() -> Bench {
    let mut sim = Sim::new();
    for line in ["iommu vtd0 kind=vtd aw=48", "partition p ram=0x0:0x100000000", "device d partition=p iommu=vtd0 rid=0x10"] {
        sim.statement(line).expect("machine");
    }
    let alloc = IoasAlloc { size: 12, ..Default::default() };
    ok(call(&mut sim, 0x81, &alloc));
    let mut back = [0u8; 12];
    sim.hv.read_guest(0, CMD_AT, &mut back).expect("RAM");
    let ioas = IoasAlloc::read_from_bytes(&back).expect("12 bytes").out_ioas_id;
    ok(call(&mut sim, 0xC1, &DeviceAttach { size: 16, flags: 0, dev_id: 1, pt_id: ioas }));
    Bench { sim, ioas }
}

impl Bench {
    fn map_cmd(&self) -> IoasMap {
        IoasMap {
            size: 40,
            flags: map_flags::READABLE | map_flags::WRITEABLE,
            ioas_id: self.ioas,
            reserved: 0,
            gpa: BUFFER,
            length: 4096,
            iova: 0,
        }
    }

    /// Map once through the decoder and return the IOVA it chose.
    fn map(&mut self) -> u64 {
        let cmd = self.map_cmd();
        self.sim.hv.write_guest(0, MAP_AT, cmd.as_bytes()).expect("RAM");
        ok(self.sim.hv.hypercall(0, 0x85, MAP_AT));
        let mut back = [0u8; 40];
        self.sim.hv.read_guest(0, MAP_AT, &mut back).expect("RAM");
        IoasMap::read_from_bytes(&back).expect("40 bytes").iova
    }

    /// `n` map + unmap pairs, both structs already in partition memory;
    /// returns ns per pair.
    fn pairs(&mut self, n: u64) -> f64 {
        let iova = self.map();
        let unmap = IoasUnmap { size: 24, ioas_id: self.ioas, iova, length: 4096 };
        self.sim.hv.write_guest(0, UNMAP_AT, unmap.as_bytes()).expect("RAM");
        ok(self.sim.hv.hypercall(0, 0x86, UNMAP_AT));
        let t = Instant::now();
        let mut failures = 0u64;
        for _ in 0..n {
            // The automatic allocator returns the same IOVA each time (the
            // hole the unmap left), so the UNMAP struct stays valid.
            failures += u64::from(self.sim.hv.hypercall(0, 0x85, black_box(MAP_AT)) != Outcome::Return(0));
            failures += u64::from(self.sim.hv.hypercall(0, 0x86, black_box(UNMAP_AT)) != Outcome::Return(0));
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(failures, 0, "every hypercall of the loop succeeds");
        ns
    }

    /// The same pairs calling the core's operations directly (no decoder,
    /// no partition-memory access): the decoder's share of a pair.
    fn pairs_direct(&mut self, n: u64) -> f64 {
        let rw = sluice_kernel::pt::Perm::READ | sluice_kernel::pt::Perm::WRITE;
        let t = Instant::now();
        for _ in 0..n {
            let iova = self.sim.hv.ioas_map(0, self.ioas, black_box(BUFFER), 4096, None, rw).expect("map");
            self.sim.hv.ioas_unmap(0, self.ioas, black_box(iova), 4096).expect("unmap");
        }
        t.elapsed().as_nanos() as f64 / n as f64
    }

    fn prefill(&mut self, areas: u64) {
        let have = self.sim.hv.partition(0).ioas(self.ioas).expect("ioas").area_count() as u64;
        for _ in have..areas {
            self.map();
        }
    }
}

fn best_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    let runs = env("SLUICE_BENCH_RUNS", 11).max(1) as usize;
    let max_areas = env("SLUICE_BENCH_MAX_AREAS", 1_000_000);
    println!("hypercall round trip: IOAS_MAP + IOAS_UNMAP of 4 KiB, automatic IOVA, one device attached (simulated VT-d)");
    println!("{:<34} {:>12} {:>12}", "IOAS already holds", "best ns/pair", "median");
    let mut b = setup();
    let empty_runs = if std::env::var_os("SLUICE_BENCH_SKIP_EMPTY").is_some() { 1 } else { runs };
    let (empty, empty_median) = best_median((0..empty_runs).map(|_| b.pairs(PAIRS)).collect());
    println!("{:<34} {:>12.1} {:>12.1}", "0 areas (tables freed and re-made)", empty, empty_median);
    let mut at_1e3 = None;
    let mut last = None;
    let mut areas = 1_000;
    while areas <= max_areas {
        let t = Instant::now();
        b.prefill(areas);
        let fill_s = t.elapsed().as_secs_f64();
        let (best, median) = best_median((0..runs).map(|_| b.pairs(PAIRS)).collect());
        println!("{:<34} {:>12.1} {:>12.1}   (prefill {fill_s:.2} s)", format!("{areas} areas"), best, median);
        if areas == 1_000 {
            let (direct, direct_median) = best_median((0..runs).map(|_| b.pairs_direct(PAIRS)).collect());
            println!("{:<34} {:>12.1} {:>12.1}", "  same, core calls without decoder", direct, direct_median);
        }
        if areas == 1_000 {
            at_1e3 = Some(best);
        }
        last = Some((areas, best));
        areas *= 10;
    }
    let flushes = b.sim.hv.units()[0].stats.flushes;
    println!("invalidations issued (one per unmap): {flushes}");
    println!("target: <= 300 ns per pair with a device attached: {}", if empty <= 300.0 { "met" } else { "NOT met" });
    if let (Some(base), Some((n, top))) = (at_1e3, last) {
        let ratio = top / base;
        println!("scaling: {n} areas / 1000 areas = {ratio:.2}x (target <= 2x): {}", if ratio <= 2.0 { "met" } else { "NOT met" });
    }
    println!("peer (published, not measured here): pKVM 4 KiB map + unmap hypercalls 300 + 1300 ns on its Arm board");
}
