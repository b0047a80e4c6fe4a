//! The witness: runs after the ABI suite's hostile hypercalls and the
//! wild partition's stop, and shows the hypervisor still serves a
//! partition fully. It owns two edu devices (ids 1 and 2): both must
//! still be blocked and fault-free (nothing the others did reached them);
//! then an IOAS, both devices attached (one automatic HWPT), a buffer
//! mapped, edu DMA both ways through each device, the bytes checked,
//! UNMAP, a DMA to the unmapped IOVA read back with FAULT_READ, detach,
//! destroy. Exit code 0 when every check held.
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use sluice_guest::abi::{DeviceInfo, FaultRecord, fault_reason, map_flags};
use sluice_guest::edu::Edu;
use sluice_guest::raw::RawRam;
use sluice_guest::{StartInfo, hc, println};

sluice_guest::entry!(main);

#[derive(Default)]
struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn check(&mut self, ok: bool, what: core::fmt::Arguments<'_>) -> bool {
        if ok {
            self.passed += 1;
            println!("check: ok: {what}");
        } else {
            self.failed += 1;
            println!("check: FAIL: {what}");
        }
        ok
    }

    fn finish(&self) -> u32 {
        println!("summary: witness: {} checks passed, {} failed", self.passed, self.failed);
        u32::from(self.failed != 0)
    }
}

const RW: u32 = map_flags::READABLE | map_flags::WRITEABLE;

fn main(info: &'static StartInfo) -> u32 {
    let mut r = Report::default();
    let mut devices = [DeviceInfo::default(); 4];
    let n = hc::device_list(&mut devices).unwrap_or(0);
    let blocked = devices[..n].iter().all(|d| d.attached_pt == 0);
    r.check(n == 2 && blocked, format_args!("witness has its two devices, both still blocked ({n}; attached_pt {:?})", [devices[0].attached_pt, devices[1].attached_pt]));
    let mut faults = [FaultRecord::default(); 4];
    let f = hc::fault_read(&mut faults);
    r.check(f.is_ok_and(|f| f.count == 0 && f.lost == 0), format_args!("no fault of the others reached the witness ({f:?})"));
    if n != 2 {
        return r.finish();
    }
    let (d0, d1) = (devices[0].dev_id, devices[1].dev_id);

    // Its buffer: two pages of free RAM, reached only through RawRam.
    #[cfg(target_os = "none")]
    let free = sluice_guest::free_ram();
    // Host builds (which only check that the program compiles) have none.
    #[cfg(not(target_os = "none"))]
    let free = 0u64..0;
    let base = free.start.next_multiple_of(0x20_0000);
    let Some(mut ram) = RawRam::claim(base..base + 0x2000) else {
        r.check(false, format_args!("two pages of free RAM at {base:#x}"));
        return r.finish();
    };
    let ioas = hc::ioas_alloc();
    let h0 = ioas.and_then(|a| hc::device_attach(d0, a));
    let h1 = ioas.and_then(|a| hc::device_attach(d1, a));
    r.check(h0.is_ok() && h0 == h1, format_args!("IOAS {ioas:?}; both devices attached through one HWPT ({h0:?}, {h1:?})"));
    let Ok(ioas) = ioas else { return r.finish() };
    let iova = hc::ioas_map(ioas, base, 0x2000, None, RW);
    r.check(iova.is_ok(), format_args!("MAP of its buffer {base:#x} ({iova:x?})"));
    let Ok(iova) = iova else { return r.finish() };
    let (Some(e0), Some(e1)) = (Edu::open(0), Edu::open(1)) else {
        r.check(false, format_args!("both devices are edus"));
        return r.finish();
    };
    let mut pattern = [0u8; 256];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13) ^ 0x5c;
    }
    let _ = ram.write(base, &pattern);
    let _ = ram.fill(base + 0x1000, 0x1000, 0);
    // Device 0: page 0 -> its buffer -> page 1; device 1: page 1 -> its
    // buffer -> page 1 + 0x800.
    let dma = e0
        .dma_from_ram(iova, 0, 256)
        .and_then(|()| e0.dma_to_ram(0, iova + 0x1000, 256))
        .and_then(|()| e1.dma_from_ram(iova + 0x1000, 0, 256))
        .and_then(|()| e1.dma_to_ram(0, iova + 0x1800, 256));
    let mut a = [0u8; 256];
    let mut b = [0u8; 256];
    let _ = ram.read(base + 0x1000, &mut a);
    let _ = ram.read(base + 0x1800, &mut b);
    r.check(dma.is_ok() && a == pattern && b == pattern, format_args!("edu DMA both ways through both devices copied the bytes ({dma:?})"));
    let un = hc::ioas_unmap(ioas, iova, 0x2000);
    r.check(un == Ok(0x2000), format_args!("UNMAP of the buffer ({un:?})"));
    let _ = ram.fill(base + 0x1000, 0x1000, 0);
    let d = e0.dma_to_ram(0, iova + 0x1000, 256);
    let f = hc::fault_read(&mut faults);
    let mut after = [0u8; 256];
    let _ = ram.read(base + 0x1000, &mut after);
    let rec = faults[0];
    let good = f.is_ok_and(|f| f.count == 1 && f.lost == 0)
        && rec.dev_id == d0
        && rec.iova == iova + 0x1000
        && rec.reason == fault_reason::NOT_PRESENT
        && rec.flags == fault_reason::FLAG_WRITE
        && after.iter().all(|x| *x == 0);
    r.check(good, format_args!("DMA to the unmapped IOVA changed nothing and FAULT_READ reports it ({d:?}, {f:?}, {rec:?})"));
    let det = hc::device_detach(d0).and_then(|()| hc::device_detach(d1));
    let des = hc::destroy(ioas);
    r.check(det.is_ok() && des.is_ok(), format_args!("detach both ({det:?}), destroy the IOAS ({des:?})"));
    println!("witness: partition {} served to the end", info.name());
    r.finish()
}
