//! The simulated machine: lazily backed RAM and IOMMU units that walk the
//! engine's tables with the independent hardware walkers
//! (`sluice_kernel::hwwalk`) and cache translations in an IOTLB that only
//! the core's invalidations clear.

use std::collections::{BTreeMap, HashMap};

use sluice_kernel::abi::{SmmuV3HwInfo, VtdHwInfo, fault_reason, hw_info_type};
use sluice_kernel::hv::PhysMem;
use sluice_kernel::hwwalk::vmsa::{Stage, VmsaConfig};
use sluice_kernel::hwwalk::vtd::VtdConfig;
use sluice_kernel::hwwalk::{PhysRead, Walk, WalkFault};
use sluice_kernel::iommu::{Domain, DomainFormat, Flush, HwInfo, Iommu, IommuError, UnitFault, UnitInfo};
use sluice_kernel::pt::{Format, LeafSizes};
use sluice_kernel::{Hpa, Iova};
use zerocopy::IntoBytes;

const PAGE: u64 = 4096;

/// RAM that costs nothing until a page is written: untouched pages read as
/// zero.
#[derive(Debug, Default)]
pub struct SimRam {
    pages: HashMap<u64, Box<[u8; 4096]>, PageHash>,
}

/// Page numbers are already well spread: a multiplicative hash is enough
/// and keeps SipHash out of every simulated memory access.
#[derive(Clone, Copy, Debug, Default)]
struct PageHash;

impl std::hash::BuildHasher for PageHash {
    type Hasher = PageHasher;
    fn build_hasher(&self) -> PageHasher {
        PageHasher(0)
    }
}

#[derive(Clone, Copy, Debug)]
struct PageHasher(u64);

impl std::hash::Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl SimRam {
    /// Pages written so far.
    #[must_use]
    pub fn touched(&self) -> usize {
        self.pages.len()
    }

    /// A digest of the bytes of `[hpa, hpa + len)` (page aligned): equal
    /// contents give equal digests, and a page never written counts as a
    /// page of zeros.
    #[must_use]
    pub fn digest(&self, hpa: Hpa, len: u64) -> u64 {
        let (first, end) = (hpa.raw() / PAGE, hpa.raw().saturating_add(len).div_ceil(PAGE));
        let mut sum = 0u64;
        for (&n, page) in &self.pages {
            if n < first || n >= end || page.iter().all(|b| *b == 0) {
                continue;
            }
            let mut h = 0xcbf2_9ce4_8422_2325u64 ^ n;
            for word in page.chunks_exact(8) {
                h = (h ^ u64::from_le_bytes(word.try_into().expect("8 bytes"))).wrapping_mul(0x100_0000_01b3);
            }
            // Order-independent over pages.
            sum = sum.wrapping_add(h);
        }
        sum
    }
}

impl PhysMem for SimRam {
    fn read(&self, hpa: Hpa, buf: &mut [u8]) {
        let mut at = hpa.raw();
        let mut done = 0;
        while done < buf.len() {
            let off = (at % PAGE) as usize;
            let n = (buf.len() - done).min(4096 - off);
            match self.pages.get(&(at / PAGE)) {
                Some(page) => buf[done..done + n].copy_from_slice(&page[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
            at += n as u64;
        }
    }

    fn write(&mut self, hpa: Hpa, data: &[u8]) {
        let mut at = hpa.raw();
        let mut done = 0;
        while done < data.len() {
            let off = (at % PAGE) as usize;
            let n = (data.len() - done).min(4096 - off);
            let page = self.pages.entry(at / PAGE).or_insert_with(|| Box::new([0; 4096]));
            page[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
            at += n as u64;
        }
    }
}

/// What kind of unit to simulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    /// VT-d, legacy mode, second-level tables.
    Vtd {
        /// Address width (39 or 48).
        aw: u32,
        /// CAP.CM: not-present entries may be cached.
        caching_mode: bool,
    },
    /// SMMUv3.
    SmmuV3 {
        /// 1 or 2.
        stage: u8,
        /// Input (IPA/VA) bits.
        ias: u32,
        /// Output bits.
        oas: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cached {
    page: u64,
    read: bool,
    write: bool,
    size: u64,
}

/// Counters of what the core asked a unit to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnitStats {
    /// attach calls.
    pub attaches: u64,
    /// block calls.
    pub blocks: u64,
    /// flush calls (each one invalidation + sync).
    pub flushes: u64,
    /// flushes of a whole domain.
    pub domain_flushes: u64,
    /// `mapped` notifications.
    pub map_notes: u64,
    /// IOTLB hits during DMA.
    pub iotlb_hits: u64,
}

/// A DMA's failure: the fault the unit recorded.
pub type DmaFault = UnitFault;

/// A simulated IOMMU unit.
#[derive(Debug)]
pub struct SimUnit {
    kind: UnitKind,
    info: UnitInfo,
    contexts: BTreeMap<u32, Domain>,
    iotlb: HashMap<(u32, u64), Cached>,
    faults: Vec<UnitFault>,
    /// Refuse every request (to test the core's handling of unit failure).
    pub fail: bool,
    /// What the core asked.
    pub stats: UnitStats,
}

fn sizes(list: &[u64]) -> LeafSizes {
    let mut s = LeafSizes::empty();
    for size in list {
        match *size {
            0x20_0000 => s |= LeafSizes::SZ_2M,
            0x4000_0000 => s |= LeafSizes::SZ_1G,
            _ => {}
        }
    }
    s
}

impl SimUnit {
    /// A unit of `kind` whose tables may use the leaf sizes in `leaves`
    /// (bytes: 0x200000, 0x40000000).
    pub fn new(kind: UnitKind, leaves: &[u64]) -> Result<Self, String> {
        let leaf_sizes = sizes(leaves);
        let (format, hw_info) = match kind {
            UnitKind::Vtd { aw, caching_mode } => {
                let levels = match aw {
                    39 => 3,
                    48 => 4,
                    _ => return Err(format!("vtd aw={aw}: 39 or 48")),
                };
                let f = sluice_kernel::pt::VtdSecondLevel::new(levels, aw, leaf_sizes, false).map_err(|e| format!("{e:?}"))?;
                let sagaw: u64 = if levels == 4 { 0b110 } else { 0b010 };
                let sllps = u64::from(leaf_sizes.bits());
                // ND=6 (64K domains), CM, SAGAW, MGAW, SLLPS, PSI, MAMV=9.
                let cap = 6 | (u64::from(caching_mode) << 7) | (sagaw << 8) | (u64::from(aw - 1) << 16) | (sllps << 34) | (1 << 39) | (9 << 48);
                // QI, IR, PT, SC.
                let ecap = (1 << 1) | (1 << 3) | (1 << 6) | (1 << 7);
                let data = VtdHwInfo { flags: 0, reserved: 0, cap_reg: cap, ecap_reg: ecap };
                (DomainFormat::Vtd(f), info(hw_info_type::INTEL_VTD, data.as_bytes().to_vec()))
            }
            UnitKind::SmmuV3 { stage, ias, oas } => {
                let f = match stage {
                    2 => DomainFormat::ArmStage2(
                        sluice_kernel::pt::ArmStage2::new(ias, oas, leaf_sizes).map_err(|e| format!("{e:?}"))?,
                    ),
                    1 => DomainFormat::ArmStage1(
                        sluice_kernel::pt::ArmStage1::new(ias, oas, leaf_sizes, 0).map_err(|e| format!("{e:?}"))?,
                    ),
                    _ => return Err(format!("smmuv3 stage={stage}: 1 or 2")),
                };
                let s1p = u32::from(stage == 1);
                let s2p = u32::from(stage == 2);
                // IDR0: S2P, S1P, TTF=AArch64, COHACC, ASID16, VMID16, ST level 2.
                let idr0 = s2p | (s1p << 1) | (2 << 2) | (1 << 4) | (1 << 12) | (1 << 18) | (1 << 27);
                // IDR1: SIDSIZE 16, queue sizes 2^8.
                let idr1 = 16 | (8 << 21) | (8 << 26);
                let oas_code = match oas {
                    32 => 0,
                    36 => 1,
                    40 => 2,
                    42 => 3,
                    44 => 4,
                    _ => 5,
                };
                let idr5 = oas_code | (1 << 4);
                let data = SmmuV3HwInfo { flags: 0, reserved: 0, idr: [idr0, idr1, 0, 0, 0, idr5], iidr: 0, aidr: 2 };
                (f, info(hw_info_type::ARM_SMMUV3, data.as_bytes().to_vec()))
            }
        };
        Ok(Self {
            kind,
            info: UnitInfo { format, max_domains: 0xffff, hw_info },
            contexts: BTreeMap::new(),
            iotlb: HashMap::new(),
            faults: Vec::new(),
            fail: false,
            stats: UnitStats::default(),
        })
    }

    /// The kind.
    #[must_use]
    pub fn kind(&self) -> UnitKind {
        self.kind
    }

    /// The domain requester `rid` uses, or `None` when it is blocked.
    #[must_use]
    pub fn context(&self, rid: u32) -> Option<&Domain> {
        self.contexts.get(&rid)
    }

    /// Cached translations, as (tag, IOVA page).
    pub fn iotlb_entries(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.iotlb.keys().copied()
    }

    /// Walk `domain`'s tables for `iova` the way the hardware does.
    pub fn walk(domain: &Domain, iova: u64, mem: &impl PhysRead) -> Result<Walk, WalkFault> {
        match domain.format {
            DomainFormat::Vtd(f) => {
                let g = f.geometry();
                let sllps = g.leaf_sizes.bits();
                let cfg = VtdConfig { aw: f.context_aw(), haw: g.output_bits as u8, sllps, snoop: false };
                sluice_kernel::hwwalk::vtd::translate(&cfg, domain.root.raw(), iova, mem)
            }
            DomainFormat::ArmStage2(f) => {
                let cfg = VmsaConfig { stage: Stage::Two { t0sz: f.t0sz(), sl0: f.sl0() }, oa_bits: f.geometry().output_bits as u8 };
                sluice_kernel::hwwalk::vmsa::translate(&cfg, domain.root.raw(), iova, mem)
            }
            DomainFormat::ArmStage1(f) => {
                let cfg = VmsaConfig { stage: Stage::One { t0sz: f.t0sz() }, oa_bits: f.geometry().output_bits as u8 };
                sluice_kernel::hwwalk::vmsa::translate(&cfg, domain.root.raw(), iova, mem)
            }
        }
    }

    /// Translate one page of a DMA through the IOTLB or a walk. `Err`
    /// carries the fault reason.
    fn translate(&mut self, rid: u32, iova: u64, write: bool, mem: &impl PhysRead) -> Result<u64, u32> {
        let Some(domain) = self.contexts.get(&rid).copied() else { return Err(fault_reason::NOT_PRESENT) };
        let page = iova & !(PAGE - 1);
        let cached = if let Some(c) = self.iotlb.get(&(domain.tag, page)) {
            self.stats.iotlb_hits += 1;
            *c
        } else {
            let w = Self::walk(&domain, page, mem).map_err(|e| match e {
                WalkFault::NotPresent { .. } | WalkFault::InputBeyondRange => fault_reason::NOT_PRESENT,
                _ => fault_reason::OTHER,
            })?;
            let c = Cached { page: w.pa & !(PAGE - 1), read: w.read, write: w.write, size: w.page_size };
            self.iotlb.insert((domain.tag, page), c);
            c
        };
        match (write, cached.read, cached.write) {
            (true, _, false) => Err(fault_reason::WRITE_TO_READ_ONLY),
            (false, false, _) => Err(fault_reason::READ_FROM_WRITE_ONLY),
            _ => Ok(cached.page + (iova & (PAGE - 1))),
        }
    }

    /// A DMA of `len` bytes at `iova` by requester `rid`: the host-physical
    /// pieces it touches, or the fault it recorded (one record, for the
    /// first faulting page; nothing moves).
    pub fn dma(&mut self, rid: u32, iova: u64, len: u64, write: bool, mem: &impl PhysRead) -> Result<Vec<(u64, u64)>, DmaFault> {
        let flags = if write { fault_reason::FLAG_WRITE } else { fault_reason::FLAG_READ };
        let mut pieces = Vec::new();
        let mut at = iova;
        let end = iova.checked_add(len);
        while end.is_none_or(|e| at < e) {
            match self.translate(rid, at, write, mem) {
                Ok(pa) => {
                    let n = (PAGE - (at % PAGE)).min(end.map_or(u64::MAX, |e| e - at));
                    pieces.push((pa, n));
                    match at.checked_add(n) {
                        Some(next) => at = next,
                        None => break,
                    }
                }
                Err(reason) => {
                    let f = UnitFault { rid, iova: at, reason, flags };
                    self.faults.push(f);
                    return Err(f);
                }
            }
        }
        Ok(pieces)
    }
}

fn info(kind: u32, bytes: Vec<u8>) -> HwInfo {
    let mut data = [0u8; 40];
    data[..bytes.len()].copy_from_slice(&bytes);
    HwInfo { kind, len: bytes.len(), data }
}

impl Iommu for SimUnit {
    fn info(&self) -> &UnitInfo {
        &self.info
    }

    fn attach(&mut self, rid: u32, domain: &Domain) -> Result<(), IommuError> {
        if self.fail {
            return Err(IommuError::Timeout);
        }
        self.stats.attaches += 1;
        self.contexts.insert(rid, *domain);
        Ok(())
    }

    fn block(&mut self, rid: u32) -> Result<(), IommuError> {
        if self.fail {
            return Err(IommuError::Timeout);
        }
        self.stats.blocks += 1;
        self.contexts.remove(&rid);
        Ok(())
    }

    fn flush(&mut self, flush: &Flush) -> Result<(), IommuError> {
        if self.fail {
            return Err(IommuError::Timeout);
        }
        self.stats.flushes += 1;
        match flush.range {
            None => {
                self.stats.domain_flushes += 1;
                self.iotlb.retain(|(tag, _), _| *tag != flush.tag);
            }
            Some((Iova(start), len)) => {
                let end = start.saturating_add(len);
                self.iotlb.retain(|(tag, page), c| {
                    // A cached page of a large leaf is dropped when any of
                    // its leaf intersects the range.
                    let leaf = page & !(c.size - 1);
                    !(*tag == flush.tag && leaf < end && leaf + c.size > start)
                });
            }
        }
        Ok(())
    }

    fn mapped(&mut self, _tag: u32, _iova: Iova, _len: u64) -> Result<(), IommuError> {
        if self.fail {
            return Err(IommuError::Timeout);
        }
        self.stats.map_notes += 1;
        Ok(())
    }

    fn drain_faults(&mut self, sink: &mut dyn FnMut(UnitFault)) {
        for f in self.faults.drain(..) {
            sink(f);
        }
    }
}
