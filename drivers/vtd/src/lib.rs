//! Sluice's Intel VT-d driver.
//!
//! A unit (one DMAR DRHD) is driven in legacy mode (VT-d 3.4 spec, chapters
//! 9-11): a root table with one context table per bus in use, one legacy
//! context entry per attached requester pointing at second-level tables the
//! core's page-table engine wrote, and nothing for a blocked requester (its
//! DMA faults with reason 1 or 2). Domain ids are the core's HWPT tags.
//!
//! Invalidation goes through the invalidation queue with wait descriptors
//! (ECAP.QI), or the CCMD/IOTLB registers when a unit has no queue:
//! context-cache invalidation per device on every context change, IOTLB
//! invalidation page-selective with an address mask for the smallest
//! aligned power-of-two block covering a range (when CAP.PSI and the mask
//! fits CAP.MAMV), domain-selective otherwise; the invalidation hint is set
//! when no table page was unlinked. With CAP.CM, not-present -> present
//! changes are invalidated too ([`Iommu::mapped`]). Every wait is bounded
//! by [`WAIT_US`] on the platform's [`Clock`] and reported as
//! `IommuError::Timeout`.
//!
//! Faults are polled: the fault recording registers are read oldest first
//! from FSTS.FRI, decoded and cleared (F bit, then the overflow bit).
//!
//! [`Iommu::mapped`]: sluice_kernel::iommu::Iommu::mapped
//! [`Clock`]: sluice_kernel::time::Clock
#![no_std]

extern crate alloc;

pub mod caps;
pub mod desc;
pub mod regs;
mod unit;

pub use caps::Caps;
pub use unit::{InitError, RawFault, Stats, VtdUnit, WAIT_US};
