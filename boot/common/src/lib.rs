//! The parts of the boot code both architectures share: physical frames
//! ([`frames`]), the hypervisor heap ([`heap`], the global allocator) and
//! the core's table-memory and RAM views ([`memory`]), all over the
//! identity map the boot code sets up, and the isolation self-test both
//! images run ([`selftest`]).
//!
//! Only bare-metal images link this crate; its global allocator would
//! replace the host's otherwise.
#![no_std]

extern crate alloc;

pub mod frames;
pub mod heap;
pub mod memory;
pub mod partition;
pub mod selftest;

pub use memory::{IdentityMap, IdentityRam, FrameTables};

/// The value of `key=value` in `cmdline` (the last one wins); `Some("")`
/// for a bare `key`.
#[must_use]
pub fn cmdline_option<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().rev().find_map(|word| match word.split_once('=') {
        Some((k, v)) if k == key => Some(v),
        None if word == key => Some(""),
        _ => None,
    })
}

/// The virtual address of physical address `pa`: both boot crates map
/// memory 1:1.
#[inline]
#[must_use]
pub const fn phys_to_virt(pa: u64) -> *mut u8 {
    pa as *mut u8
}
