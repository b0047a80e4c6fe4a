//! Sluice's core: everything a partition can ask for is decided here.
//!
//! This crate has no `unsafe` and no architecture code. It builds for the
//! bare-metal targets (as part of the hypervisor) and for the host (tests,
//! benchmarks, hvsim).
//!
//! - [`pt`]: the page-table engine, one walker/batcher generic over a small
//!   [`pt::Format`] trait, with the VT-d second-level and Arm VMSAv8-64
//!   stage-2 and stage-1 formats.
//! - [`hwwalk`]: independent decoders of those formats, written from the
//!   specifications, that translate an address the way the IOMMU hardware
//!   does. Tests and the simulator use them to check the bytes the engine
//!   wrote.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod abi;
pub mod addr;
pub mod heap;
pub mod hv;
pub mod hwpt;
pub mod hwwalk;
pub mod hypercall;
pub mod iommu;
pub mod iova;
pub mod memmap;
pub mod objects;
pub mod pt;
pub mod time;

pub use addr::{Gpa, Hpa, Iova};
