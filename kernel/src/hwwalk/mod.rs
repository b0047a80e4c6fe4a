//! Translation as the IOMMU hardware does it, written from the
//! specifications independently of the engine in [`crate::pt`]: VT-d
//! second-level paging (VT-d specification 3.7 and 9.8) and VMSAv8-64 4 KiB
//! granule stage 1 and stage 2 (Arm ARM D8, SMMUv3 STE/CD fields).
//!
//! These walkers read raw 64-bit words through [`PhysRead`], check the bits
//! the specification (and QEMU's models) treat as reserved, and report the
//! leaf, its size and the access the whole walk grants. Tests use them to
//! check the bytes the engine wrote; the simulator uses them as its IOMMUs.

pub mod vmsa;
pub mod vtd;

/// Reads host-physical memory the way a DMA master does.
pub trait PhysRead {
    /// The little-endian 64-bit word at `pa` (8-byte aligned), or `None`
    /// when nothing answers there.
    fn read_u64(&self, pa: u64) -> Option<u64>;
}

impl PhysRead for crate::pt::VecTableMemory {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        crate::pt::VecTableMemory::read_u64(self, pa)
    }
}

/// A successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    /// Output address for the input address asked about.
    pub pa: u64,
    /// Size of the page or block that translated it.
    pub page_size: u64,
    /// Reads allowed by every level of the walk.
    pub read: bool,
    /// Writes allowed by every level of the walk.
    pub write: bool,
    /// The leaf descriptor as read from memory.
    pub leaf: u64,
}

/// Why a walk failed, as the hardware would report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFault {
    /// The configuration (levels, T0SZ, SL0) is not one the hardware accepts.
    BadConfig,
    /// The input address is beyond what the configuration translates.
    InputBeyondRange,
    /// An entry on the way is not present. `level` counts as the
    /// specification does (VT-d: 1 = PTE ... 4 = PML4E; Arm: 0..3).
    NotPresent { level: u8 },
    /// An entry has reserved bits set (QEMU reports these as malformed).
    Reserved { level: u8, entry: u64 },
    /// An output or table address is beyond the output size.
    AddressSize { level: u8 },
    /// Arm: a leaf with AF clear (and no hardware AF update).
    AccessFlag { level: u8 },
    /// Reading a table word failed.
    Bus { pa: u64 },
}

fn read(mem: &impl PhysRead, pa: u64) -> Result<u64, WalkFault> {
    mem.read_u64(pa).ok_or(WalkFault::Bus { pa })
}
