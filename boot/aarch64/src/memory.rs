//! Memory bring-up: from the device tree's memory nodes to the final page
//! tables, the frame allocator and the heap.

use alloc::vec::Vec;

use crate::bootinfo::{BootInfo, DtbSource, usable_ram};
use crate::dt::{Devices, RawDt};
use crate::{frames, heap, paging};

/// The heap's size after boot.
pub const HEAP_BYTES: usize = 16 << 20;

unsafe extern "C" {
    /// First byte of the image (linker script).
    static __image_start: u8;
    /// End of the image, .bss and boot tables included, 4 KiB aligned.
    static __image_end: u8;
}

/// The physical range the image occupies (where it was loaded), .bss
/// included.
#[must_use]
pub fn image_range() -> (u64, u64) {
    (core::ptr::addr_of!(__image_start) as u64, core::ptr::addr_of!(__image_end) as u64)
}

/// The final page tables (RAM from `raw`): call before [`init`], while only
/// the image and the DTB are touched.
pub fn init_paging(raw: &RawDt) -> Result<usize, paging::MapError> {
    paging::init(raw.memory.as_slice())
}

/// Hand usable RAM (memory nodes minus the image, the DTB and reserved
/// ranges) to the frame allocator, grow the heap, and return the owned boot
/// information.
pub fn init(raw: &RawDt, dtb_pa: u64, dtb_source: DtbSource, devices: impl FnOnce() -> Devices) -> BootInfo {
    let (image_start, image_end) = image_range();
    let dtb_end = dtb_pa + raw.total_size as u64;
    // No heap yet: the holes go into a fixed array.
    let mut fixed = [(0u64, 0u64); 40];
    let mut n = 0;
    for h in [(image_start, image_end), (dtb_pa, dtb_end)].into_iter().chain(raw.reserved.as_slice().iter().copied()) {
        if n < fixed.len() {
            fixed[n] = h;
            n += 1;
        }
    }
    let usable = usable_ram(raw.memory.as_slice(), &fixed[..n]);

    heap::init_bootstrap();
    let mut unmapped = 0u64;
    for &(start, end) in usable.as_slice() {
        if paging::is_mapped(start, end - start) {
            frames::add_range(start, end);
        } else {
            unmapped += end - start;
        }
    }

    let mut heap_range = None;
    let mut size = HEAP_BYTES;
    while heap_range.is_none() && size >= 1 << 20 {
        heap_range = heap::grow(size);
        size /= 2;
    }

    if unmapped != 0 {
        println!("memory: {} KiB of RAM outside the page tables left unused", unmapped >> 10);
    }
    match heap_range {
        Some((s, e)) => println!("heap: {} MiB of frames at {s:#x}..{e:#x}", (e - s) >> 20),
        None => println!("heap: could not grow beyond the bootstrap region"),
    }
    let mut ram: Vec<(u64, u64)> = raw.memory.as_slice().to_vec();
    ram.sort_unstable();
    BootInfo {
        cmdline: raw.bootargs.into(),
        dtb_pa,
        dtb_len: raw.total_size as u64,
        dtb_source,
        ram,
        reserved: raw.reserved.as_slice().iter().map(|&(s, e)| (s, e.saturating_sub(s))).collect(),
        free_ram: usable.as_slice().iter().filter(|&&(s, e)| paging::is_mapped(s, e - s)).map(|&(s, e)| (s, e - s)).collect(),
        devices: devices(),
    }
}
