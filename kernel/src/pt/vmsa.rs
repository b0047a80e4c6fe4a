//! Arm VMSAv8-64 translation table descriptors, 4 KiB granule (Arm ARM D8),
//! as used by the SMMUv3: stage 2 (STE.S2TTB, S2T0SZ, S2SL0) and stage 1
//! (CD.TTB0, T0SZ) for SMMUs without stage 2.
//!
//! Descriptor bits: [1:0] 0b11 table or page (level 3), 0b01 block (levels 1
//! and 2); OA in [47:12]; lower attributes in [11:2]: stage 2 MemAttr[5:2],
//! S2AP[7:6], SH[9:8], AF[10]; stage 1 AttrIndx[4:2], AP[7:6], SH[9:8],
//! AF[10], nG[11]; upper attributes: PXN[53], UXN/XN[54].

use super::format::{Format, Geometry, LeafSizes, Perm, Pte};
use crate::Hpa;

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const OA: u64 = 0x0000_ffff_ffff_f000;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;

const S2_MEMATTR_NORMAL_WB: u64 = 0b1111 << 2;
const S2_MEMATTR_DEVICE_NGNRE: u64 = 0b0001 << 2;
const S2_MEMATTR: u64 = 0b1111 << 2;
const S2AP_READ: u64 = 1 << 6;
const S2AP_WRITE: u64 = 1 << 7;

const S1_AP_UNPRIV: u64 = 1 << 6;
const S1_AP_RDONLY: u64 = 1 << 7;
const S1_NG: u64 = 1 << 11;
const S1_PXN: u64 = 1 << 53;
const S1_UXN: u64 = 1 << 54;

/// MAIR attribute byte for normal memory, inner and outer write-back
/// read/write-allocate: what a stage-1 context descriptor's MAIR must hold
/// at the index the [`ArmStage1`] format uses.
pub const MAIR_NORMAL_WB: u8 = 0xff;

/// Why a VMSAv8-64 configuration cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmsaError {
    /// Input size outside 32..=48 bits.
    BadInputBits(u32),
    /// Output size outside 32..=48 bits (no 52-bit OA with 4 KiB granule).
    BadOutputBits(u32),
    /// MAIR index above 7.
    BadAttrIndex(u8),
}

fn geometry(input_bits: u32, output_bits: u32, leaf_sizes: LeafSizes) -> Result<Geometry, VmsaError> {
    if !(32..=48).contains(&input_bits) {
        return Err(VmsaError::BadInputBits(input_bits));
    }
    if !(32..=48).contains(&output_bits) {
        return Err(VmsaError::BadOutputBits(output_bits));
    }
    // The fewest levels that resolve `input_bits` without concatenated
    // root tables: 32..=39 bits start at level 1, 40..=48 at level 0.
    Ok(Geometry { levels: (input_bits - 12).div_ceil(9), input_bits, output_bits, leaf_sizes })
}

#[inline]
fn table_descriptor(next: Hpa) -> u64 {
    next.raw() | VALID | TABLE_OR_PAGE
}

#[inline]
fn descriptor_type(level: u32) -> u64 {
    if level == 0 { VALID | TABLE_OR_PAGE } else { VALID }
}

#[inline]
fn decode_common(level: u32, pte: u64, perm: impl FnOnce(u64) -> Perm) -> Pte {
    if pte & VALID == 0 {
        Pte::Absent
    } else if level > 0 && pte & TABLE_OR_PAGE != 0 {
        Pte::Table(Hpa(pte & OA))
    } else {
        Pte::Leaf { hpa: Hpa(pte & OA), perm: perm(pte) }
    }
}

/// Stage-2 translation tables: normal write-back inner-shareable memory,
/// access flag set, S2AP from the mapping's permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmStage2 {
    geometry: Geometry,
}

impl ArmStage2 {
    /// Stage-2 tables for an IPA of `input_bits` (32..=48) and output
    /// addresses of `output_bits`, with the given block sizes.
    pub fn new(input_bits: u32, output_bits: u32, blocks: LeafSizes) -> Result<Self, VmsaError> {
        Ok(Self { geometry: geometry(input_bits, output_bits, blocks)? })
    }

    /// VTCR/STE S2T0SZ: 64 minus the IPA size.
    #[must_use]
    pub const fn t0sz(&self) -> u8 {
        (64 - self.geometry.input_bits) as u8
    }

    /// VTCR/STE S2SL0 for the 4 KiB granule: 2 = start at level 0, 1 = at
    /// level 1.
    #[must_use]
    pub const fn sl0(&self) -> u8 {
        (self.geometry.levels - 2) as u8
    }
}

impl Format for ArmStage2 {
    #[inline]
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }
    #[inline]
    fn leaf(&self, level: u32, hpa: Hpa, perm: Perm) -> u64 {
        let memory = if perm.contains(Perm::DEVICE) { S2_MEMATTR_DEVICE_NGNRE } else { S2_MEMATTR_NORMAL_WB | SH_INNER };
        let mut e = hpa.raw() | descriptor_type(level) | memory | AF;
        if perm.contains(Perm::READ) {
            e |= S2AP_READ;
        }
        if perm.contains(Perm::WRITE) {
            e |= S2AP_WRITE;
        }
        e
    }
    #[inline]
    fn table(&self, _level: u32, next: Hpa) -> u64 {
        table_descriptor(next)
    }
    #[inline]
    fn is_present(&self, pte: u64) -> bool {
        pte & VALID != 0
    }
    #[inline]
    fn decode(&self, level: u32, pte: u64) -> Pte {
        decode_common(level, pte, |e| {
            let mut p = Perm::empty();
            p.set(Perm::READ, e & S2AP_READ != 0);
            p.set(Perm::WRITE, e & S2AP_WRITE != 0);
            p.set(Perm::DEVICE, e & S2_MEMATTR == S2_MEMATTR_DEVICE_NGNRE);
            p
        })
    }
}

/// Stage-1 translation tables for an SMMUv3 without stage 2: non-global
/// (ASID-tagged) leaves, never executable, access flag set, memory type from
/// MAIR index `attr_index`, accessible at EL0 and EL1 (AP[1] set, as Linux's
/// io-pgtable does for DMA), read-only when the mapping is not writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmStage1 {
    geometry: Geometry,
    attr_index: u8,
}

impl ArmStage1 {
    /// Stage-1 tables for a VA of `input_bits` (32..=48), output addresses
    /// of `output_bits`, the given block sizes and MAIR index.
    pub fn new(input_bits: u32, output_bits: u32, blocks: LeafSizes, attr_index: u8) -> Result<Self, VmsaError> {
        let geometry = geometry(input_bits, output_bits, blocks)?;
        if attr_index > 7 {
            return Err(VmsaError::BadAttrIndex(attr_index));
        }
        Ok(Self { geometry, attr_index })
    }

    /// CD T0SZ: 64 minus the VA size.
    #[must_use]
    pub const fn t0sz(&self) -> u8 {
        (64 - self.geometry.input_bits) as u8
    }

    /// The MAIR index the leaves use.
    #[must_use]
    pub const fn attr_index(&self) -> u8 {
        self.attr_index
    }
}

impl Format for ArmStage1 {
    #[inline]
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }
    #[inline]
    fn leaf(&self, level: u32, hpa: Hpa, perm: Perm) -> u64 {
        let mut e = hpa.raw()
            | descriptor_type(level)
            | (u64::from(self.attr_index) << 2)
            | S1_AP_UNPRIV
            | SH_INNER
            | AF
            | S1_NG
            | S1_PXN
            | S1_UXN;
        if !perm.contains(Perm::WRITE) {
            e |= S1_AP_RDONLY;
        }
        e
    }
    #[inline]
    fn table(&self, _level: u32, next: Hpa) -> u64 {
        table_descriptor(next)
    }
    #[inline]
    fn is_present(&self, pte: u64) -> bool {
        pte & VALID != 0
    }
    #[inline]
    fn decode(&self, level: u32, pte: u64) -> Pte {
        decode_common(level, pte, |e| if e & S1_AP_RDONLY != 0 { Perm::READ } else { Perm::READ | Perm::WRITE })
    }
    /// Stage 1 has no write-only permission: a writable mapping is also
    /// readable (as with Linux's io-pgtable-arm).
    fn effective_perm(&self, perm: Perm) -> Perm {
        if perm.contains(Perm::WRITE) { Perm::READ | Perm::WRITE } else { perm }
    }
}
