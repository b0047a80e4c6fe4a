//! Where table pages live.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;

use crate::Hpa;

/// Entries in one table (4 KiB of 8-byte entries).
pub const ENTRIES: usize = 512;
/// Bytes in one table page.
pub const TABLE_BYTES: u64 = 4096;

/// One table page as the engine sees it. Atomic entries: the IOMMU reads
/// them concurrently, and every write is one whole 64-bit store.
pub type Table = [AtomicU64; ENTRIES];

/// The frame allocator and physical-memory view the engine needs.
///
/// Implementations: the hypervisor's buddy allocator (drivers/boot, where a
/// host-physical address is turned into a reference), and
/// [`VecTableMemory`] on the host.
pub trait TableMemory {
    /// A zeroed, 4 KiB-aligned table page, visible to the IOMMU as zero (for
    /// a non-coherent IOMMU: already cleaned to the point of coherency), or
    /// `None` when memory is exhausted.
    fn alloc_table(&mut self) -> Option<Hpa>;

    /// Give back a table page the engine no longer references. The engine
    /// hands back only all-zero tables, and only after the caller invalidated
    /// the IOTLB (see [`super::Gather`]).
    fn free_table(&mut self, table: Hpa);

    /// The entries of a table page this memory handed out.
    fn table(&self, table: Hpa) -> &Table;

    /// Whether `table` is a page this memory handed out and has not taken
    /// back; `None` when the memory cannot tell (the invariant checker then
    /// skips the check).
    fn is_allocated(&self, table: Hpa) -> Option<bool> {
        let _ = table;
        None
    }

    /// Table pages handed out now, if the memory counts them. The
    /// invariant checker then expects exactly the HWPTs' tables: a memory
    /// that also serves other tables (a CPU's stage 2) should say `None`.
    fn allocated(&self) -> Option<usize> {
        None
    }

    /// Cache-maintenance hook, called after the engine wrote `count` entries
    /// starting at `first` in `table`. An IOMMU that does not snoop CPU
    /// caches needs them cleaned here; a coherent one needs nothing (the
    /// default).
    #[inline]
    fn sync_entries(&self, table: Hpa, first: usize, count: usize) {
        let _ = (table, first, count);
    }
}

/// A simple [`TableMemory`] for the host: pages are boxed arrays, and their
/// "host-physical" addresses are `base + 4 KiB * index`.
///
/// It can be told to fail the N-th allocation, for allocation-failure tests.
#[derive(Debug)]
pub struct VecTableMemory {
    base: u64,
    pages: Vec<Box<Table>>,
    free: Vec<u32>,
    in_use: usize,
    peak: usize,
    allocations: u64,
    fail_at: Option<u64>,
}

impl VecTableMemory {
    /// An empty pool whose pages get addresses from `base` (4 KiB aligned)
    /// upwards.
    #[must_use]
    pub fn new(base: Hpa) -> Self {
        assert!(base.is_aligned(TABLE_BYTES), "table pool base must be 4 KiB aligned");
        Self { base: base.raw(), pages: Vec::new(), free: Vec::new(), in_use: 0, peak: 0, allocations: 0, fail_at: None }
    }

    /// Allocate `count` pages up front, so that later allocations do not
    /// touch the system allocator (benchmarks).
    pub fn reserve(&mut self, count: usize) {
        while self.pages.len() < count {
            let index = self.pages.len() as u32;
            self.pages.push(Box::new(zeroed_table()));
            self.free.push(index);
        }
        // Hand out low addresses first.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// Table pages currently handed out.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Most table pages handed out at once.
    #[must_use]
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Successful and failed allocation requests so far.
    #[must_use]
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// Make the allocation request number `n` (counting from 0 over this
    /// pool's life, see [`Self::allocations`]) and every later one fail;
    /// `None` turns failures off.
    pub fn fail_from(&mut self, n: Option<u64>) {
        self.fail_at = n;
    }

    /// Whether `hpa` is a page of this pool that is currently handed out.
    #[must_use]
    pub fn is_live(&self, hpa: Hpa) -> bool {
        match self.index(hpa) {
            Some(i) => i < self.pages.len() && !self.free.contains(&(i as u32)),
            None => false,
        }
    }

    /// Read one 8-byte word of a table page by host-physical address, as a
    /// DMA master would; `None` outside the pool.
    #[must_use]
    pub fn read_u64(&self, pa: u64) -> Option<u64> {
        if pa % 8 != 0 {
            return None;
        }
        let page = self.index(Hpa(pa & !(TABLE_BYTES - 1)))?;
        let table = self.pages.get(page)?;
        Some(table[((pa % TABLE_BYTES) / 8) as usize].load(core::sync::atomic::Ordering::Relaxed))
    }

    fn index(&self, hpa: Hpa) -> Option<usize> {
        let off = hpa.raw().checked_sub(self.base)?;
        (off % TABLE_BYTES == 0).then_some((off / TABLE_BYTES) as usize)
    }
}

fn zeroed_table() -> Table {
    core::array::from_fn(|_| AtomicU64::new(0))
}

impl TableMemory for VecTableMemory {
    fn alloc_table(&mut self) -> Option<Hpa> {
        let n = self.allocations;
        self.allocations += 1;
        if self.fail_at.is_some_and(|f| n >= f) {
            return None;
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.pages.len()).ok()?;
                self.pages.push(Box::new(zeroed_table()));
                i
            }
        };
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
        Some(Hpa(self.base + u64::from(index) * TABLE_BYTES))
    }

    fn free_table(&mut self, table: Hpa) {
        let index = self.index(table).expect("freed table is not from this pool");
        debug_assert!(
            self.pages[index].iter().all(|e| e.load(core::sync::atomic::Ordering::Relaxed) == 0),
            "freed table is not empty"
        );
        debug_assert!(!self.free.contains(&(index as u32)), "table freed twice");
        self.free.push(index as u32);
        self.in_use -= 1;
    }

    #[inline]
    fn table(&self, table: Hpa) -> &Table {
        let index = ((table.raw() - self.base) / TABLE_BYTES) as usize;
        &self.pages[index]
    }

    fn is_allocated(&self, table: Hpa) -> Option<bool> {
        Some(self.is_live(table))
    }

    fn allocated(&self) -> Option<usize> {
        Some(self.in_use)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_reused_and_counted() {
        let mut m = VecTableMemory::new(Hpa(0x10_0000_0000));
        let a = m.alloc_table().unwrap();
        let b = m.alloc_table().unwrap();
        assert_eq!(a, Hpa(0x10_0000_0000));
        assert_eq!(b, Hpa(0x10_0000_1000));
        assert_eq!(m.in_use(), 2);
        m.free_table(a);
        assert!(!m.is_live(a));
        assert_eq!(m.alloc_table(), Some(a));
        assert_eq!(m.peak(), 2);
    }

    #[test]
    fn fails_from_the_nth_allocation() {
        let mut m = VecTableMemory::new(Hpa(0));
        m.fail_from(Some(1));
        assert!(m.alloc_table().is_some());
        assert!(m.alloc_table().is_none());
        assert!(m.alloc_table().is_none());
        m.fail_from(None);
        assert!(m.alloc_table().is_some());
        assert_eq!(m.allocations(), 4);
    }

    #[test]
    fn reads_words_by_physical_address() {
        let mut m = VecTableMemory::new(Hpa(0x4000));
        let t = m.alloc_table().unwrap();
        m.table(t)[3].store(0xdead_beef, core::sync::atomic::Ordering::Relaxed);
        assert_eq!(m.read_u64(0x4018), Some(0xdead_beef));
        assert_eq!(m.read_u64(0x4019), None);
        assert_eq!(m.read_u64(0x3ff8), None);
        assert_eq!(m.read_u64(0x5000), None);
    }
}
