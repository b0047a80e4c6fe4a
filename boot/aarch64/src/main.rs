//! Sluice for aarch64: the bootable image (ELF for QEMU `-kernel`, raw
//! arm64 `Image` for QEMU `-kernel` and U-Boot `booti`).
//!
//! Boot flow: `entry` (EL2, MMU off: boot map, MMU on, self-relocation) ->
//! `start::kmain`: device tree, console, final page tables, memory (frames,
//! heap), generic timer, then the self-test, and out through semihosting.
//!
//! Only the bare-metal target (`aarch64-unknown-none`) gets the hypervisor;
//! on any other target (a host `cargo clippy --workspace`) this crate is a
//! stub `main` that says so.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("sluice-aarch64 is a bare-metal image: build it with --target aarch64-unknown-none");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
#[macro_use]
mod console;

#[cfg(target_os = "none")]
mod bootinfo;
#[cfg(target_os = "none")]
mod dt;
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
mod start;
#[cfg(target_os = "none")]
mod timer;
#[cfg(target_os = "none")]
mod vcpu;
