//! What a page-table format must say: how an entry is encoded.

use crate::Hpa;

bitflags::bitflags! {
    /// Access a mapping grants to the device.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Perm: u8 {
        /// The device may read.
        const READ = 1 << 0;
        /// The device may write.
        const WRITE = 1 << 1;
        /// Device memory rather than normal memory: a CPU's second stage
        /// mapping a device's registers into a partition (Arm stage 2:
        /// Device-nGnRE). Formats without memory types ignore it; IOMMU
        /// tables never get it.
        const DEVICE = 1 << 2;
    }
}

bitflags::bitflags! {
    /// Leaf sizes above 4 KiB that a table may use (4 KiB is always allowed).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct LeafSizes: u8 {
        /// 2 MiB leaves (level 1).
        const SZ_2M = 1 << 0;
        /// 1 GiB leaves (level 2).
        const SZ_1G = 1 << 1;
    }
}

impl LeafSizes {
    /// Whether a leaf at `level` (0 = 4 KiB) is in this set.
    #[inline]
    #[must_use]
    pub const fn allows(self, level: u32) -> bool {
        match level {
            0 => true,
            1 => self.contains(Self::SZ_2M),
            2 => self.contains(Self::SZ_1G),
            _ => false,
        }
    }
}

/// An entry, decoded by the format that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pte {
    /// Nothing is mapped here.
    Absent,
    /// A pointer to the next-level table.
    Table(Hpa),
    /// A leaf mapping `level_size(level)` bytes at `hpa`.
    Leaf {
        /// Output address of the leaf.
        hpa: Hpa,
        /// Access it grants.
        perm: Perm,
    },
}

/// The sizes of a tree: what every format has, whatever its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Number of levels of the tree; the root is at `levels - 1`.
    pub levels: u32,
    /// Width of the input (IOVA) address space in bits.
    pub input_bits: u32,
    /// Width of output addresses in bits: no output address may reach
    /// `1 << output_bits`.
    pub output_bits: u32,
    /// Leaf sizes above 4 KiB the format (and the unit it is for) allows.
    pub leaf_sizes: LeafSizes,
}

/// The encoding of one page-table format with a 4 KiB granule and 512
/// entries per table. The engine does everything else.
///
/// Levels count from the leaves: level 0 maps 4 KiB, level 1 2 MiB, level 2
/// 1 GiB; the root is at `geometry().levels - 1`.
pub trait Format {
    /// The sizes of trees in this format.
    fn geometry(&self) -> &Geometry;
    /// The leaf entry for `hpa` at `level` with `perm`. `hpa` is aligned to
    /// the level's size and below `1 << output_bits`; `perm` is not empty.
    ///
    /// Formats must encode the address in bits 12 and up unchanged, so that
    /// the entry for `hpa + n * size` is this entry plus `n * size`.
    fn leaf(&self, level: u32, hpa: Hpa, perm: Perm) -> u64;
    /// The entry at `level` that points to the table at `next`.
    fn table(&self, level: u32, next: Hpa) -> u64;
    /// Whether an entry is present (a leaf or a table).
    fn is_present(&self, pte: u64) -> bool;
    /// Decode an entry this format wrote at `level`.
    fn decode(&self, level: u32, pte: u64) -> Pte;
    /// The access a leaf written with `perm` really grants (a format may
    /// have to grant more, e.g. stage 1 cannot express write-only).
    fn effective_perm(&self, perm: Perm) -> Perm {
        perm
    }
}
