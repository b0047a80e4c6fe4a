//! The isolation demo, partition A: uses its device the way it should,
//! then tries what an attacker would. It lists its devices, reads its
//! device's reserved ranges and the IOAS ranges before and after the
//! attach (the edu's 28-bit DMA limit narrows them), maps a buffer and
//! runs edu DMA both ways; then: MAP of memory it does not own, attach of
//! a device id it does not own, DMA to an IOVA it never mapped and to the
//! IOVA of B's buffer; it reads the faults back with FAULT_READ.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

#[path = "../demo.rs"]
mod demo;

use demo::{B_BUFFER_IOVA, Report};
use sluice_guest::abi::{DeviceInfo, Errno, FaultRecord, IovaRange, ResvRange, fault_reason, map_flags};
use sluice_guest::edu::Edu;
use sluice_guest::{StartInfo, hc, println};

sluice_guest::entry!(main);

const RW: u32 = map_flags::READABLE | map_flags::WRITEABLE;
/// An IOVA A never maps.
const NEVER_MAPPED: u64 = 0x0080_0000;

fn page(base: u64, page: u64) -> &'static mut [u8] {
    // SAFETY: two pages of this partition's own free RAM (identity
    // mapped), used by nothing else in the program.
    unsafe { core::slice::from_raw_parts_mut((base + page * 4096) as *mut u8, 4096) }
}

fn ranges(ioas: u32) -> Result<([IovaRange; 8], usize), Errno> {
    let mut out = [IovaRange::default(); 8];
    let n = hc::ioas_iova_ranges(ioas, &mut out)?.count;
    for r in &out[..n] {
        println!("    [{:#x}, {:#x}]", r.start, r.last);
    }
    Ok((out, n))
}

#[allow(clippy::too_many_lines)]
fn main(info: &StartInfo) -> u32 {
    let mut r = Report::default();
    // Let B set up its buffer first: A parks until B parks too.
    sluice_guest::park();
    let base = demo::buffer_base();
    println!("A: partition {} with {} MiB of RAM at {:#x}; buffer at GPA {base:#x}", info.name(), info.ram_size >> 20, info.ram_base);

    // What it has.
    let mut devices = [DeviceInfo::default(); 8];
    let n = hc::device_list(&mut devices).unwrap_or(0);
    for d in &devices[..n] {
        println!("A: device {}: requester/stream id {:#x} on IOMMU {}, {}-bit DMA, attached to {}", d.dev_id, d.rid, d.iommu_id, d.dma_bits, d.attached_pt);
    }
    if !r.check(format_args!("A sees exactly its one device ({n})"), n == 1) {
        return r.finish("A");
    }
    let dev = devices[0].dev_id;
    let mut resv = [ResvRange::default(); 8];
    let nresv = hc::device_resv_iova_ranges(dev, &mut resv).unwrap_or(0);
    for v in &resv[..nresv] {
        println!("A: reserved [{:#x}, {:#x}] type {}", v.start, v.last, v.kind);
    }
    r.check(
        format_args!("the device's reserved ranges include its DMA limit [2^28, max]"),
        resv[..nresv].iter().any(|v| v.start == 1 << 28 && v.last == u64::MAX),
    );

    let Ok(ioas) = hc::ioas_alloc() else {
        r.check(format_args!("IOAS_ALLOC"), false);
        return r.finish("A");
    };
    println!("A: IOAS {ioas}: IOVA ranges before attach:");
    let before = ranges(ioas);
    let hwpt = hc::device_attach(dev, ioas);
    println!("A: attached device {dev} ({hwpt:?}); IOVA ranges after:");
    let after = ranges(ioas);
    let narrowed = match (&before, &after) {
        (Ok((b, nb)), Ok((a, na))) => b[..*nb].iter().any(|x| x.last == u64::MAX) && *na > 0 && a[..*na].iter().all(|x| x.last < 1 << 28),
        _ => false,
    };
    r.check(format_args!("attach narrowed the IOAS to what the device can reach (below 2^28)"), hwpt.is_ok() && narrowed);

    // Honest use: a buffer, DMA both ways.
    let iova = hc::ioas_map(ioas, base, 0x2000, None, RW);
    println!("A: mapped GPA {base:#x} at IOVA {iova:x?}");
    let Ok(iova) = iova else {
        r.check(format_args!("IOAS_MAP of its own buffer"), false);
        return r.finish("A");
    };
    let Some(edu) = Edu::open(0) else {
        r.check(format_args!("A's edu opens"), false);
        return r.finish("A");
    };
    for (i, b) in page(base, 0).iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ 0xa5;
    }
    page(base, 1).fill(0);
    let dma = edu.dma_from_ram(iova, 0, 4096).and_then(|()| edu.dma_to_ram(0, iova + 0x1000, 4096));
    r.check(format_args!("edu DMA RAM -> device -> RAM through the IOMMU copied page 0 to page 1 ({dma:?})"), dma.is_ok() && page(base, 0) == page(base, 1));

    // The attacks.
    let outside = info.ram_end();
    let e = hc::ioas_map(ioas, outside, 0x1000, None, RW);
    r.check(format_args!("MAP of memory A does not own (GPA {outside:#x}) -> EFAULT ({e:?})"), e == Err(Errno::EFAULT));
    let e = hc::ioas_map(ioas, 0x1000, 0x1000, None, RW);
    r.check(format_args!("MAP of GPA 0x1000 (not A's RAM) -> EFAULT ({e:?})"), e == Err(Errno::EFAULT));
    let foreign = dev + 1000;
    let e = hc::device_attach(foreign, ioas);
    r.check(format_args!("attach of device id {foreign}, which A does not own, fails ({e:?})"), e.is_err());

    let marker = 0x5a;
    page(base, 1).fill(marker);
    // Faults are read after each DMA: the IOMMUs keep few records (QEMU's
    // VT-d one, its SMMUv3 event queue 128 while edu faults every 4 bytes),
    // and the hypervisor collects them when the partition calls it.
    let mut records = [FaultRecord::default(); 16];
    let mut count = 0;
    let mut lost = 0;
    let mut read_faults = |records: &mut [FaultRecord; 16], count: &mut usize| {
        if let Ok(f) = hc::fault_read(&mut records[*count..]) {
            *count += f.count;
            lost += f.lost;
        }
    };
    let d1 = edu.dma_to_ram(0, NEVER_MAPPED, 4096);
    read_faults(&mut records, &mut count);
    let d2 = edu.dma_to_ram(0, B_BUFFER_IOVA, 4096);
    read_faults(&mut records, &mut count);
    let d3 = edu.dma_from_ram(B_BUFFER_IOVA, 0, 4096);
    read_faults(&mut records, &mut count);
    let d4 = edu.dma_to_ram(0, iova + 0x1000, 4096);
    read_faults(&mut records, &mut count);
    println!("A: DMA to IOVA {NEVER_MAPPED:#x}: {d1:?}; to B's buffer IOVA {B_BUFFER_IOVA:#x}: {d2:?}; read of it: {d3:?}, copied to A's page: {d4:?}");
    // The read through B's IOVA got nothing (a faulting read leaves the
    // device buffer as it was: A's own page-0 pattern).
    r.check(format_args!("reading B's buffer IOVA brought nothing of B's into A's memory"), !page(base, 1).contains(&demo::B_PATTERN));
    for f in &records[..count] {
        println!("A: FAULT_READ: device {} IOVA {:#x} reason {} flags {}", f.dev_id, f.iova, f.reason, f.flags);
    }
    let has = |iova: u64, flags: u32| records[..count].iter().any(|f| f.dev_id == dev && f.iova == iova && f.reason == fault_reason::NOT_PRESENT && f.flags == flags);
    r.check(
        format_args!("FAULT_READ reports the write to the never-mapped IOVA {NEVER_MAPPED:#x}"),
        has(NEVER_MAPPED, fault_reason::FLAG_WRITE),
    );
    r.check(
        format_args!("FAULT_READ reports the write and the read at B's buffer IOVA {B_BUFFER_IOVA:#x}"),
        has(B_BUFFER_IOVA, fault_reason::FLAG_WRITE) && has(B_BUFFER_IOVA, fault_reason::FLAG_READ),
    );
    r.check(format_args!("no fault record was lost ({lost})"), lost == 0);
    let e = hc::ioas_unmap_all(ioas);
    r.check(format_args!("UNMAP of everything ({e:?})"), e == Ok(0x2000));
    r.finish("A")
}
