//! The walker, batcher and freer shared by every format.

use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicU64, Ordering, fence};

use super::format::{Format, Perm, Pte};
use super::gather::Gather;
use super::memory::{ENTRIES, TableMemory};
use super::{PAGE_SIZE, level_shift, level_size};
use crate::{Hpa, Iova};

/// Why a page-table operation was refused. A refused operation leaves the
/// translation unchanged (a failed map may leave work in the [`Gather`]:
/// the rollback of what it had already written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtError {
    /// IOVA, address or length is not a multiple of 4 KiB, or the length
    /// is 0.
    Unaligned,
    /// The IOVA range does not fit the table's input address space.
    InputOutOfRange,
    /// The output range does not fit the format's output address size.
    OutputOutOfRange,
    /// Neither read nor write asked for.
    NoPermission,
    /// Something is already mapped at this IOVA: mappings never silently
    /// replace each other.
    Exists(Iova),
    /// The range would cut through the leaf that maps this IOVA.
    SplitsLeaf(Iova),
    /// No memory for a table page.
    NoMemory,
}

/// Where a map stopped, and why.
#[derive(Clone, Copy, Debug)]
struct Stop {
    /// First IOVA not mapped; everything from the start of the map up to
    /// here was written.
    at: u64,
    err: PtError,
}

/// What translates an IOVA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The output address of the IOVA asked about.
    pub hpa: Hpa,
    /// The first IOVA of the leaf.
    pub leaf_iova: Iova,
    /// Size of the leaf (4 KiB, 2 MiB or 1 GiB).
    pub size: u64,
    /// Access the leaf grants.
    pub perm: Perm,
}

/// One translation table tree in the format `F`.
///
/// The tree owns its table pages (allocated from the [`TableMemory`] passed
/// to each call, always the same one). Invariant: except for the root, no
/// table in the tree is empty.
#[derive(Debug)]
pub struct PageTable<F> {
    fmt: F,
    root: Hpa,
    huge: bool,
}

impl<F: Format> PageTable<F> {
    /// An empty tree: just the root table. Huge pages are on.
    pub fn new<M: TableMemory>(fmt: F, mem: &mut M) -> Result<Self, PtError> {
        let root = mem.alloc_table().ok_or(PtError::NoMemory)?;
        Ok(Self { fmt, root, huge: true })
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.fmt
    }

    /// The root table's address, what the IOMMU's context or stream table
    /// entry points to.
    pub fn root(&self) -> Hpa {
        self.root
    }

    /// Whether maps use leaves larger than 4 KiB where they can.
    pub fn huge_pages(&self) -> bool {
        self.huge
    }

    /// Turn leaves larger than 4 KiB on or off for later maps.
    pub fn set_huge_pages(&mut self, on: bool) {
        self.huge = on;
    }

    fn input_limit(&self) -> u64 {
        1u64 << self.fmt.geometry().input_bits
    }

    /// Map `[iova, iova + len)` to `[hpa, hpa + len)` with `perm`, using the
    /// largest leaves that the alignment of IOVA and address, the remaining
    /// length, the format and the huge-pages switch allow.
    ///
    /// Fails with [`PtError::Exists`] if any part is already mapped. On
    /// failure nothing stays mapped; the rollback of entries already written
    /// (visible to the IOMMU for a moment) is left in `gather`.
    pub fn map<M: TableMemory>(
        &mut self,
        mem: &mut M,
        iova: Iova,
        hpa: Hpa,
        len: u64,
        perm: Perm,
        gather: &mut Gather,
    ) -> Result<(), PtError> {
        if len == 0 || !iova.is_aligned(PAGE_SIZE) || !hpa.is_aligned(PAGE_SIZE) || len % PAGE_SIZE != 0 {
            return Err(PtError::Unaligned);
        }
        if perm.is_empty() {
            return Err(PtError::NoPermission);
        }
        let end = iova.checked_add(len).ok_or(PtError::InputOutOfRange)?.raw();
        if end > self.input_limit() {
            return Err(PtError::InputOutOfRange);
        }
        let out_end = hpa.checked_add(len).ok_or(PtError::OutputOutOfRange)?.raw();
        if out_end > 1u64 << self.fmt.geometry().output_bits {
            return Err(PtError::OutputOutOfRange);
        }
        let top = self.fmt.geometry().levels - 1;
        match self.map_level(mem, self.root, top, iova.raw(), end, hpa.raw(), perm, false, gather) {
            Ok(()) => Ok(()),
            Err(stop) => {
                if stop.at > iova.raw() {
                    self.unmap_level(mem, self.root, top, iova.raw(), stop.at, gather);
                }
                Err(stop.err)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn map_level<M: TableMemory>(
        &self,
        mem: &mut M,
        table: Hpa,
        level: u32,
        mut iova: u64,
        end: u64,
        mut hpa: u64,
        perm: Perm,
        fresh: bool,
        gather: &mut Gather,
    ) -> Result<(), Stop> {
        let shift = level_shift(level);
        let mut idx = (iova >> shift) as usize % ENTRIES;
        if level == 0 {
            return self.map_pages(mem, table, idx, iova, end, hpa, perm, fresh);
        }
        let size = 1u64 << shift;
        let leaf_ok = self.huge && self.fmt.geometry().leaf_sizes.allows(level);
        while iova < end && idx < ENTRIES {
            let chunk_end = end.min((iova & !(size - 1)) + size);
            let whole = leaf_ok && (iova | hpa) & (size - 1) == 0 && chunk_end - iova == size;
            let pte = mem.table(table)[idx].load(Relaxed);
            match self.fmt.decode(level, pte) {
                Pte::Absent if whole => {
                    mem.table(table)[idx].store(self.fmt.leaf(level, Hpa(hpa), perm), Relaxed);
                    mem.sync_entries(table, idx, 1);
                }
                Pte::Absent => {
                    let next = mem.alloc_table().ok_or(Stop { at: iova, err: PtError::NoMemory })?;
                    // The new table's zeroes must be visible before the
                    // entry that lets the IOMMU walk into it.
                    fence(Ordering::Release);
                    mem.table(table)[idx].store(self.fmt.table(level, next), Relaxed);
                    mem.sync_entries(table, idx, 1);
                    if let Err(stop) = self.map_level(mem, next, level - 1, iova, chunk_end, hpa, perm, true, gather) {
                        if stop.at == iova {
                            // Nothing went into the fresh table: unlink it
                            // again, so that no empty table stays behind.
                            mem.table(table)[idx].store(0, Relaxed);
                            mem.sync_entries(table, idx, 1);
                            gather.add_freed_table(mem, next);
                        }
                        return Err(stop);
                    }
                }
                Pte::Table(next) => self.map_level(mem, next, level - 1, iova, chunk_end, hpa, perm, fresh, gather)?,
                Pte::Leaf { .. } => return Err(Stop { at: iova, err: PtError::Exists(Iova(iova)) }),
            }
            hpa += chunk_end - iova;
            iova = chunk_end;
            idx += 1;
        }
        Ok(())
    }

    /// The batched inner loop: consecutive 4 KiB leaves in one table. A
    /// `fresh` table (allocated by this map) is known to be empty, so only
    /// tables that existed before are checked for present entries.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn map_pages<M: TableMemory>(
        &self,
        mem: &M,
        table: Hpa,
        first: usize,
        iova: u64,
        end: u64,
        hpa: u64,
        perm: Perm,
        fresh: bool,
    ) -> Result<(), Stop> {
        let count = ((end - iova) / PAGE_SIZE).min((ENTRIES - first) as u64) as usize;
        let entries = &mem.table(table)[first..first + count];
        let mut pte = self.fmt.leaf(0, Hpa(hpa), perm);
        if fresh {
            for slot in entries {
                slot.store(pte, Relaxed);
                pte += PAGE_SIZE;
            }
            mem.sync_entries(table, first, count);
            return Ok(());
        }
        for (k, slot) in entries.iter().enumerate() {
            if self.fmt.is_present(slot.load(Relaxed)) {
                mem.sync_entries(table, first, k);
                return Err(Stop { at: iova + k as u64 * PAGE_SIZE, err: PtError::Exists(Iova(iova + k as u64 * PAGE_SIZE)) });
            }
            slot.store(pte, Relaxed);
            pte += PAGE_SIZE;
        }
        mem.sync_entries(table, first, count);
        Ok(())
    }

    /// Unmap every leaf in `[iova, iova + len)` and free the tables that
    /// become empty (through `gather`). Returns the bytes unmapped; holes
    /// are skipped. Fails, changing nothing, when the range would cut a
    /// leaf. Parts of the range beyond the input address space hold nothing.
    pub fn unmap<M: TableMemory>(&mut self, mem: &mut M, iova: Iova, len: u64, gather: &mut Gather) -> Result<u64, PtError> {
        if len == 0 || !iova.is_aligned(PAGE_SIZE) || len % PAGE_SIZE != 0 {
            return Err(PtError::Unaligned);
        }
        let limit = self.input_limit();
        if iova.raw() >= limit {
            return Ok(0);
        }
        let end = iova.raw().saturating_add(len).min(limit);
        // Only the leaves holding the first and the last byte can stick out.
        if let Some(t) = self.translate(mem, iova) {
            if t.leaf_iova < iova {
                return Err(PtError::SplitsLeaf(iova));
            }
        }
        if let Some(t) = self.translate(mem, Iova(end - 1)) {
            if t.leaf_iova.raw() + t.size > end {
                return Err(PtError::SplitsLeaf(Iova(end - 1)));
            }
        }
        Ok(self.unmap_level(mem, self.root, self.fmt.geometry().levels - 1, iova.raw(), end, gather))
    }

    /// Clear `[iova, end)` below `table`, which no leaf sticks out of.
    fn unmap_level<M: TableMemory>(&self, mem: &mut M, table: Hpa, level: u32, mut iova: u64, end: u64, gather: &mut Gather) -> u64 {
        let shift = level_shift(level);
        let first = (iova >> shift) as usize % ENTRIES;
        if level == 0 {
            return self.unmap_pages(mem, table, first, iova, end, gather);
        }
        let size = 1u64 << shift;
        let mut idx = first;
        let mut bytes = 0;
        while iova < end && idx < ENTRIES {
            let chunk_end = end.min((iova & !(size - 1)) + size);
            let pte = mem.table(table)[idx].load(Relaxed);
            match self.fmt.decode(level, pte) {
                Pte::Absent => {}
                Pte::Leaf { .. } => {
                    debug_assert!(iova % size == 0 && chunk_end - iova == size, "unmap cuts a leaf");
                    mem.table(table)[idx].store(0, Relaxed);
                    mem.sync_entries(table, idx, 1);
                    gather.add_leaves(iova, chunk_end, level);
                    bytes += size;
                }
                Pte::Table(next) => {
                    bytes += self.unmap_level(mem, next, level - 1, iova, chunk_end, gather);
                    let whole = chunk_end - iova == size;
                    let empty = whole
                        || if level == 1 {
                            // Every 4 KiB entry in the range was just
                            // cleared: only the others can still be present.
                            let first = (iova >> level_shift(0)) as usize % ENTRIES;
                            let count = ((chunk_end - iova) / PAGE_SIZE) as usize;
                            let t = mem.table(next);
                            self.none_present(&t[..first]) && self.none_present(&t[first + count..])
                        } else {
                            self.none_present(mem.table(next))
                        };
                    if empty {
                        mem.table(table)[idx].store(0, Relaxed);
                        mem.sync_entries(table, idx, 1);
                        gather.add_freed_table(mem, next);
                    }
                }
            }
            iova = chunk_end;
            idx += 1;
        }
        bytes
    }

    /// The batched inner loop of unmap: 4 KiB leaves in one table.
    #[inline]
    fn unmap_pages<M: TableMemory>(&self, mem: &M, table: Hpa, first: usize, iova: u64, end: u64, gather: &mut Gather) -> u64 {
        let count = ((end - iova) / PAGE_SIZE).min((ENTRIES - first) as u64) as usize;
        let entries = &mem.table(table)[first..first + count];
        let mut cleared = 0u64;
        for slot in entries {
            if self.fmt.is_present(slot.load(Relaxed)) {
                slot.store(0, Relaxed);
                cleared += 1;
            }
        }
        if cleared > 0 {
            mem.sync_entries(table, first, count);
            gather.add_leaves(iova, iova + count as u64 * PAGE_SIZE, 0);
        }
        cleared * PAGE_SIZE
    }

    fn none_present(&self, entries: &[AtomicU64]) -> bool {
        !entries.iter().any(|e| self.fmt.is_present(e.load(Relaxed)))
    }

    /// What translates `iova`, read from the table the way the engine wrote
    /// it. (Tests cross-check this against [`crate::hwwalk`], which reads
    /// the same bytes as the hardware does.)
    pub fn translate<M: TableMemory>(&self, mem: &M, iova: Iova) -> Option<Translation> {
        if iova.raw() >= self.input_limit() {
            return None;
        }
        let mut table = self.root;
        for level in (0..self.fmt.geometry().levels).rev() {
            let idx = (iova.raw() >> level_shift(level)) as usize % ENTRIES;
            match self.fmt.decode(level, mem.table(table)[idx].load(Relaxed)) {
                Pte::Absent => return None,
                Pte::Table(next) => table = next,
                Pte::Leaf { hpa, perm } => {
                    let size = level_size(level);
                    let offset = iova.raw() & (size - 1);
                    return Some(Translation { hpa: Hpa(hpa.raw() + offset), leaf_iova: Iova(iova.raw() - offset), size, perm });
                }
            }
        }
        None
    }

    /// Call `f(level, table)` for every table of the tree, root first.
    pub fn for_each_table<M: TableMemory>(&self, mem: &M, mut f: impl FnMut(u32, Hpa)) {
        self.visit(mem, self.root, self.fmt.geometry().levels - 1, &mut f);
    }

    fn visit<M: TableMemory>(&self, mem: &M, table: Hpa, level: u32, f: &mut impl FnMut(u32, Hpa)) {
        f(level, table);
        if level == 0 {
            return;
        }
        for e in mem.table(table) {
            if let Pte::Table(next) = self.fmt.decode(level, e.load(Relaxed)) {
                self.visit(mem, next, level - 1, f);
            }
        }
    }

    /// Call `f(leaf_iova, size, hpa, perm)` for every leaf, in IOVA order.
    pub fn for_each_leaf<M: TableMemory>(&self, mem: &M, mut f: impl FnMut(Iova, u64, Hpa, Perm)) {
        self.visit_leaves(mem, self.root, self.fmt.geometry().levels - 1, 0, &mut f);
    }

    fn visit_leaves<M: TableMemory>(&self, mem: &M, table: Hpa, level: u32, base: u64, f: &mut impl FnMut(Iova, u64, Hpa, Perm)) {
        for (i, e) in mem.table(table).iter().enumerate() {
            let iova = base + ((i as u64) << level_shift(level));
            match self.fmt.decode(level, e.load(Relaxed)) {
                Pte::Absent => {}
                Pte::Table(next) => self.visit_leaves(mem, next, level - 1, iova, f),
                Pte::Leaf { hpa, perm } => f(Iova(iova), level_size(level), hpa, perm),
            }
        }
    }

    /// Unmap everything and give up the tree. Every table page, the root
    /// included, ends up in `gather`: free them after the IOMMUs that used
    /// this tree stopped using it and were invalidated.
    pub fn destroy<M: TableMemory>(self, mem: &mut M, gather: &mut Gather) {
        self.unmap_level(mem, self.root, self.fmt.geometry().levels - 1, 0, self.input_limit(), gather);
        gather.add_freed_table(mem, self.root);
    }
}
