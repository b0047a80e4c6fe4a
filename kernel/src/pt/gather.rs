//! What a change to the tables leaves for the caller to do: the IOVA range
//! whose IOTLB entries must be invalidated, and the table pages that may be
//! freed only after that invalidation has completed.

use alloc::vec::Vec;

use super::memory::TableMemory;
use crate::{Hpa, Iova};

/// Collects the invalidation work of one or more unmaps (and of a failed
/// map's rollback), like Linux's `iommu_iotlb_gather`.
///
/// Protocol: after the table change, invalidate [`Gather::range`] on every
/// IOMMU that walks the table (including its paging-structure caches when
/// [`Gather::freed_tables`] is not empty), wait for completion, then call
/// [`Gather::release`] to free the table pages.
#[derive(Debug, Default)]
pub struct Gather {
    start: u64,
    end: u64,
    leaf_levels: u8,
    freed: Vec<Hpa>,
}

impl Gather {
    /// An empty gather.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there is nothing to invalidate and nothing to free.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.start >= self.end && self.freed.is_empty()
    }

    /// The IOVA range `[start, start + len)` whose translations were
    /// removed, or `None`.
    #[must_use]
    pub fn range(&self) -> Option<(Iova, u64)> {
        (self.start < self.end).then(|| (Iova(self.start), self.end - self.start))
    }

    /// Bit `n` set: leaves of level `n` (size `4 KiB << 9n`) were removed.
    /// Lets a driver pick per-leaf invalidation and TTL hints.
    #[must_use]
    pub fn leaf_levels(&self) -> u8 {
        self.leaf_levels
    }

    /// Table pages unlinked from the tree, still to be freed.
    #[must_use]
    pub fn freed_tables(&self) -> &[Hpa] {
        &self.freed
    }

    /// Free the unlinked table pages and start over. Call only after the
    /// IOTLB invalidation of [`Self::range`] has completed.
    pub fn release<M: TableMemory>(&mut self, mem: &mut M) {
        for t in self.freed.drain(..) {
            mem.free_table(t);
        }
        *self = Self { freed: core::mem::take(&mut self.freed), ..Self::default() };
    }

    #[inline]
    pub(super) fn add_leaves(&mut self, start: u64, end: u64, level: u32) {
        if self.start >= self.end {
            self.start = start;
            self.end = end;
        } else {
            self.start = self.start.min(start);
            self.end = self.end.max(end);
        }
        self.leaf_levels |= 1 << level;
    }

    #[inline]
    pub(super) fn add_freed_table(&mut self, table: Hpa) {
        self.freed.push(table);
    }
}
