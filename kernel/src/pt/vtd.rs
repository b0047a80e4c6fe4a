//! Intel VT-d second-level paging entries (VT-d specification, 9.8).
//!
//! Bit 0 R, bit 1 W, bit 7 PS (a leaf above 4 KiB, in SL-PDE and SL-PDPE),
//! bit 11 SNP (leaves only, and only when the unit allows it: QEMU's
//! intel-iommu in legacy mode treats it as reserved), bits 12..HAW the
//! address. Table entries carry R and W: the hardware ANDs the access rights
//! of every level.

use super::format::{Format, Geometry, LeafSizes, Perm, Pte};
use crate::Hpa;

const R: u64 = 1 << 0;
const W: u64 = 1 << 1;
const PS: u64 = 1 << 7;
const SNP: u64 = 1 << 11;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Why a VT-d second-level configuration cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdError {
    /// SAGAW offers neither 3-level (39-bit) nor 4-level (48-bit) tables.
    NoSupportedWidth,
    /// Levels other than 3 or 4.
    BadLevels(u32),
    /// A host address width outside 32..=52 bits.
    BadOutputBits(u32),
}

/// The VT-d second-level format of one remapping unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdSecondLevel {
    geometry: Geometry,
    snoop: bool,
}

impl VtdSecondLevel {
    /// A format with `levels` (3: 39-bit, 4: 48-bit input), output
    /// addresses below `1 << output_bits`, the given superpage sizes, and
    /// SNP set in leaves when `snoop`.
    pub fn new(levels: u32, output_bits: u32, leaf_sizes: LeafSizes, snoop: bool) -> Result<Self, VtdError> {
        if !(3..=4).contains(&levels) {
            return Err(VtdError::BadLevels(levels));
        }
        if !(32..=52).contains(&output_bits) {
            return Err(VtdError::BadOutputBits(output_bits));
        }
        Ok(Self { geometry: Geometry { levels, input_bits: 12 + 9 * levels, output_bits, leaf_sizes }, snoop })
    }

    /// The format a unit supports, from its capability fields: `sagaw`
    /// (CAP[12:8]), `sllps` (CAP[37:34]) and its host address width. Picks
    /// 4 levels when SAGAW has them, else 3.
    pub fn from_caps(sagaw: u8, sllps: u8, host_address_bits: u32, snoop: bool) -> Result<Self, VtdError> {
        let levels = if sagaw & (1 << 2) != 0 {
            4
        } else if sagaw & (1 << 1) != 0 {
            3
        } else {
            return Err(VtdError::NoSupportedWidth);
        };
        let mut sizes = LeafSizes::empty();
        if sllps & 1 != 0 {
            sizes |= LeafSizes::SZ_2M;
        }
        if sllps & 2 != 0 {
            sizes |= LeafSizes::SZ_1G;
        }
        Self::new(levels, host_address_bits, sizes, snoop)
    }

    /// The AW field of a legacy context entry for these tables (1: 39-bit
    /// 3-level, 2: 48-bit 4-level).
    #[must_use]
    pub const fn context_aw(&self) -> u8 {
        (self.geometry.levels - 2) as u8
    }
}

impl Format for VtdSecondLevel {
    #[inline]
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }
    #[inline]
    fn leaf(&self, level: u32, hpa: Hpa, perm: Perm) -> u64 {
        let mut e = hpa.raw();
        if perm.contains(Perm::READ) {
            e |= R;
        }
        if perm.contains(Perm::WRITE) {
            e |= W;
        }
        if level > 0 {
            e |= PS;
        }
        if self.snoop {
            e |= SNP;
        }
        e
    }
    #[inline]
    fn table(&self, _level: u32, next: Hpa) -> u64 {
        next.raw() | R | W
    }
    #[inline]
    fn is_present(&self, pte: u64) -> bool {
        pte & (R | W) != 0
    }
    #[inline]
    fn decode(&self, level: u32, pte: u64) -> Pte {
        if pte & (R | W) == 0 {
            return Pte::Absent;
        }
        if level == 0 || pte & PS != 0 {
            let mut perm = Perm::empty();
            perm.set(Perm::READ, pte & R != 0);
            perm.set(Perm::WRITE, pte & W != 0);
            Pte::Leaf { hpa: Hpa(pte & ADDR), perm }
        } else {
            Pte::Table(Hpa(pte & ADDR))
        }
    }
}
