//! What the core asks of an IOMMU unit.
//!
//! The core decides everything (which device uses which page table, what is
//! mapped, when to invalidate); a unit only carries it out. The real drivers
//! (drivers/vtd, drivers/smmuv3) and hvsim's simulated units implement
//! [`Iommu`].

use crate::pt::{ArmStage1, ArmStage2, VtdSecondLevel};
use crate::{Hpa, Iova};

/// The page-table format a unit walks, with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainFormat {
    /// VT-d second-level tables (legacy-mode context entries).
    Vtd(VtdSecondLevel),
    /// SMMUv3 stage 2 (VTTBR/VTCR in the STE).
    ArmStage2(ArmStage2),
    /// SMMUv3 stage 1 (TTB0/TCR/MAIR in a context descriptor).
    ArmStage1(ArmStage1),
}

impl DomainFormat {
    /// Bits of IOVA the tables translate.
    #[must_use]
    pub fn input_bits(&self) -> u32 {
        use crate::pt::Format;
        match self {
            Self::Vtd(f) => f.geometry().input_bits,
            Self::ArmStage2(f) => f.geometry().input_bits,
            Self::ArmStage1(f) => f.geometry().input_bits,
        }
    }
}

/// GET_HW_INFO data of a unit: its type and the bytes of the iommufd
/// structure (`iommu_hw_info_vtd` or `iommu_hw_info_arm_smmuv3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwInfo {
    /// `hw_info_type` value.
    pub kind: u32,
    /// Number of valid bytes in `data`.
    pub len: usize,
    /// The structure's bytes.
    pub data: [u8; 40],
}

/// What the core needs to know about a unit. Fixed after probing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    /// The format of every domain on this unit.
    pub format: DomainFormat,
    /// Domain tags the unit can hold at once (VT-d domain ids, VMIDs or
    /// ASIDs); the core hands out tags `1..=max_domains`.
    pub max_domains: u32,
    /// The registers GET_HW_INFO reports.
    pub hw_info: HwInfo,
}

/// One hardware page table as a unit sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domain {
    /// Tag, unique on the unit while the domain lives (`1..=max_domains`).
    pub tag: u32,
    /// Root table.
    pub root: Hpa,
    /// Format (same as the unit's).
    pub format: DomainFormat,
}

/// What an invalidation must cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flush {
    /// Domain tag.
    pub tag: u32,
    /// `[iova, iova + len)`; `None`: everything of the domain.
    pub range: Option<(Iova, u64)>,
    /// Bit `n`: leaves of level `n` were removed (see
    /// [`crate::pt::Gather::leaf_levels`]).
    pub leaf_levels: u8,
    /// Table pages were unlinked: paging-structure caches must go too.
    pub tables: bool,
}

/// A fault as a unit recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitFault {
    /// Requester id (PCI RID or StreamID).
    pub rid: u32,
    /// Faulting input address.
    pub iova: u64,
    /// `abi::fault_reason` value.
    pub reason: u32,
    /// `abi::fault_reason::FLAG_READ` / `FLAG_WRITE`.
    pub flags: u32,
}

/// A unit did not do what it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuError {
    /// A bounded wait for the hardware expired.
    Timeout,
    /// The unit refused the request (for example a requester id it does
    /// not serve).
    Refused,
}

/// An IOMMU unit.
///
/// Every method that changes what a device can reach returns only after the
/// change is visible to the hardware and, for [`Iommu::flush`], after the
/// invalidation has completed.
pub trait Iommu {
    /// What the unit is.
    fn info(&self) -> &UnitInfo;

    /// Make requester `rid` translate through `domain` (replacing whatever
    /// it used before, without a window in which it is unblocked to
    /// anything else), with every cache the change needs invalidated.
    fn attach(&mut self, rid: u32, domain: &Domain) -> Result<(), IommuError>;

    /// Block requester `rid`: from return on, each of its DMAs faults.
    fn block(&mut self, rid: u32) -> Result<(), IommuError>;

    /// Invalidate and wait for completion.
    fn flush(&mut self, flush: &Flush) -> Result<(), IommuError>;

    /// Entries for `[iova, iova + len)` of domain `tag` went from not
    /// present to present. Units that cache not-present entries (VT-d with
    /// CAP.CM) invalidate here; the default does nothing.
    fn mapped(&mut self, tag: u32, iova: Iova, len: u64) -> Result<(), IommuError> {
        let _ = (tag, iova, len);
        Ok(())
    }

    /// Hand every fault recorded since the last call to `sink`, oldest
    /// first, and clear them in the unit.
    fn drain_faults(&mut self, sink: &mut dyn FnMut(UnitFault));
}
