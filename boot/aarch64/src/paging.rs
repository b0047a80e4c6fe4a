//! The hypervisor's own EL2 stage-1 tables (4 KiB granule, 48-bit VA,
//! identity map).
//!
//! The entry code's boot map is coarse (1 GiB blocks: the image's and the
//! DTB's Normal, the rest of 0..1 TiB Device). [`init`] replaces it, once
//! the device tree says where RAM is, with the final map: 0..1 TiB
//! Device-nGnRnE (execute-never), every RAM range Normal write-back (in the
//! largest blocks that fit: 1 GiB, 2 MiB, 4 KiB), and the page under the
//! boot stack unmapped (guard). Later, [`map_identity`] adds mappings where
//! nothing is mapped yet (above 1 TiB).

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;

use crate::entry::{ATTR_DEVICE, ATTR_NORMAL, boot_stack_guard, switch_ttbr0_el2};
use crate::frames;

const VALID: u64 = 1 << 0;
/// Bit 1: table (levels 0-2) or page (level 3); clear: block.
const TABLE_OR_PAGE: u64 = 1 << 1;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 3 << 8;
const XN: u64 = 1 << 54;
const ADDR_MASK: u64 = 0x0000_FFFF_FFFF_F000;
/// Attribute bits a leaf keeps when a block is split.
const ATTR_MASK: u64 = !ADDR_MASK & !(VALID | TABLE_OR_PAGE);

/// What the Device part of the final map covers: 0..1 TiB.
pub const DEVICE_MAP_END: u64 = 1 << 40;
/// Identity mappings must stay below the 48-bit VA limit.
const VA_LIMIT: u64 = 1 << 48;

type PageTable = [AtomicU64; 512];

/// Table pages inside the image, for the final map (built before the frame
/// allocator exists); later tables come from frames.
const POOL_PAGES: usize = 32;

#[repr(C, align(4096))]
struct Pool([PageTable; POOL_PAGES]);

static POOL: Pool = Pool([const { [const { AtomicU64::new(0) }; 512] }; POOL_PAGES]);
static POOL_USED: AtomicUsize = AtomicUsize::new(0);
/// Root table of the live map (0 while the boot map is live).
static ROOT: AtomicU64 = AtomicU64::new(0);
/// Serialises changes to the tables.
static MAP_LOCK: Mutex<()> = Mutex::new(());

/// How a mapping is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// Normal write-back RAM, inner shareable.
    Ram,
    /// Device-nGnRnE registers, execute-never.
    Mmio,
}

/// Why a mapping could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The range reaches past the 48-bit VA space.
    OutOfRange,
    /// No page left for a table.
    NoMemory,
    /// [`init`] has not run.
    NotInitialised,
}

fn leaf_attrs(cache: Cache) -> u64 {
    match cache {
        Cache::Ram => (ATTR_NORMAL << 2) | SH_INNER | AF,
        Cache::Mmio => (ATTR_DEVICE << 2) | AF | XN,
    }
}

/// The entries of the table page at physical address `pa`.
fn table(pa: u64) -> &'static PageTable {
    let ptr = crate::platform::phys_to_virt(pa).cast::<PageTable>();
    // SAFETY: `pa` is a table page of this module (pool or frame, never
    // freed), 4 KiB aligned, inside the identity map; entries are atomics.
    unsafe { &*ptr }
}

fn alloc_table() -> Option<u64> {
    let i = POOL_USED.fetch_add(1, Ordering::Relaxed);
    if i < POOL_PAGES {
        return Some(core::ptr::addr_of!(POOL.0[i]) as u64);
    }
    POOL_USED.store(POOL_PAGES, Ordering::Relaxed);
    frames::alloc_zeroed(1)
}

fn level_shift(level: u32) -> u32 {
    12 + 9 * (3 - level)
}

/// Set `start..end` (4 KiB aligned) under the level-`level` table `t` to
/// leaves with `attrs` (`None`: unmapped). With `fill_only`, valid leaves
/// are left alone and only invalid entries are written (safe on the live
/// map: no break-before-make needed); otherwise blocks are split as needed
/// (only for tables not yet live).
fn set(t: u64, level: u32, start: u64, end: u64, attrs: Option<u64>, fill_only: bool) -> Result<(), MapError> {
    let shift = level_shift(level);
    let block = 1u64 << shift;
    let entries = table(t);
    let mut at = start;
    while at < end {
        let base = at & !(block - 1);
        let stop = (base + block).min(end);
        let e = &entries[((at >> shift) & 511) as usize];
        let old = e.load(Ordering::Relaxed);
        let is_table = level < 3 && old & (VALID | TABLE_OR_PAGE) == (VALID | TABLE_OR_PAGE);
        let whole = at == base && stop == base + block;
        if fill_only && old & VALID != 0 && !is_table {
            // Already mapped: leave it.
        } else if whole && level >= 1 && (!fill_only || old & VALID == 0) {
            let new = match attrs {
                Some(a) => base | a | VALID | if level == 3 { TABLE_OR_PAGE } else { 0 },
                None => 0,
            };
            e.store(new, Ordering::Release);
        } else {
            let next = if is_table {
                old & ADDR_MASK
            } else {
                let n = alloc_table().ok_or(MapError::NoMemory)?;
                if old & VALID != 0 {
                    // Split a block into the next level, same attributes.
                    let child = block >> 9;
                    let kind = if level + 1 == 3 { TABLE_OR_PAGE } else { 0 };
                    for (i, c) in table(n).iter().enumerate() {
                        c.store((base + i as u64 * child) | (old & ATTR_MASK) | VALID | kind, Ordering::Relaxed);
                    }
                }
                e.store(n | VALID | TABLE_OR_PAGE, Ordering::Release);
                n
            };
            set(next, level + 1, at, stop, attrs, fill_only)?;
        }
        at = stop;
    }
    Ok(())
}

/// Build the final map for `ram` (`(base, len)`) and switch to it.
/// Returns the number of table pages used.
pub fn init(ram: &[(u64, u64)]) -> Result<usize, MapError> {
    let _lock = MAP_LOCK.lock();
    let root = alloc_table().ok_or(MapError::NoMemory)?;
    set(root, 0, 0, DEVICE_MAP_END, Some(leaf_attrs(Cache::Mmio)), false)?;
    for &(base, len) in ram {
        let start = base & !4095;
        let end = base.saturating_add(len).next_multiple_of(4096).min(VA_LIMIT);
        if start < end {
            set(root, 0, start, end, Some(leaf_attrs(Cache::Ram)), false)?;
        }
    }
    let guard = core::ptr::addr_of!(boot_stack_guard) as u64;
    set(root, 0, guard, guard + 4096, None, false)?;
    // SAFETY: the new map identity-maps everything the running code uses
    // (RAM, which holds the image, stack and DTB, with the same Normal
    // attributes, and devices as Device) except the guard page, which
    // nothing uses; the switch runs with the MMU off for a few instructions.
    unsafe { switch_ttbr0_el2(root) };
    ROOT.store(root, Ordering::Release);
    Ok(POOL_USED.load(Ordering::Relaxed).min(POOL_PAGES))
}

/// The physical address `va` translates to and the size of the page or
/// block that maps it, or `None` when `va` is not mapped (or [`init`] has
/// not run).
#[must_use]
pub fn lookup(va: u64) -> Option<(u64, u64)> {
    let root = ROOT.load(Ordering::Acquire);
    if root == 0 || va >= VA_LIMIT {
        return None;
    }
    let mut t = root;
    for level in 0..4 {
        let shift = level_shift(level);
        let e = table(t)[((va >> shift) & 511) as usize].load(Ordering::Acquire);
        if e & VALID == 0 {
            return None;
        }
        if level < 3 && e & TABLE_OR_PAGE != 0 {
            t = e & ADDR_MASK;
            continue;
        }
        let size = 1u64 << shift;
        return Some(((e & ADDR_MASK & !(size - 1)) + va % size, size));
    }
    None
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

/// Add an identity mapping of `pa..pa+len` (widened to 4 KiB); parts
/// already mapped are left alone. Table pages come from the frame
/// allocator once the in-image pool is used up.
pub fn map_identity(pa: u64, len: u64, cache: Cache) -> Result<(), MapError> {
    let end = pa.checked_add(len).ok_or(MapError::OutOfRange)?;
    let end = end.checked_next_multiple_of(4096).ok_or(MapError::OutOfRange)?;
    if end > VA_LIMIT {
        return Err(MapError::OutOfRange);
    }
    let _lock = MAP_LOCK.lock();
    let root = ROOT.load(Ordering::Acquire);
    if root == 0 {
        return Err(MapError::NotInitialised);
    }
    set(root, 0, pa & !4095, end, Some(leaf_attrs(cache)), true)?;
    // Only invalid entries changed: nothing stale to invalidate.
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISHST);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    Ok(())
}
