//! SDK for programs that run in a Sluice partition.
//!
//! A partition program is a bare-metal ELF linked at
//! [`layout::IMAGE_BASE_GPA`] (0x4020_0000) for `x86_64-unknown-none` or
//! `aarch64-unknown-none`. The hypervisor loads it into the partition's
//! RAM, writes a [`StartInfo`] block, sets the stack and enters `_start`
//! (this crate's, see [`entry!`]), which zeroes `.bss` and calls the
//! program's `main(&StartInfo) -> u32`; the value `main` returns goes to
//! PARTITION_EXIT. The partition's memory is identity mapped (GPA = VA):
//! the address of a Rust value is its guest-physical address, which is
//! what the hypercalls take.
//!
//! - [`hypercall()`] and [`call`]: the raw instruction (x86_64 `vmmcall`,
//!   aarch64 `hvc #0`) for error-path tests;
//! - [`hc`]: one safe wrapper per command of ABI.md, returning
//!   `Result<_, Errno>`;
//! - [`console`]: [`print!`] / [`println!`] through CONSOLE_WRITE;
//! - [`edu`]: a driver for QEMU's edu DMA test device at the BAR0 the
//!   start info names;
//! - [`time`]: the CPU's counter for bounded waits;
//! - [`raw`]: a claimed range of free RAM with byte access and raw
//!   hypercalls that cannot write outside it, for error-path tests;
//! - the runtime: `_start`, the [`entry!`] macro, a panic handler that
//!   prints and exits with [`EXIT_PANIC`], and the linker scripts
//!   (`guest/sdk/link-x86_64.ld`, `link-aarch64.ld`).
//!
//! # A program crate
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "demo-a"
//! edition = "2024"
//!
//! [[bin]]
//! name = "demo-a"
//! path = "src/main.rs"
//! test = false
//! bench = false
//!
//! [dependencies]
//! sluice-guest = { path = "../sdk" }    # or `sluice-guest.workspace = true`
//! ```
//!
//! `build.rs` (this crate's build script hands the linker script over in
//! `DEP_SLUICE_GUEST_LDSCRIPT`, set only for bare-metal targets):
//!
//! ```text
//! fn main() {
//!     println!("cargo:rerun-if-env-changed=DEP_SLUICE_GUEST_LDSCRIPT");
//!     if let Ok(script) = std::env::var("DEP_SLUICE_GUEST_LDSCRIPT") {
//!         println!("cargo:rerun-if-changed={script}");
//!         println!("cargo:rustc-link-arg-bins=-T{script}");
//!         println!("cargo:rustc-link-arg-bins=--no-pie");
//!     }
//! }
//! ```
//!
//! `src/main.rs`:
//!
//! ```ignore
//! #![cfg_attr(target_os = "none", no_std)]
//! #![no_main]
//!
//! use sluice_guest::{StartInfo, hc, println};
//!
//! sluice_guest::entry!(main);
//!
//! fn main(info: &StartInfo) -> u32 {
//!     println!("hello from partition {}", info.name());
//!     let ioas = hc::ioas_alloc().unwrap();
//!     hc::destroy(ioas).unwrap();
//!     0
//! }
//! ```
//!
//! Build with `cargo build -p demo-a --target x86_64-unknown-none` (or
//! `aarch64-unknown-none`). On the host the same crate builds to a stub
//! that says it is a partition program (so `cargo clippy --workspace`
//! works); `guest/hello` is a complete example.
//!
//! # Host builds
//!
//! On a host target this crate is `std` and every hypercall goes to a
//! handler the test installs with `host::set_handler`, which receives
//! the command number and the struct's address (a host pointer), so the
//! wrappers' framing can be tested without a hypervisor.
#![no_std]
// zerocopy's derives generate helper types without `Debug`.
#![allow(missing_debug_implementations)]

#[cfg(not(target_os = "none"))]
extern crate std;

pub mod console;
pub mod edu;
pub mod hc;
mod hypercall;
pub mod raw;
mod rt;
pub mod time;

#[cfg(not(target_os = "none"))]
pub use hypercall::host;
pub use hypercall::{call, gpa_of, gpa_of_mut, hypercall};
#[cfg(target_os = "none")]
pub use rt::free_ram;
pub use rt::{EXIT_PANIC, park, start_info};
/// The ABI crate: numbers, structs, errnos, [`layout`].
pub use sluice_abi as abi;
pub use sluice_abi::{
    DeviceInfo, Errno, FaultRecord, IovaRange, ResvRange, StartDevice, StartInfo, fault_reason, layout, map_flags, option,
    resv_type,
};

#[doc(hidden)]
pub mod __private {
    #[cfg(not(target_os = "none"))]
    pub use crate::rt::host_stub_main;
}

/// Declare the program's entry function: `entry!(main)` with
/// `fn main(info: &StartInfo) -> u32`.
///
/// On the bare-metal targets, `_start` (in this crate) zeroes `.bss`,
/// checks the [`StartInfo`] block, calls the function and hands its
/// return value to PARTITION_EXIT (0 = success). On the host (where a
/// partition program cannot run) it makes a C `main` that says so and
/// exits with 2. Use it with `#![no_main]`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[cfg(target_os = "none")]
        #[unsafe(no_mangle)]
        fn sluice_guest_main(info: &'static $crate::StartInfo) -> u32 {
            let main: fn(&'static $crate::StartInfo) -> u32 = $main;
            main(info)
        }

        #[cfg(not(target_os = "none"))]
        const _: () = {
            #[unsafe(export_name = "main")]
            extern "C" fn sluice_guest_host_main(_argc: i32, _argv: *const *const u8) -> i32 {
                let main: fn(&'static $crate::StartInfo) -> u32 = $main;
                $crate::__private::host_stub_main(env!("CARGO_PKG_NAME"), main)
            }
        };
    };
}
