//! A partition that touches memory that is not its own: a store to GPA
//! 0x3000_0000, which is neither its RAM (0x4000_0000 + 8 MiB) nor a
//! device BAR (it owns no device). The hypervisor must stop it there with
//! a report and go on with the others; nothing after the store may run
//! (`tests/qemu/abi.sh` checks both).
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use sluice_guest::{StartInfo, println};

sluice_guest::entry!(main);

/// Where it stores: below its RAM, outside every BAR.
const TOUCH: u64 = 0x3000_0000;

fn main(info: &'static StartInfo) -> u32 {
    println!("wild: partition {} with {} devices: storing to GPA {TOUCH:#x}, outside its RAM and BARs", info.name(), info.devices().len());
    let stored = sluice_guest::raw::store_outside(TOUCH, 0x5a5a_5a5a);
    // Only reached when the store was refused or the hypervisor let it
    // through: both are failures.
    println!("wild: AFTER THE STORE (refused: {}): the hypervisor did not stop this partition", !stored);
    7
}
