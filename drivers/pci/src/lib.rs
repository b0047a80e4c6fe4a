//! PCI for Sluice: configuration access through ECAM, enumeration, BAR
//! sizing and assignment, command register control, and the driver of
//! QEMU's `edu` DMA test device.
//!
//! The same code serves both boots: x86_64 finds its ECAM windows in the
//! ACPI MCFG, aarch64 in the device tree's `pci-host-ecam-generic` node.
//! Everything above the [`Ecam`] accessor is generic over pci_types'
//! [`ConfigRegionAccess`], so host tests run it against
//! [`fake::FakeConfigSpace`].
//!
//! ```text
//! let ecam = unsafe { Ecam::new(va, seg, bus_start, bus_end) };
//! let pci = PciSegment::new(ecam, seg, bus_start, bus_end);
//! let mut functions = pci.enumerate();
//! pci.assign_bars(&mut functions, mmio_window, AssignPolicy::UnassignedOnly)?; // aarch64 -kernel
//! for f in find(&functions, edu::VENDOR_ID, edu::DEVICE_ID) { let bar0 = edu::enable(&pci, f)?; ... }
//! ```
#![no_std]

extern crate alloc;

mod assign;
mod bdf;
pub mod config;
mod ecam;
pub mod edu;
mod enumerate;
pub mod fake;
mod segment;

pub use assign::{AssignError, AssignPolicy, AssignReport, BarPlacement, MIN_BAR_SPAN};
pub use bdf::Bdf;
pub use ecam::{BYTES_PER_BUS, CONFIG_SPACE_LEN, Ecam};
pub use enumerate::{BarInfo, PciFunction, find};
pub use pci_types::{self, CommandRegister, ConfigRegionAccess, HeaderType};
pub use segment::{BridgeBuses, PciError, PciSegment};
