//! The hypercall ABI, version 1 (shared/design/ABI.md): command numbers,
//! command structs and records, and the errnos. They live in the
//! `sluice-abi` crate, shared with the guest SDK; this module re-exports
//! all of it, so `sluice_kernel::abi::...` paths keep working.

pub use sluice_abi::*;
