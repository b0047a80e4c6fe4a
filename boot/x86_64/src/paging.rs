//! The hypervisor's own page tables: the identity map the entry code built
//! (0..4 GiB in 2 MiB pages), a guard page under the boot stack, and
//! identity mappings added later (RAM above 4 GiB, MMIO above 4 GiB).

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;
use x86_64::registers::control::Cr3;

use crate::frames;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

const SIZE_4K: u64 = 1 << 12;
const SIZE_2M: u64 = 1 << 21;
const SIZE_1G: u64 = 1 << 30;
/// Identity mappings must stay below the canonical hole.
const VA_LIMIT: u64 = 1 << 47;

type PageTable = [AtomicU64; 512];

/// A page-table page inside the image (.bss).
#[repr(C, align(4096))]
struct StaticTable(PageTable);

/// The 4 KiB table that replaces the 2 MiB page holding the stack guard.
static GUARD_TABLE: StaticTable = StaticTable([const { AtomicU64::new(0) }; 512]);

/// Serialises changes to the tables.
static MAP_LOCK: Mutex<()> = Mutex::new(());

unsafe extern "C" {
    /// The 4 KiB page right below the boot stack (entry.rs).
    static boot_stack_guard: [u8; 4096];
}

/// How a new identity mapping is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// Write-back RAM, not executable.
    Ram,
    /// Uncached device registers, not executable.
    Mmio,
}

/// Why a mapping could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The range reaches past the canonical lower half (128 TiB).
    OutOfRange,
    /// No frame left for a table page.
    NoMemory,
}

/// The entries of the table page at physical address `pa`.
fn table(pa: u64) -> &'static PageTable {
    let ptr = crate::platform::phys_to_virt(pa).cast::<PageTable>();
    // SAFETY: `pa` comes from CR3 or from a present non-leaf entry, so it is
    // a 4 KiB page-table page inside the identity map, alive for as long as
    // the hypervisor runs (tables are never freed); the entries are atomics.
    unsafe { &*ptr }
}

fn pml4() -> &'static PageTable {
    table(Cr3::read().0.start_address().as_u64())
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * level)) & 511) as usize
}

/// The physical address `va` translates to and the size of the page that
/// maps it, or `None` when `va` is not mapped.
#[must_use]
pub fn lookup(va: u64) -> Option<(u64, u64)> {
    if va >= VA_LIMIT {
        return None;
    }
    let e4 = pml4()[index(va, 3)].load(Ordering::Relaxed);
    if e4 & PRESENT == 0 {
        return None;
    }
    let e3 = table(e4 & ADDR_MASK)[index(va, 2)].load(Ordering::Relaxed);
    if e3 & PRESENT == 0 {
        return None;
    }
    if e3 & HUGE != 0 {
        return Some(((e3 & ADDR_MASK & !(SIZE_1G - 1)) + va % SIZE_1G, SIZE_1G));
    }
    let e2 = table(e3 & ADDR_MASK)[index(va, 1)].load(Ordering::Relaxed);
    if e2 & PRESENT == 0 {
        return None;
    }
    if e2 & HUGE != 0 {
        return Some(((e2 & ADDR_MASK & !(SIZE_2M - 1)) + va % SIZE_2M, SIZE_2M));
    }
    let e1 = table(e2 & ADDR_MASK)[index(va, 0)].load(Ordering::Relaxed);
    if e1 & PRESENT == 0 {
        return None;
    }
    Some(((e1 & ADDR_MASK) + va % SIZE_4K, SIZE_4K))
}

/// Whether all of `pa..pa+len` is identity-mapped.
#[must_use]
pub fn is_mapped(pa: u64, len: u64) -> bool {
    let Some(end) = pa.checked_add(len) else {
        return false;
    };
    let mut at = pa;
    while at < end {
        match lookup(at) {
            Some((phys, size)) if phys == at => at = (at & !(size - 1)) + size,
            _ => return false,
        }
    }
    true
}

/// Unmap the page under the boot stack, so that a stack overflow faults
/// (and the #DF handler, on its own stack, reports it) instead of silently
/// overwriting .bss. Splits the 2 MiB page that holds it into 4 KiB pages.
pub fn init_guard_page() {
    let _lock = MAP_LOCK.lock();
    let guard = core::ptr::addr_of!(boot_stack_guard) as u64;
    let pdpt = table(pml4()[index(guard, 3)].load(Ordering::Relaxed) & ADDR_MASK);
    let pd = table(pdpt[index(guard, 2)].load(Ordering::Relaxed) & ADDR_MASK);
    let pde = &pd[index(guard, 1)];
    let old = pde.load(Ordering::Relaxed);
    assert!(old & HUGE != 0, "boot map does not use a 2 MiB page at {guard:#x}");
    let base = old & ADDR_MASK & !(SIZE_2M - 1);
    let flags = old & (WRITABLE | WRITE_THROUGH | CACHE_DISABLE | NO_EXECUTE);
    for (i, e) in GUARD_TABLE.0.iter().enumerate() {
        let pa = base + i as u64 * SIZE_4K;
        e.store(if pa == guard { 0 } else { pa | flags | PRESENT }, Ordering::Relaxed);
    }
    let table_pa = core::ptr::addr_of!(GUARD_TABLE) as u64;
    pde.store(table_pa | PRESENT | WRITABLE, Ordering::Release);
    x86_64::instructions::tlb::flush_all();
}

/// Add an identity mapping of `pa..pa+len` in 2 MiB pages (the range is
/// widened to 2 MiB boundaries); parts already mapped are left alone. Table
/// pages come from the frame allocator.
pub fn map_identity(pa: u64, len: u64, cache: Cache) -> Result<(), MapError> {
    let end = pa.checked_add(len).ok_or(MapError::OutOfRange)?;
    let end = end.checked_next_multiple_of(SIZE_2M).ok_or(MapError::OutOfRange)?;
    if end > VA_LIMIT {
        return Err(MapError::OutOfRange);
    }
    let mut flags = PRESENT | WRITABLE | HUGE;
    if cache == Cache::Mmio {
        flags |= WRITE_THROUGH | CACHE_DISABLE;
    }
    if crate::cpu::nx_enabled() {
        flags |= NO_EXECUTE;
    }
    let _lock = MAP_LOCK.lock();
    let mut at = pa & !(SIZE_2M - 1);
    while at < end {
        if lookup(at).is_none() {
            let pdpt = next_table(pml4(), index(at, 3))?;
            let pd = next_table(pdpt, index(at, 2))?;
            pd[index(at, 1)].store(at | flags, Ordering::Release);
        }
        at += SIZE_2M;
    }
    // Only not-present entries changed: no stale translations to flush.
    Ok(())
}

/// The table the entry `parent[i]` points to, made (zeroed) when absent.
fn next_table(parent: &PageTable, i: usize) -> Result<&'static PageTable, MapError> {
    let e = parent[i].load(Ordering::Acquire);
    if e & PRESENT != 0 {
        assert!(e & HUGE == 0, "identity map: unexpected large page at level above 2 MiB");
        return Ok(table(e & ADDR_MASK));
    }
    let pa = frames::alloc_zeroed(1).ok_or(MapError::NoMemory)?;
    assert!(is_mapped(pa, SIZE_4K), "table frame {pa:#x} is not mapped");
    parent[i].store(pa | PRESENT | WRITABLE, Ordering::Release);
    Ok(table(pa))
}
