//! Partition reset while a device is DMAing: the first time it runs, this
//! program maps a buffer, starts an edu DMA into it (edu copies after
//! 100 ms) and exits at once. The hypervisor resets the partition
//! (manifest `restarts = 1`): devices blocked, objects destroyed, pins
//! released, RAM zeroed; then starts it again. The second time it checks
//! that the DMA was still in flight then, that it landed nowhere (its
//! memory stays zero), that nothing of the first life is left, and that
//! the device works again once mapped anew.
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
use reliability::page;
use sluice_guest::abi::{DeviceInfo, FaultRecord, map_flags};
use sluice_guest::edu::Edu;
use sluice_guest::{StartInfo, hc, println};

sluice_guest::entry!(main);

const RW: u32 = map_flags::READABLE | map_flags::WRITEABLE;
/// The buffer's IOVA: page 0 is the DMA's source, page 1 its target.
const IOVA: u64 = 0x20_0000;
/// Bytes of RAM after the buffer filled with a marker before the reset.
const MARKED: u64 = 0x40_000;
const PATTERN: u8 = 0xc3;
const MARKER: u8 = 0xee;

fn main(info: &StartInfo) -> u32 {
    let mut r = Report::default();
    let base = demo::buffer_base();
    let Some(edu) = Edu::open(0) else {
        r.check(format_args!("the edu opens"), false);
        return r.finish("reset-dma");
    };
    let dev = info.devices()[0].dev_id;
    if info.resets == 0 {
        first_life(&mut r, &edu, dev, base);
    } else {
        second_life(&mut r, info, &edu, dev, base);
    }
    r.finish("reset-dma")
}

fn first_life(r: &mut Report, edu: &Edu, dev: u32, base: u64) {
    println!("reset-dma: first start; buffer at GPA {base:#x}, IOVA {IOVA:#x}");
    let setup = hc::ioas_alloc().and_then(|ioas| {
        hc::device_attach(dev, ioas)?;
        hc::ioas_map(ioas, base, 0x2000, Some(IOVA), RW)
    });
    if !r.check(
        format_args!("IOAS, attach, MAP of the buffer ({setup:?})"),
        setup == Ok(IOVA),
    ) {
        return;
    }
    page(base, 0).fill(PATTERN);
    page(base, 1).fill(0);
    let load = edu.dma_from_ram(IOVA, 0, 4096);
    r.check(
        format_args!("the edu loaded the pattern from RAM ({load:?})"),
        load.is_ok(),
    );
    for p in 1..MARKED / 4096 {
        page(base, p).fill(MARKER);
    }
    let start = edu.start_dma_to_ram(0, IOVA + 0x1000, 4096);
    let busy = edu.is_busy();
    r.check(
        format_args!(
            "a DMA into page 1 (IOVA {:#x}) is in flight ({start:?}, busy {busy}); exiting now",
            IOVA + 0x1000
        ),
        start.is_ok() && busy,
    );
}

fn second_life(r: &mut Report, info: &StartInfo, edu: &Edu, dev: u32, base: u64) {
    let busy = edu.is_busy();
    println!(
        "reset-dma: started again after reset {} (edu busy: {busy})",
        info.resets
    );
    r.check(
        format_args!("the DMA was still in flight when the partition started again"),
        busy,
    );
    let idle = edu.wait_idle();
    r.check(
        format_args!("the edu finished its DMA attempt ({idle:?})"),
        idle.is_ok(),
    );
    let zero = (0..MARKED / 4096).all(|p| page(base, p).iter().all(|&b| b == 0));
    r.check(
        format_args!(
            "the buffer and the {} KiB after it are zero: scrubbed, and the DMA landed nowhere",
            MARKED >> 10
        ),
        zero,
    );
    let mut devices = [DeviceInfo::default(); 2];
    let listed = hc::device_list(&mut devices);
    r.check(
        format_args!(
            "the device is blocked (attached to {})",
            devices[0].attached_pt
        ),
        listed == Ok(1) && devices[0].attached_pt == 0,
    );
    let mut faults = [FaultRecord::default(); 8];
    let f = hc::fault_read(&mut faults);
    if let Ok(f) = &f {
        for x in &faults[..f.count] {
            println!(
                "reset-dma: FAULT_READ: device {} IOVA {:#x} reason {} flags {}",
                x.dev_id, x.iova, x.reason, x.flags
            );
        }
    }
    // VT-d reports the blocked DMA; an SMMUv3 abort STE records nothing.
    r.check(
        format_args!("every fault record is the blocked DMA into the old IOVA"),
        f.is_ok_and(|f| {
            faults[..f.count]
                .iter()
                .all(|x| x.dev_id == dev && x.iova >> 12 == (IOVA + 0x1000) >> 12)
        }),
    );
    // The partition works as new: ids start after the devices again.
    let ioas = hc::ioas_alloc();
    r.check(
        format_args!("a new IOAS gets the first free id ({ioas:?})"),
        ioas == Ok(dev + 1),
    );
    let Ok(ioas) = ioas else { return };
    let again =
        hc::device_attach(dev, ioas).and_then(|_| hc::ioas_map(ioas, base, 0x2000, Some(IOVA), RW));
    page(base, 0).fill(0x3c);
    let dma = edu
        .dma_from_ram(IOVA, 0, 4096)
        .and_then(|()| edu.dma_to_ram(0, IOVA + 0x1000, 4096));
    r.check(
        format_args!(
            "after a new MAP the device copies page 0 to page 1 again ({again:?}, {dma:?})"
        ),
        again.is_ok() && dma.is_ok() && page(base, 1).iter().all(|&b| b == 0x3c),
    );
}
