//! Sluice for x86_64: the bootable image.
//!
//! Boot flow: `entry` (32-bit, PVH or Multiboot2) -> long mode -> `start::kmain`:
//! console, CPU tables, boot information, memory (frames, heap, identity map
//! above 4 GiB), TSC, then the self-test, and out through QEMU's
//! isa-debug-exit.
//!
//! Only the bare-metal target (`x86_64-unknown-none`) gets the hypervisor;
//! on any other target (a host `cargo clippy --workspace`) this crate is a
//! stub `main` that says so.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("sluice-x86_64 is a bare-metal image: build it with --target x86_64-unknown-none");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
#[macro_use]
mod console;

#[cfg(target_os = "none")]
mod bootinfo;
#[cfg(target_os = "none")]
mod cpu;
#[cfg(target_os = "none")]
mod entry;
#[cfg(target_os = "none")]
mod exceptions;
#[cfg(target_os = "none")]
use sluice_boot::frames;
#[cfg(target_os = "none")]
use sluice_boot::heap;
#[cfg(target_os = "none")]
mod machine;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
mod paging;
#[cfg(target_os = "none")]
mod partitions;
#[cfg(target_os = "none")]
mod platform;
#[cfg(target_os = "none")]
mod selftest;
#[cfg(target_os = "none")]
mod svm;
#[cfg(target_os = "none")]
mod tsc;
#[cfg(target_os = "none")]
mod start;
