//! The parts of the boot code both architectures share: physical frames
//! ([`frames`]) and the hypervisor heap ([`heap`], the global allocator),
//! both over the identity map the boot code sets up.
//!
//! Only bare-metal images link this crate; its global allocator would
//! replace the host's otherwise.
#![no_std]

pub mod frames;
pub mod heap;

/// The virtual address of physical address `pa`: both boot crates map
/// memory 1:1.
#[inline]
#[must_use]
pub const fn phys_to_virt(pa: u64) -> *mut u8 {
    pa as *mut u8
}
