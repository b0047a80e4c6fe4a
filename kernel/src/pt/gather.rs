//! What a change to the tables leaves for the caller to do: the IOVA range
//! whose IOTLB entries must be invalidated, and the table pages that may be
//! freed only after that invalidation has completed.

use core::sync::atomic::Ordering::Relaxed;

use super::memory::TableMemory;
use crate::{Hpa, Iova};

/// Collects the invalidation work of one or more unmaps (and of a failed
/// map's rollback), like Linux's `iommu_iotlb_gather`.
///
/// Protocol: after the table change, invalidate [`Gather::range`] on every
/// IOMMU that walks the table (including its paging-structure caches when
/// [`Gather::freed_count`] is not 0), wait for completion, then call
/// [`Gather::release`] to free the table pages.
///
/// A gather never allocates: the unlinked table pages are chained through
/// their own entry 0 (see [`Gather::add_freed_table`]), so an unmap, a
/// rollback or a destroy cannot fail for want of hypervisor heap after the
/// tables have changed.
#[derive(Debug, Default)]
pub struct Gather {
    start: u64,
    end: u64,
    leaf_levels: u8,
    /// The table unlinked last; entry 0 of each chained page holds the
    /// address of the one unlinked before it.
    freed: Option<Hpa>,
    freed_count: usize,
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
        self.start >= self.end && self.freed_count == 0
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

    /// Number of table pages unlinked from the tree, still to be freed.
    #[must_use]
    pub fn freed_count(&self) -> usize {
        self.freed_count
    }

    /// The table pages unlinked from the tree, still to be freed: how many
    /// (they are chained through the pages themselves, not listed).
    #[must_use]
    pub fn freed_tables(&self) -> FreedTables {
        FreedTables(self.freed_count)
    }

    /// Free the unlinked table pages (each zeroed again first) and start
    /// over. Call only after the IOTLB invalidation of [`Self::range`] has
    /// completed.
    pub fn release<M: TableMemory>(&mut self, mem: &mut M) {
        let mut next = self.freed.take();
        for _ in 0..self.freed_count {
            let table = next.expect("the chain is as long as its count");
            let link = mem.table(table)[0].swap(0, Relaxed);
            mem.sync_entries(table, 0, 1);
            next = Some(Hpa(link));
            mem.free_table(table);
        }
        *self = Self::default();
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

    /// Chain `table`, just unlinked and all zero, for [`Self::release`].
    ///
    /// The link goes into the page's entry 0. Until the invalidation has
    /// completed an IOMMU may still walk the page through a stale cached
    /// pointer, and must find nothing there: a link is a 4 KiB-aligned
    /// address, whose bits 0..11 are all clear, which is a not-present
    /// entry in every format (VT-d: R = W = 0; VMSAv8-64: bit 0 = 0).
    #[inline]
    pub(super) fn add_freed_table<M: TableMemory>(&mut self, mem: &M, table: Hpa) {
        debug_assert!(table.is_aligned(super::PAGE_SIZE));
        let link = self.freed.map_or(0, |t| t.raw());
        mem.table(table)[0].store(link, Relaxed);
        self.freed = Some(table);
        self.freed_count += 1;
    }
}

/// What [`Gather::freed_tables`] reports: the count of unlinked table
/// pages waiting for [`Gather::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreedTables(usize);

impl FreedTables {
    /// How many.
    #[must_use]
    pub fn len(self) -> usize {
        self.0
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}
