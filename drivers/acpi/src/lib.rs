//! ACPI platform discovery for Sluice on x86_64: where the PCIe ECAM windows
//! are (MCFG) and which Intel VT-d remapping units, reserved regions and ATS
//! reports the firmware describes (DMAR).
//!
//! # What it parses
//!
//! - The RSDP ([`Rsdp::read`], [`Rsdp::parse`] for a copy such as a
//!   Multiboot2 tag's, [`find_rsdp_in_bios_areas`] for BIOS boots): signature,
//!   20-byte checksum, and for revision >= 2 the length and extended
//!   checksum.
//! - The root table ([`AcpiTables`]): the XSDT (64-bit entries) when the
//!   RSDP has revision >= 2 and an XSDT address, else the RSDT (32-bit
//!   entries); signature, length and checksum checked, then the header of
//!   every listed table read.
//! - MCFG ([`parse_mcfg`], [`AcpiTables::mcfg`]) into [`EcamRegion`]s.
//! - DMAR ([`Dmar::parse`], [`AcpiTables::dmar`]), VT-d specification
//!   chapter 8: the header (host address width, flags) and the remapping
//!   structures DRHD, RMRR, ATSR, RHSA, ANDD and SATC with their device
//!   scopes. Structures of other types are skipped by their length.
//! - Device-to-unit mapping ([`Dmar::unit_for`]) and per-device reserved
//!   regions ([`Dmar::rmrrs_for`]), resolving scope paths through a callback
//!   that reads bridges' bus numbers (the PCI driver supplies it).
//!
//! Every table is copied into an owned buffer through [`PhysRead`] before it
//! is parsed, and every length field is checked before it is followed, so
//! bad firmware data gives a typed error ([`AcpiError`], [`DmarError`]),
//! never a panic, an out-of-bounds read or an endless loop. The crate has no
//! `unsafe` code; reading physical memory is the caller's (the boot code's)
//! one unsafe step.
//!
//! # What it leaves out
//!
//! AML (DSDT/SSDT), the FADT, MADT, HPET and every other table; the IORT and
//! device tree (aarch64 discovery lives elsewhere); interrupt remapping
//! (the I/O APIC and HPET scopes are parsed but nothing here uses them);
//! DMA aliases of conventional PCI devices behind PCIe-to-PCI bridges (the
//! PCI driver knows the topology and asks [`Dmar::unit_for`] for the alias).
//! RMRR bounds are reported as found; rounding them to pages is the
//! consumer's choice.
//!
//! # Why not the `acpi` crate
//!
//! The architecture notes suggest the `acpi` crate for RSDP/XSDT/MCFG. It
//! was tried. 6.0.1 does not build on stable (`#![feature(allocator_api)]`
//! unconditionally). 7.0.0-pre1 does (features off) but is a pre-release,
//! and like 6.x wants a `Handler` of some twenty-five methods (port I/O, PCI
//! config, MMIO, timers) just to look tables up. 5.2.0 with default
//! features off builds on stable for both bare-metal targets, but its
//! `AcpiHandler` must hand out raw pointers to mapped physical memory
//! (`unsafe fn map_physical_region`, which cannot fail) and the crate then
//! reads through them trusting the firmware's length fields. Backing that
//! with a host `Vec` in tests, or with the fallible, bounds-checked
//! [`PhysRead`], needs unsafe pointer glue here, and truncated or lying
//! tables could not be tested without undefined behaviour. The three
//! structures it would cover take about a hundred lines with `zerocopy`,
//! which this crate needs for the DMAR anyway, so they are parsed here and
//! the crate stays free of `unsafe`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod dmar;
mod mcfg;
mod phys;
mod rsdp;
mod scope;
mod sdt;
mod tables;

#[cfg(test)]
mod tests;

pub use dmar::{
    Andd, Atsr, AtsrFlags, DeviceScope, Dmar, DmarError, DmarFlags, Drhd, DrhdFlags, PathEntry,
    Rhsa, Rmrr, Satc, SatcFlags, ScopeKind,
};
pub use mcfg::{EcamRegion, parse_mcfg};
pub use phys::{PhysRead, PhysReadError, PhysSlice};
pub use rsdp::{Rsdp, find_rsdp_in_bios_areas};
pub use scope::{Bdf, BridgeBuses, Coverage};
pub use sdt::MAX_TABLE_LEN;
pub use tables::{AcpiError, AcpiTables, RootKind, TableEntry};
