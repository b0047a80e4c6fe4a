//! Memory bring-up: from the loader's memory map to the frame allocator,
//! the heap, and the identity map of RAM above 4 GiB.

use alloc::vec::Vec;

use crate::bootinfo::{BootInfo, RawBoot, usable_ram};
use crate::paging::{self, Cache};
use crate::{frames, heap};

/// The heap's size after boot.
pub const HEAP_BYTES: usize = 16 << 20;

const LOW_MEMORY_END: u64 = 1 << 20;
const FOUR_GIB: u64 = 1 << 32;

unsafe extern "C" {
    /// First byte of the image (linker script).
    static __image_start: u8;
    /// End of the image, .bss included, 4 KiB aligned (linker script).
    static __image_end: u8;
}

/// The physical range the image occupies, .bss included.
#[must_use]
pub fn image_range() -> (u64, u64) {
    (core::ptr::addr_of!(__image_start) as u64, core::ptr::addr_of!(__image_end) as u64)
}

/// Hand usable RAM to the frame allocator, map RAM
/// above 4 GiB, grow the heap, and return the owned boot information.
pub fn init(raw: &RawBoot) -> BootInfo {
    let (image_start, image_end) = image_range();
    // No heap yet: the holes go into a fixed array.
    let mut fixed = [(0u64, 0u64); 64];
    let mut n = 0;
    for h in [(0, LOW_MEMORY_END), (image_start, image_end)].into_iter().chain(raw.loader_ranges.as_slice().iter().copied()) {
        if n < fixed.len() {
            fixed[n] = h;
            n += 1;
        }
    }
    let usable = usable_ram(raw.regions.as_slice(), &fixed[..n]);

    heap::init_bootstrap();
    for &(start, end) in usable.as_slice() {
        frames::add_range(start, end.min(FOUR_GIB));
    }
    let mut clipped = 0u64;
    for &(start, end) in usable.as_slice() {
        let start = start.max(FOUR_GIB);
        if start >= end {
            continue;
        }
        match paging::map_identity(start, end - start, Cache::Ram) {
            Ok(()) => frames::add_range(start, end),
            Err(e) => {
                clipped += end - start;
                println!("memory: RAM {start:#x}..{end:#x} not used ({e:?})");
            }
        }
    }

    let mut heap_range = None;
    let mut size = HEAP_BYTES;
    while heap_range.is_none() && size >= 1 << 20 {
        heap_range = heap::grow(size);
        size /= 2;
    }

    let free: Vec<(u64, u64)> = usable.as_slice().iter().map(|&(s, e)| (s, e - s)).collect();
    if clipped != 0 {
        println!("memory: {} MiB of RAM above the identity map left unused", clipped >> 20);
    }
    match heap_range {
        Some((s, e)) => println!("heap: {} MiB of frames at {s:#x}..{e:#x}", (e - s) >> 20),
        None => println!("heap: could not grow beyond the bootstrap region"),
    }
    raw.boot_info(&free)
}
