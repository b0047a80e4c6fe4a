//! VT-d second-level translation (specification sections 3.7, 9.3, 9.8).
//!
//! A legacy context entry gives the second-level page-table pointer (SLPTPTR)
//! and AW: 1 = 39-bit 3-level, 2 = 48-bit 4-level, 3 = 57-bit 5-level. Each
//! entry: R bit 0, W bit 1, X bit 2, EMT 5:3, IPAT 6, PS 7 (SL-PDE/SL-PDPE;
//! reserved in SL-PML4E), A 8, D 9, SNP 11 (leaves; reserved in non-leaf
//! entries, and in leaves unless the unit reports snoop control), address
//! 12..HAW-1, reserved HAW..51, ignored 52..61 and 63, TM 62 (treated as
//! reserved here, as QEMU does without stale-TM). A superpage's address bits
//! below its size are reserved. Access rights are the AND over all levels.

use super::{PhysRead, Walk, WalkFault, read};

/// The unit and context-entry settings the walk depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdConfig {
    /// Context entry AW field (1: 3 levels, 2: 4 levels, 3: 5 levels).
    pub aw: u8,
    /// Host address width: address bits at or above it are reserved.
    pub haw: u8,
    /// CAP.SLLPS: bit 0 2 MiB pages, bit 1 1 GiB pages.
    pub sllps: u8,
    /// Whether SNP in leaves is allowed (ECAP.SC, or scalable mode in QEMU).
    pub snoop: bool,
}

const READ: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const SNOOP: u64 = 1 << 11;
const TRANSIENT: u64 = 1 << 62;
const IGNORED: u64 = (0x3ff << 52) | (1 << 63);

/// Translate `iova` through the second-level tables at `slptptr`.
pub fn translate(cfg: &VtdConfig, slptptr: u64, iova: u64, mem: &impl PhysRead) -> Result<Walk, WalkFault> {
    if !(1..=3).contains(&cfg.aw) || !(32..=52).contains(&cfg.haw) {
        return Err(WalkFault::BadConfig);
    }
    let levels = u32::from(cfg.aw) + 2;
    let input_bits = 12 + 9 * levels;
    if input_bits < 64 && iova >> input_bits != 0 {
        return Err(WalkFault::InputBeyondRange);
    }
    // Bits 12..HAW-1 may hold an address; everything else that is not
    // ignored is reserved.
    let addr_bits = ((1u64 << cfg.haw) - 1) & !0xfff;
    let mut table = slptptr & !0xfff;
    let (mut read_ok, mut write_ok) = (true, true);
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let index = (iova >> shift) & 0x1ff;
        let entry = read(mem, table + index * 8)?;
        let lvl = level as u8;
        if entry & (READ | WRITE) == 0 {
            return Err(WalkFault::NotPresent { level: lvl });
        }
        let large = level > 1 && entry & PAGE_SIZE_BIT != 0;
        let leaf = level == 1 || large;
        let mut reserved = (!(addr_bits | IGNORED | 0x7ff) | TRANSIENT) & !SNOOP;
        if !leaf || !cfg.snoop {
            reserved |= SNOOP;
        }
        if level >= 4 {
            reserved |= PAGE_SIZE_BIT;
        }
        if large {
            let allowed = match level {
                2 => cfg.sllps & 1 != 0,
                3 => cfg.sllps & 2 != 0,
                _ => false,
            };
            if !allowed {
                return Err(WalkFault::Reserved { level: lvl, entry });
            }
            reserved |= ((1u64 << shift) - 1) & !0xfff;
        }
        if entry & reserved != 0 {
            return Err(WalkFault::Reserved { level: lvl, entry });
        }
        read_ok &= entry & READ != 0;
        write_ok &= entry & WRITE != 0;
        let address = entry & addr_bits;
        if leaf {
            let size = 1u64 << shift;
            return Ok(Walk { pa: address | (iova & (size - 1)), page_size: size, read: read_ok, write: write_ok, leaf: entry });
        }
        table = address;
    }
    // Level 1 entries are always leaves: the loop returns before this.
    Err(WalkFault::NotPresent { level: 1 })
}
