//! Physical 4 KiB frames: a buddy allocator over the usable RAM each
//! architecture's memory setup hands it (RAM minus the image, the loader's
//! or firmware's structures, and on x86_64 the low 1 MiB).
//!
//! Blocks are powers of two: `alloc(n)` hands out `n.next_power_of_two()`
//! frames aligned to that size, and `free` must get the same `n` back.

use buddy_system_allocator::FrameAllocator;
use spin::Mutex;

/// Bytes in a frame.
pub const FRAME_BYTES: u64 = 4096;

struct Frames {
    buddy: FrameAllocator,
    /// Frames handed to the allocator, ever.
    total: usize,
    /// Frames currently handed out (rounded up to powers of two).
    used: usize,
}

static FRAMES: Mutex<Frames> = Mutex::new(Frames { buddy: FrameAllocator::new(), total: 0, used: 0 });

/// Give the frames of `start..end` (byte addresses, rounded inwards to
/// 4 KiB) to the allocator. The range must be unused RAM inside the identity
/// map, never handed in twice.
pub fn add_range(start: u64, end: u64) {
    let first = start.div_ceil(FRAME_BYTES);
    let last = end / FRAME_BYTES;
    if first >= last {
        return;
    }
    let mut f = FRAMES.lock();
    f.buddy.add_frame(first as usize, last as usize);
    f.total += (last - first) as usize;
}

/// `count` contiguous frames (rounded up to a power of two, aligned to it):
/// the physical address of the first, or `None` when none is free. The
/// contents are whatever was there.
#[must_use]
pub fn alloc(count: usize) -> Option<u64> {
    if count == 0 {
        return None;
    }
    let mut f = FRAMES.lock();
    let first = f.buddy.alloc(count)?;
    f.used += count.next_power_of_two();
    Some(first as u64 * FRAME_BYTES)
}

/// As [`alloc`], with the frames zeroed.
#[must_use]
pub fn alloc_zeroed(count: usize) -> Option<u64> {
    let pa = alloc(count)?;
    let bytes = count.next_power_of_two() * FRAME_BYTES as usize;
    // SAFETY: the frames were just handed out to us alone, lie in the
    // identity map (only mapped RAM is given to the allocator), and are
    // `bytes` long.
    unsafe { core::ptr::write_bytes(crate::phys_to_virt(pa), 0, bytes) };
    Some(pa)
}

/// Give back what `alloc(count)` returned as `pa`.
pub fn free(pa: u64, count: usize) {
    assert!(pa.is_multiple_of(FRAME_BYTES), "freeing unaligned frame {pa:#x}");
    if count == 0 {
        return;
    }
    let mut f = FRAMES.lock();
    f.buddy.dealloc((pa / FRAME_BYTES) as usize, count);
    f.used -= count.next_power_of_two();
}

/// Frames free now.
#[must_use]
pub fn free_frames() -> usize {
    let f = FRAMES.lock();
    f.total - f.used
}

/// Frames managed in all.
#[must_use]
pub fn total_frames() -> usize {
    FRAMES.lock().total
}
