//! The smallest useful Sluice partition program, and the template for
//! others: it prints what the start info says, lists its devices through
//! the hypercalls, makes and destroys an IOAS, and exits with 0.
//!
//! Build: `cargo build -p sluice-guest-hello --target x86_64-unknown-none`
//! (or `aarch64-unknown-none`).
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use sluice_guest::{DeviceInfo, StartInfo, hc, println};

sluice_guest::entry!(main);

fn main(info: &StartInfo) -> u32 {
    println!(
        "hello from partition {} (#{}): {} MiB of RAM at {:#x}, {} devices",
        info.name(),
        info.partition,
        info.ram_size >> 20,
        info.ram_base,
        info.num_devices
    );
    let mut devices = [DeviceInfo::default(); 8];
    let n = match hc::device_list(&mut devices) {
        Ok(n) => n,
        Err(e) => {
            println!("DEVICE_LIST failed: {e}");
            return 1;
        }
    };
    for d in &devices[..n] {
        println!("  device {}: rid {:#06x}, iommu {}, {}-bit DMA", d.dev_id, d.rid, d.iommu_id, d.dma_bits);
    }
    let ioas = match hc::ioas_alloc() {
        Ok(id) => id,
        Err(e) => {
            println!("IOAS_ALLOC failed: {e}");
            return 2;
        }
    };
    if let Err(e) = hc::destroy(ioas) {
        println!("DESTROY failed: {e}");
        return 3;
    }
    println!("hello: ok");
    0
}
