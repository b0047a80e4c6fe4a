//! A hardware page table of any of the formats, chosen at run time by the
//! IOMMU unit it is made for.

use crate::iommu::DomainFormat;
use crate::pt::{ArmStage1, ArmStage2, Format, Gather, PageTable, Perm, PtError, TableMemory, Translation, VtdSecondLevel};
use crate::{Hpa, Iova};

/// One [`PageTable`] in the format of its unit.
#[derive(Debug)]
pub enum AnyTable {
    /// VT-d second level.
    Vtd(PageTable<VtdSecondLevel>),
    /// VMSAv8-64 stage 2.
    ArmStage2(PageTable<ArmStage2>),
    /// VMSAv8-64 stage 1.
    ArmStage1(PageTable<ArmStage1>),
}

macro_rules! each {
    ($self:expr, $t:ident => $body:expr) => {
        match $self {
            AnyTable::Vtd($t) => $body,
            AnyTable::ArmStage2($t) => $body,
            AnyTable::ArmStage1($t) => $body,
        }
    };
}

impl AnyTable {
    /// An empty table in `format`.
    pub fn new<M: TableMemory>(format: &DomainFormat, mem: &mut M) -> Result<Self, PtError> {
        Ok(match format {
            DomainFormat::Vtd(f) => Self::Vtd(PageTable::new(*f, mem)?),
            DomainFormat::ArmStage2(f) => Self::ArmStage2(PageTable::new(*f, mem)?),
            DomainFormat::ArmStage1(f) => Self::ArmStage1(PageTable::new(*f, mem)?),
        })
    }

    /// Root table address.
    pub fn root(&self) -> Hpa {
        each!(self, t => t.root())
    }

    /// The format, as a unit describes it.
    pub fn format(&self) -> DomainFormat {
        match self {
            Self::Vtd(t) => DomainFormat::Vtd(*t.format()),
            Self::ArmStage2(t) => DomainFormat::ArmStage2(*t.format()),
            Self::ArmStage1(t) => DomainFormat::ArmStage1(*t.format()),
        }
    }

    /// See [`PageTable::set_huge_pages`].
    pub fn set_huge_pages(&mut self, on: bool) {
        each!(self, t => t.set_huge_pages(on));
    }

    /// See [`PageTable::map`].
    pub fn map<M: TableMemory>(&mut self, mem: &mut M, iova: Iova, hpa: Hpa, len: u64, perm: Perm, gather: &mut Gather) -> Result<(), PtError> {
        each!(self, t => t.map(mem, iova, hpa, len, perm, gather))
    }

    /// See [`PageTable::unmap`].
    pub fn unmap<M: TableMemory>(&mut self, mem: &mut M, iova: Iova, len: u64, gather: &mut Gather) -> Result<u64, PtError> {
        each!(self, t => t.unmap(mem, iova, len, gather))
    }

    /// See [`PageTable::translate`].
    pub fn translate<M: TableMemory>(&self, mem: &M, iova: Iova) -> Option<Translation> {
        each!(self, t => t.translate(mem, iova))
    }

    /// See [`PageTable::for_each_leaf`]; `perm` is what the hardware grants
    /// ([`Format::effective_perm`]).
    pub fn for_each_leaf<M: TableMemory>(&self, mem: &M, mut f: impl FnMut(Iova, u64, Hpa, Perm)) {
        each!(self, t => t.for_each_leaf(mem, |i, s, h, p| f(i, s, h, t.format().effective_perm(p))));
    }

    /// See [`PageTable::for_each_table`].
    pub fn for_each_table<M: TableMemory>(&self, mem: &M, f: impl FnMut(u32, Hpa)) {
        each!(self, t => t.for_each_table(mem, f));
    }

    /// See [`PageTable::destroy`].
    pub fn destroy<M: TableMemory>(self, mem: &mut M, gather: &mut Gather) {
        each!(self, t => t.destroy(mem, gather));
    }

    /// What the hardware grants for `perm` in this format.
    pub fn effective_perm(&self, perm: Perm) -> Perm {
        each!(self, t => t.format().effective_perm(perm))
    }
}
