//! A fault storm: the devices of this partition DMA into IOVAs nothing
//! maps, one 4 KiB DMA per round, round robin (QEMU's edu faults every 4
//! bytes: 1024 faults each), for STORM_ROUNDS rounds after
//! BASELINE_ROUNDS quiet ones; between rounds it parks so the victim
//! partition runs while the faults arrive. Then it reads its fault queue:
//! it must be full, with the rest counted in out_lost.
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
use reliability::{BASELINE_ROUNDS, STORM_IOVA, STORM_ROUNDS};
use sluice_guest::abi::FaultRecord;
use sluice_guest::edu::Edu;
use sluice_guest::{StartInfo, hc, println};

sluice_guest::entry!(main);

/// The core's per-partition queue (`sluice_kernel::hv::FAULT_QUEUE`).
const FAULT_QUEUE: usize = 256;

fn main(info: &StartInfo) -> u32 {
    let mut r = Report::default();
    let n = info.devices().len();
    let edus: [Option<Edu>; 4] = core::array::from_fn(|i| if i < n { Edu::open(i) } else { None });
    let ioas = hc::ioas_alloc();
    let attached = ioas.is_ok_and(|ioas| {
        info.devices()
            .iter()
            .all(|d| hc::device_attach(d.dev_id, ioas).is_ok())
    });
    if !r.check(
        format_args!("{n} devices attached to an empty IOAS"),
        n > 0 && n <= 4 && attached && edus.iter().take(n).all(Option::is_some),
    ) {
        return r.finish("storm");
    }
    let mut started = 0u64;
    let mut errors = 0u64;
    for round in 0..BASELINE_ROUNDS + STORM_ROUNDS {
        if let Some(page) = round.checked_sub(BASELINE_ROUNDS) {
            let edu = edus[page as usize % n].as_ref().expect("checked above");
            match edu
                .wait_idle()
                .and_then(|()| edu.start_dma_to_ram(0, STORM_IOVA + u64::from(page) * 0x1000, 4096))
            {
                Ok(()) => started += 1,
                Err(_) => errors += 1,
            }
        }
        sluice_guest::park();
    }
    for edu in edus.iter().flatten() {
        let _ = edu.wait_idle();
    }
    r.check(
        format_args!("{started} DMAs started, {errors} edu errors"),
        errors == 0 && started == u64::from(STORM_ROUNDS),
    );
    let (mut records, mut lost, mut reads) = (0usize, 0u64, 0u32);
    let mut faults = [FaultRecord::default(); 64];
    loop {
        match hc::fault_read(&mut faults) {
            Ok(f) => {
                records += f.count;
                lost += f.lost;
                reads += 1;
                if f.count == 0 {
                    break;
                }
            }
            Err(e) => {
                r.check(format_args!("FAULT_READ ({e:?})"), false);
                break;
            }
        }
    }
    println!(
        "storm: {started} DMAs; FAULT_READ: {records} records, out_lost {lost}, in {reads} reads"
    );
    r.check(
        format_args!("the fault queue held {FAULT_QUEUE} records ({records})"),
        records == FAULT_QUEUE,
    );
    // One record per transfer, unless the IOMMU itself dropped a whole
    // burst (its queue still full from the last one): QEMU's SMMUv3 event
    // queue holds 128 events, its VT-d one fault.
    r.check(format_args!("the records past the queue were counted in out_lost ({lost}; {} of {started} transfers)", records as u64 + lost), lost > 0);
    r.finish("storm")
}
