//! The page-table engine.
//!
//! One engine ([`PageTable`]) walks, batches, allocates and frees; the
//! formats ([`VtdSecondLevel`], [`ArmStage2`], [`ArmStage1`]) only say how an
//! entry is encoded, in the spirit of Linux's generic_pt. All three formats
//! share the 4 KiB granule and 512 eight-byte entries per table, so the walk
//! is the same: level 0 maps 4 KiB, level 1 2 MiB, level 2 1 GiB, level 3
//! 512 GiB, and the root is level `geometry().levels - 1`.
//!
//! Table pages come from a [`TableMemory`]: the hypervisor's buddy allocator
//! on the target, [`VecTableMemory`] on the host. Entries are written with
//! single 64-bit stores, so a concurrently walking IOMMU never sees a torn
//! entry, and a new table is fully written before the entry that links it.

mod engine;
mod format;
mod gather;
mod memory;
mod vmsa;
mod vtd;

pub use engine::{PageTable, PtError, Translation};
pub use format::{Format, Geometry, LeafSizes, Perm, Pte};
pub use gather::{FreedTables, Gather};
pub use memory::{TableMemory, VecTableMemory, ENTRIES, TABLE_BYTES, Table};
pub use vmsa::{ArmStage1, ArmStage2, MAIR_NORMAL_WB, VmsaError};
pub use vtd::{VtdError, VtdSecondLevel};

/// Size of the smallest page, and of a table.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Address bits each level resolves.
pub const BITS_PER_LEVEL: u32 = 9;

/// log2 of the size a single entry at `level` maps (level 0: 4 KiB).
#[inline]
#[must_use]
pub const fn level_shift(level: u32) -> u32 {
    PAGE_SHIFT + BITS_PER_LEVEL * level
}

/// Size that a single entry at `level` maps.
#[inline]
#[must_use]
pub const fn level_size(level: u32) -> u64 {
    1 << level_shift(level)
}
