//! The core's views of physical memory over the identity map: table pages
//! from the frame allocator ([`FrameTables`]) and partition RAM
//! ([`IdentityRam`]). What differs per architecture (which addresses are
//! mapped, cache maintenance for IOMMUs that do not snoop) comes from an
//! [`IdentityMap`].

use core::marker::PhantomData;

use sluice_kernel::Hpa;
use sluice_kernel::hv::PhysMem;
use sluice_kernel::pt::{TABLE_BYTES, Table, TableMemory};

use crate::{frames, phys_to_virt};

/// What an architecture's identity map tells the shared code.
pub trait IdentityMap {
    /// Whether all of `[pa, pa + len)` is mapped.
    fn is_mapped(pa: u64, len: u64) -> bool;

    /// Make `[pa, pa + len)` as the CPU wrote it visible to DMA masters
    /// that do not snoop CPU caches. The default does nothing (coherent
    /// IOMMUs).
    fn clean_for_devices(pa: u64, len: u64) {
        let _ = (pa, len);
    }
}

/// Table pages for the page-table engine, from the frame allocator, seen
/// through the identity map.
#[derive(Debug)]
pub struct FrameTables<A> {
    in_use: usize,
    arch: PhantomData<fn() -> A>,
}

impl<A> Default for FrameTables<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A> FrameTables<A> {
    /// A table memory with nothing handed out yet.
    #[must_use]
    pub const fn new() -> Self {
        Self { in_use: 0, arch: PhantomData }
    }

    /// Table pages currently handed out by this memory.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.in_use
    }
}

impl<A: IdentityMap> TableMemory for FrameTables<A> {
    fn alloc_table(&mut self) -> Option<Hpa> {
        let pa = frames::alloc_zeroed(1)?;
        self.in_use += 1;
        A::clean_for_devices(pa, TABLE_BYTES);
        Some(Hpa(pa))
    }

    fn free_table(&mut self, table: Hpa) {
        assert!(table.is_aligned(TABLE_BYTES), "table {table:#x} is not page aligned");
        self.in_use -= 1;
        frames::free(table.raw(), 1);
    }

    fn table(&self, table: Hpa) -> &Table {
        assert!(table.is_aligned(TABLE_BYTES), "table {table:#x} is not page aligned");
        debug_assert!(A::is_mapped(table.raw(), TABLE_BYTES));
        let ptr = phys_to_virt(table.raw()).cast::<Table>();
        // SAFETY: `table` is a 4 KiB-aligned frame this memory allocated
        // (the engine only asks for its own tables), mapped RAM, and
        // `Table` is an array of atomics: shared references may coexist with
        // the IOMMU and other CPUs writing it.
        unsafe { &*ptr }
    }

    fn sync_entries(&self, table: Hpa, first: usize, count: usize) {
        if count > 0 {
            A::clean_for_devices(table.raw() + 8 * first as u64, 8 * count as u64);
        }
    }
}

/// Host-physical memory (partition RAM) read and written through the
/// identity map.
#[derive(Debug)]
pub struct IdentityRam<A>(PhantomData<fn() -> A>);

impl<A> IdentityRam<A> {
    /// The identity map's view of RAM.
    #[must_use]
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<A> Default for IdentityRam<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: IdentityMap> PhysMem for IdentityRam<A> {
    fn read(&self, hpa: Hpa, buf: &mut [u8]) {
        assert!(A::is_mapped(hpa.raw(), buf.len() as u64), "read of unmapped {hpa:#x}+{:#x}", buf.len());
        let src = phys_to_virt(hpa.raw()).cast_const();
        // SAFETY: the source range is mapped RAM (checked above) and cannot
        // overlap `buf`, which the caller owns exclusively; a concurrent
        // writer (a device) at worst yields stale bytes, which any u8 is.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
    }

    fn write(&mut self, hpa: Hpa, data: &[u8]) {
        assert!(A::is_mapped(hpa.raw(), data.len() as u64), "write of unmapped {hpa:#x}+{:#x}", data.len());
        let dst = phys_to_virt(hpa.raw());
        // SAFETY: the destination is mapped partition RAM (checked above),
        // which the hypervisor never holds references into, so it cannot
        // overlap `data` or alias a live Rust object.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    }
}
