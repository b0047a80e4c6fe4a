//! The isolation demo, partition B: the victim. It maps a buffer for its
//! own device at a well-known IOVA, proves its device reaches it, fills it
//! with a pattern, then parks while A attacks. Once A has ended it checks
//! that the buffer still holds its pattern and that it was not told of
//! anybody else's faults.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

#[path = "../demo.rs"]
mod demo;

use demo::{B_BUFFER_IOVA, B_PATTERN, Report};
use sluice_guest::abi::{FaultRecord, map_flags};
use sluice_guest::edu::Edu;
use sluice_guest::{StartInfo, hc, println};

sluice_guest::entry!(main);

fn buffer_page(base: u64, page: u64) -> &'static mut [u8] {
    // SAFETY: two pages of this partition's own free RAM (identity
    // mapped), used by nothing else in the program.
    unsafe { core::slice::from_raw_parts_mut((base + page * 4096) as *mut u8, 4096) }
}

fn main(info: &StartInfo) -> u32 {
    let mut r = Report::default();
    let base = demo::buffer_base();
    println!("B: partition {} with {} MiB of RAM; buffer at GPA {base:#x}", info.name(), info.ram_size >> 20);
    let Some(edu) = Edu::open(0) else {
        r.check(format_args!("B owns an edu device"), false);
        return r.finish("B");
    };
    let dev = info.devices()[0].dev_id;
    let setup = (|| {
        let ioas = hc::ioas_alloc()?;
        hc::device_attach(dev, ioas)?;
        hc::ioas_map(ioas, base, 0x2000, Some(B_BUFFER_IOVA), map_flags::READABLE | map_flags::WRITEABLE)
    })();
    if !r.check(format_args!("B mapped its buffer for its device at IOVA {B_BUFFER_IOVA:#x} ({setup:?})"), setup.is_ok()) {
        return r.finish("B");
    }
    for (i, b) in buffer_page(base, 0).iter_mut().enumerate() {
        *b = (i as u8) ^ 0x3c;
    }
    let dma = edu.dma_from_ram(B_BUFFER_IOVA, 0, 4096).and_then(|()| edu.dma_to_ram(0, B_BUFFER_IOVA + 0x1000, 4096));
    let copied = buffer_page(base, 0) == buffer_page(base, 1);
    r.check(format_args!("B's own device copied page 0 to page 1 through its IOVA ({dma:?})"), dma.is_ok() && copied);
    buffer_page(base, 0).fill(B_PATTERN);
    buffer_page(base, 1).fill(B_PATTERN);

    println!("B: buffer filled with {B_PATTERN:#x}; parking while the others run");
    sluice_guest::park();
    println!("B: resumed");

    let intact = buffer_page(base, 0).iter().chain(buffer_page(base, 1).iter()).all(|&b| b == B_PATTERN);
    r.check(format_args!("B's buffer still holds its pattern after A's attacks"), intact);
    let mut records = [FaultRecord::default(); 8];
    let faults = hc::fault_read(&mut records);
    r.check(
        format_args!("B was told of no fault (A's device's faults are A's): {faults:?}"),
        matches!(faults, Ok(f) if f.count == 0 && f.lost == 0),
    );
    r.finish("B")
}
