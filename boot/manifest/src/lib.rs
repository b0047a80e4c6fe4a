//! Sluice's partition manifest: which partitions the hypervisor makes,
//! with how much RAM, which PCI devices and which program.
//!
//! The manifest is a TOML file read at build time: a boot crate's build
//! script calls `parse` (feature `parse`, std) and writes
//! `Manifest::to_rust`'s output to `OUT_DIR`; the image `include!`s it
//! and gets a `pub static PARTITIONS: &[PartitionSpec]` of the no_std,
//! allocation-free [`PartitionSpec`] defined here (this crate builds
//! `no_std` without the feature).
//!
//! # Format
//!
//! ```toml
//! # One table per partition, in order: the first is partition 0.
//! [[partition]]
//! name = "A"             # 1..=31 characters of A-Z a-z 0-9 _ - .; unique
//! ram = "8M"             # RAM size: bytes, or a number with K, M or G
//!                        # (KiB, MiB, GiB); a multiple of 2 MiB, 4 MiB..=1 GiB
//! devices = ["00:03.0"]  # PCI functions, "BB:DD.F" or "SSSS:BB:DD.F"
//!                        # (hex; segment 0 if left out); at most 8; each
//!                        # device in one partition only; default: none
//! pin_limit = 1024       # pages (4 KiB) the partition may pin with IOAS_MAP;
//!                        # default: the RAM size in pages
//! program = "demo-a"     # the program the partition runs: one the build knows
//! restarts = 0           # times the partition is reset and started again
//!                        # when it ends (exit or stop); default 0
//! fault_limit = 4096     # fault records one of its devices may cause
//!                        # before its bus mastering is switched off;
//!                        # 0 = no limit; default 4096
//! ram_host = 0x80000000  # optional: fixed host-physical RAM base (boards);
//!                        # 2 MiB aligned, no overlap with another partition's
//! ```
//!
//! Any other key (at the top or in a partition) is an error, as are a
//! missing `name`, `ram` or `program` and an empty manifest. Errors name
//! the line and the partition (`ManifestError`).
//!
//! Device addresses differ between platforms (QEMU q35's edu devices are
//! 00:03.0 and 00:04.0, virt's 00:01.0 and 00:02.0), so there is one
//! manifest per architecture: `manifests/x86_64.toml` and
//! `manifests/aarch64.toml` at the repository root.
//!
//! # In a boot crate
//!
//! ```toml
//! [dependencies]
//! sluice-manifest.workspace = true          # PartitionSpec (no_std)
//! [build-dependencies]
//! sluice-manifest = { workspace = true, features = ["parse"] }
//! ```
//!
//! ```ignore
//! // build.rs
//! let path = "../../manifests/x86_64.toml";
//! println!("cargo:rerun-if-changed={path}");
//! let text = std::fs::read_to_string(path).unwrap();
//! let manifest = sluice_manifest::parse(&text, &["demo-a", "demo-b"])
//!     .unwrap_or_else(|e| panic!("{}", e.at(path)));
//! let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
//! std::fs::write(out.join("partitions.rs"), manifest.to_rust()).unwrap();
//!
//! // src/main.rs
//! include!(concat!(env!("OUT_DIR"), "/partitions.rs"));
//! ```
#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "parse"))]
extern crate std;

use core::fmt;

#[cfg(feature = "parse")]
mod parse;

#[cfg(feature = "parse")]
pub use parse::{ErrorKind, Manifest, ManifestError, Partition, parse};

#[cfg(feature = "parse")]
pub mod embed;

/// A PCI function: segment, bus, device, function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceAddr {
    /// PCI segment (domain).
    pub segment: u16,
    /// Bus.
    pub bus: u8,
    /// Device, 0..32.
    pub dev: u8,
    /// Function, 0..8.
    pub func: u8,
}

impl DeviceAddr {
    /// The address `segment:bus:dev.func`.
    #[must_use]
    pub const fn new(segment: u16, bus: u8, dev: u8, func: u8) -> Self {
        Self { segment, bus, dev, func }
    }

    /// `segment << 16 | bus << 8 | dev << 3 | func`, as
    /// `StartDevice::seg_bdf` (sluice-abi) has it.
    #[must_use]
    pub const fn seg_bdf(&self) -> u32 {
        sluice_abi::StartDevice::encode_seg_bdf(self.segment, self.bus, self.dev, self.func)
    }
}

impl fmt::Display for DeviceAddr {
    /// `SSSS:BB:DD.F`, as Linux prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.segment, self.bus, self.dev, self.func)
    }
}

/// One partition of the manifest, as the image sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionSpec {
    /// Unique name (1..=31 bytes).
    pub name: &'static str,
    /// Bytes of RAM: a multiple of 2 MiB, 4 MiB..=1 GiB.
    pub ram_bytes: u64,
    /// Fixed host-physical base of the RAM, if the manifest gives one.
    pub ram_host: Option<u64>,
    /// The partition's PCI functions, in manifest order (at most 8).
    pub devices: &'static [DeviceAddr],
    /// Pages the partition may pin.
    pub pin_limit: u64,
    /// The program the partition runs.
    pub program: &'static str,
    /// Times the partition is reset and started again when it ends.
    pub restarts: u32,
    /// Fault records one device may cause before it is quarantined (0:
    /// no limit).
    pub fault_limit: u64,
}

/// [`PartitionSpec::fault_limit`] when the manifest gives none.
pub const DEFAULT_FAULT_LIMIT: u64 = 4096;

impl PartitionSpec {
    /// RAM in 4 KiB pages.
    #[must_use]
    pub const fn ram_pages(&self) -> u64 {
        self.ram_bytes / 4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_addresses() {
        const D: DeviceAddr = DeviceAddr::new(1, 0x2a, 0x1f, 7);
        let d = D;
        assert_eq!(d.seg_bdf(), 0x1_2aff);
        assert_eq!(std::format!("{d}"), "0001:2a:1f.7");
        assert_eq!(
            std::format!("{}", DeviceAddr::new(0, 0, 3, 0)),
            "0000:00:03.0"
        );
        let p = PartitionSpec {
            name: "A",
            ram_bytes: 8 << 20,
            ram_host: None,
            devices: &[D],
            pin_limit: 1,
            program: "x",
            restarts: 0,
            fault_limit: 0,
        };
        assert_eq!(p.ram_pages(), 2048);
    }
}
