//! hvsim: Sluice's real core (object tables, IOAS, page-table engine,
//! hypercall decoder) on a simulated machine, driven by the script format
//! of shared/design/HVSIM.md.
//!
//! The simulated IOMMU units walk the page tables the engine wrote, in
//! their hardware format, with the independent walkers of
//! `sluice_kernel::hwwalk`, and cache what they walked in an IOTLB that
//! only the core's invalidations clear: a missing invalidation shows up as
//! a DMA that still reaches unmapped memory.

pub mod abisuite;
pub mod fuzzops;
pub mod script;
pub mod sim;
