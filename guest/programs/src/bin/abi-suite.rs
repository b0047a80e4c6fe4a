//! The ABI suite in a partition (`tests/abi-suite`, `sluice-abi-suite`):
//! every hypercall with its error paths, through the real hypervisor.
//! One transcript line per case on the console; `tests/qemu/abi.sh`
//! compares them with `hvsim abi-suite` on the same machine.
//!
//! The suite works in the last 4 MiB of the partition's 8 MiB of RAM and
//! the first page of RAM, claimed as a [`RawRam`]: structs are built byte
//! by byte there, and every hypercall is checked to write nowhere else.
//! The exit code is 0 when every case held, 1 when one did not, 2 when the
//! partition is not set up as the suite needs (see the manifests
//! `manifests/tests/abi-*.toml`).
#![cfg_attr(target_os = "none", no_std)]
#![no_main]

use core::ops::Range;

use sluice_abi_suite::{Arch, DmaError, Env, Sink};
use sluice_guest::edu::Edu;
use sluice_guest::raw::RawRam;
use sluice_guest::{StartInfo, println};

sluice_guest::entry!(main);

/// The id the witness partition's second device has there (the manifests
/// give the witness two devices, ids 1 and 2); this partition has one.
const FOREIGN_DEVICE: u32 = 2;

struct Partition {
    info: &'static StartInfo,
    ram: RawRam,
    edu: Edu,
}

impl Env for Partition {
    fn arch(&self) -> Arch {
        if cfg!(target_arch = "aarch64") { Arch::Aarch64 } else { Arch::X86_64 }
    }

    fn ram(&self) -> Range<u64> {
        self.info.ram_base..self.info.ram_end()
    }

    fn mmio(&self) -> u64 {
        self.info.devices()[0].bar0_gpa
    }

    fn device(&self) -> u32 {
        self.info.devices()[0].dev_id
    }

    fn foreign_device(&self) -> u32 {
        FOREIGN_DEVICE
    }

    fn call(&mut self, reg0: u64, gpa: u64) -> i64 {
        self.ram.hypercall(reg0, gpa).unwrap_or_else(|| panic!("abi-suite: hypercall {reg0:#x} at {gpa:#x} could write outside the claimed RAM"))
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        assert!(self.ram.read(gpa, buf), "abi-suite: read {gpa:#x}+{:#x} outside the claimed RAM", buf.len());
    }

    fn write(&mut self, gpa: u64, data: &[u8]) {
        assert!(self.ram.write(gpa, data), "abi-suite: write {gpa:#x}+{:#x} outside the claimed RAM", data.len());
    }

    fn fill(&mut self, gpa: u64, len: u64, byte: u8) {
        assert!(self.ram.fill(gpa, len, byte), "abi-suite: fill {gpa:#x}+{len:#x} outside the claimed RAM");
    }

    fn dma(&mut self, to_ram: bool, iova: u64, len: usize) -> Result<(), DmaError> {
        let r = if to_ram { self.edu.dma_to_ram(0, iova, len) } else { self.edu.dma_from_ram(iova, 0, len) };
        r.map_err(|e| {
            println!("abi-suite: edu: {e}");
            DmaError
        })
    }
}

struct Console;

impl Sink for Console {
    fn line(&mut self, text: &str) {
        println!("{text}");
    }
}

fn main(info: &'static StartInfo) -> u32 {
    let ram = info.ram_base..info.ram_end();
    if ram.end - ram.start < sluice_abi_suite::MIN_RAM || info.devices().len() != 1 {
        println!("abi-suite: needs {} MiB of RAM and one device; has {} MiB, {} devices", sluice_abi_suite::MIN_RAM >> 20, (ram.end - ram.start) >> 20, info.devices().len());
        return 2;
    }
    let Some(raw) = RawRam::claim(sluice_abi_suite::work_range(&ram)) else {
        println!("abi-suite: the work range {:#x?} is not free RAM (image too large?)", sluice_abi_suite::work_range(&ram));
        return 2;
    };
    let Some(edu) = Edu::open(0) else {
        println!("abi-suite: device 0 is not an edu with a BAR0");
        return 2;
    };
    if let Err(e) = edu.check() {
        println!("abi-suite: {e}");
        return 2;
    }
    let mut partition = Partition { info, ram: raw, edu };
    let summary = sluice_abi_suite::run(&mut partition, &mut Console);
    u32::from(summary.broken != 0)
}
