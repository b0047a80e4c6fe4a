//! The fault storm's bystander: round after round (alternating with the
//! storm partition), it calls the hypervisor for VICTIM_ROUND_US (MAP,
//! IOVA_RANGES, UNMAP of one page per iteration) and times each
//! iteration; at the end it prints its hypercall speed before and during
//! the storm (a benchmark line: numbers, no verdict) and checks that every
//! call succeeded.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

// Each program uses part of the shared modules.
#[allow(dead_code)]
#[path = "../demo.rs"]
mod demo;
#[allow(dead_code)]
#[path = "../reliability.rs"]
mod reliability;

use demo::Report;
use reliability::{BASELINE_ROUNDS, STORM_ROUNDS, VICTIM_ROUND_US};
use sluice_guest::abi::{IovaRange, map_flags};
use sluice_guest::time::now_us;
use sluice_guest::{StartInfo, hc, println};

sluice_guest::entry!(main);

#[derive(Default)]
struct Phase {
    iterations: u64,
    us: u64,
    worst_us: u64,
}

fn main(_info: &StartInfo) -> u32 {
    let mut r = Report::default();
    let base = demo::buffer_base();
    let Ok(ioas) = hc::ioas_alloc() else {
        r.check(format_args!("IOAS_ALLOC"), false);
        return r.finish("victim");
    };
    let mut phases = [Phase::default(), Phase::default()];
    let mut failures = 0u64;
    let mut ranges = [IovaRange::default(); 4];
    for round in 0..BASELINE_ROUNDS + STORM_ROUNDS {
        let phase = &mut phases[usize::from(round >= BASELINE_ROUNDS)];
        let start = now_us();
        while now_us() - start < VICTIM_ROUND_US {
            let t0 = now_us();
            let ok = hc::ioas_map(
                ioas,
                base,
                0x1000,
                Some(0x10_0000),
                map_flags::READABLE | map_flags::WRITEABLE,
            )
            .is_ok()
                & hc::ioas_iova_ranges(ioas, &mut ranges).is_ok()
                & (hc::ioas_unmap(ioas, 0x10_0000, 0x1000) == Ok(0x1000));
            let dt = now_us() - t0;
            failures += u64::from(!ok);
            phase.iterations += 1;
            phase.us += dt;
            phase.worst_us = phase.worst_us.max(dt);
        }
        sluice_guest::park();
    }
    let [quiet, storm] = &phases;
    let per = |p: &Phase| p.us * 1000 / p.iterations.max(1);
    println!(
        "bench: victim hypercalls (MAP+IOVA_RANGES+UNMAP per iteration): before the storm {} ns/iteration over {}, during it {} ns/iteration over {}, ratio {}.{:02}; worst iteration {} us before, {} us during",
        per(quiet),
        quiet.iterations,
        per(storm),
        storm.iterations,
        per(storm) / per(quiet).max(1),
        per(storm) * 100 / per(quiet).max(1) % 100,
        quiet.worst_us,
        storm.worst_us
    );
    r.check(
        format_args!(
            "every one of {} hypercall iterations succeeded ({failures} failed)",
            quiet.iterations + storm.iterations
        ),
        failures == 0,
    );
    r.finish("victim")
}
