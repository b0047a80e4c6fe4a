//! The global allocator: a buddy `Heap` behind a spin lock. It starts on a
//! small region inside the image (enough for the frame allocator's own
//! bookkeeping) and then grows by a block of frames.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use buddy_system_allocator::Heap;
use spin::Mutex;

use crate::frames;

/// Size of the region inside the image that serves allocations until the
/// frame allocator exists.
const BOOTSTRAP_BYTES: usize = 128 * 1024;

#[repr(C, align(4096))]
struct Bootstrap([u8; BOOTSTRAP_BYTES]);

/// Written only through the heap, after `init_bootstrap` handed it over.
static mut BOOTSTRAP: Bootstrap = Bootstrap([0; BOOTSTRAP_BYTES]);

struct KernelHeap(Mutex<Heap<32>>);

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(Mutex::new(Heap::new()));

// SAFETY: `Heap` returns blocks of at least the layout's size and alignment
// from memory it owns exclusively, and the lock serialises all access.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let result = self.0.lock().alloc(layout);
        match result {
            Ok(p) => p.as_ptr(),
            Err(()) => {
                // The default error handler panics next; say why first.
                let (used, total) = stats();
                log::error!(
                    "heap exhausted: {} bytes (align {}) requested, {used} of {total} bytes in use",
                    layout.size(),
                    layout.align()
                );
                core::ptr::null_mut()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(ptr) = NonNull::new(ptr) else { return };
        // SAFETY: per GlobalAlloc's contract `ptr` came from `alloc` on this
        // heap with the same layout.
        unsafe { self.0.lock().dealloc(ptr, layout) };
    }
}

/// Hand the in-image bootstrap region to the heap. Call once, first.
pub fn init_bootstrap() {
    let start = core::ptr::addr_of_mut!(BOOTSTRAP) as usize;
    // SAFETY: BOOTSTRAP is a static no code names except here, handed to
    // the heap exactly once (kmain calls this once) and never used
    // otherwise.
    unsafe { HEAP.0.lock().add_to_heap(start, start + BOOTSTRAP_BYTES) };
}

/// Grow the heap by `bytes` (rounded up to a power-of-two number of frames)
/// taken from the frame allocator. Returns the physical range added.
pub fn grow(bytes: usize) -> Option<(u64, u64)> {
    let frames = bytes.div_ceil(frames::FRAME_BYTES as usize).next_power_of_two();
    let pa = frames::alloc(frames)?;
    let len = frames as u64 * frames::FRAME_BYTES;
    let start = crate::phys_to_virt(pa) as usize;
    // SAFETY: the frames were just allocated for the heap alone, are mapped
    // RAM, and are never given back to the frame allocator.
    unsafe { HEAP.0.lock().add_to_heap(start, start + len as usize) };
    Some((pa, pa + len))
}

/// Bytes handed out and bytes managed by the heap.
#[must_use]
pub fn stats() -> (usize, usize) {
    let h = HEAP.0.lock();
    (h.stats_alloc_actual(), h.stats_total_bytes())
}

/// Bytes of the heap not handed out now.
#[must_use]
pub fn free_bytes() -> usize {
    let (used, total) = stats();
    total.saturating_sub(used)
}

/// The core's heap budget over this heap (see `sluice_kernel::heap`):
/// what the core charges (worst cases, in buddy blocks) is counted against
/// the heap's free bytes when the budget was made, less `margin` for what
/// the rest of the hypervisor allocates later and for fragmentation. A
/// charge that does not fit first grows the heap by frames. Install with
/// `hv.set_heap_budget(Box::new(CoreBudget::new(margin)))` once the
/// platform's own allocations are done.
#[derive(Debug)]
pub struct CoreBudget {
    limit: usize,
    charged: usize,
}

impl CoreBudget {
    /// A budget of the heap's free bytes now, less `margin`.
    #[must_use]
    pub fn new(margin: usize) -> Self {
        Self { limit: free_bytes().saturating_sub(margin), charged: 0 }
    }

    /// Bytes charged now.
    #[must_use]
    pub fn charged(&self) -> usize {
        self.charged
    }
}

impl sluice_kernel::heap::HeapBudget for CoreBudget {
    fn charge(&mut self, bytes: usize, why: sluice_kernel::heap::HeapUse) -> bool {
        let want = self.charged.saturating_add(bytes);
        if why == sluice_kernel::heap::HeapUse::Grow && want > self.limit {
            match grow(want - self.limit) {
                Some((start, end)) => self.limit += (end - start) as usize,
                None => return false,
            }
            if want > self.limit {
                return false;
            }
        }
        self.charged = want;
        true
    }

    fn uncharge(&mut self, bytes: usize) {
        self.charged = self.charged.saturating_sub(bytes);
    }
}
