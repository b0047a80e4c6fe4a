//! A device that keeps faulting is switched off: this program's device
//! DMAs to IOVAs it never mapped until the hypervisor tells it (a fault
//! record with FLAG_BUS_MASTER_OFF) that the device passed the partition's
//! `fault_limit` and its bus mastering is off. Then a DMA into a page that
//! is mapped must move nothing and fault nothing.
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
use sluice_guest::abi::{FaultRecord, fault_reason, map_flags};
use sluice_guest::edu::Edu;
use sluice_guest::{StartInfo, hc, println};

sluice_guest::entry!(main);

const RW: u32 = map_flags::READABLE | map_flags::WRITEABLE;
const IOVA: u64 = 0x20_0000;
/// Unmapped IOVAs the device aims at, one page per try.
const WILD: u64 = 0x80_0000;
/// Most tries before giving up (the manifest's limit is below this).
const TRIES: u64 = 32;

fn main(info: &StartInfo) -> u32 {
    let mut r = Report::default();
    let base = demo::buffer_base();
    let dev = info.devices()[0].dev_id;
    let Some(edu) = Edu::open(0) else {
        r.check(format_args!("the edu opens"), false);
        return r.finish("quarantine");
    };
    let setup = hc::ioas_alloc().and_then(|ioas| {
        hc::device_attach(dev, ioas)?;
        hc::ioas_map(ioas, base, 0x1000, Some(IOVA), RW)
    });
    page(base, 0).fill(0x77);
    let load = edu.dma_from_ram(IOVA, 0, 4096);
    page(base, 0).fill(0);
    r.check(
        format_args!("MAP and a first DMA work ({setup:?}, {load:?})"),
        setup.is_ok() && load.is_ok(),
    );

    let mut records = 0;
    let mut notice = None;
    for i in 0..TRIES {
        let _ = edu.dma_to_ram(0, WILD + i * 0x1000, 4096);
        let mut faults = [FaultRecord::default(); 8];
        if let Ok(f) = hc::fault_read(&mut faults) {
            for x in &faults[..f.count] {
                if x.flags & fault_reason::FLAG_BUS_MASTER_OFF != 0 {
                    notice = Some((i + 1, *x));
                } else {
                    records += 1;
                }
            }
        }
        if notice.is_some() {
            break;
        }
    }
    println!("quarantine: {records} fault records, then the notice {notice:x?}");
    let told = notice
        .is_some_and(|(_, x)| x.dev_id == dev && x.reason == fault_reason::OTHER && x.iova == 0);
    r.check(
        format_args!("the hypervisor told the partition its device's bus mastering is off"),
        told,
    );
    // Bus mastering off: the DMA goes nowhere, the IOMMU sees nothing.
    let dma = edu.dma_to_ram(0, IOVA, 4096);
    let mut faults = [FaultRecord::default(); 8];
    let after = hc::fault_read(&mut faults).map(|f| f.count);
    r.check(
        format_args!(
            "a DMA into the mapped page moved nothing ({dma:?}) and faulted nothing ({after:?})"
        ),
        page(base, 0).iter().all(|&b| b == 0) && after == Ok(0),
    );
    r.finish("quarantine")
}
