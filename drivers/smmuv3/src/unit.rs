//! One SMMUv3 as an [`Iommu`].

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use sluice_kernel::abi::{SmmuV3HwInfo, hw_info_type};
use sluice_kernel::iommu::{Domain, DomainFormat, Flush, HwInfo, Iommu, IommuError, UnitFault, UnitInfo};
use sluice_kernel::pt::{ArmStage1, ArmStage2, Format, LeafSizes, MAIR_NORMAL_WB, TableMemory, level_shift};
use sluice_kernel::time::{Clock, wait_for};
use sluice_kernel::{Hpa, Iova};
use tock_registers::interfaces::{Readable, Writeable};
use zerocopy::IntoBytes;

use crate::caps::{Caps, ps_code};
use crate::desc::{self, Command, RawEvent, Stage1, Stage2, SyncSignal, WalkAttrs};
use crate::regs::{self, Page1Regs, Regs, cr0, cr1, cr2, gbpa, gerror, queue, strtab_cfg};

/// Longest any single hardware wait may take before it is reported as a
/// timeout (the architecture gives no bound; QEMU answers synchronously).
pub const WAIT_US: u64 = 100_000;

/// log2 of the command queue entries: one 4 KiB page of 16-byte commands.
const CMDQ_LOG2: u32 = 8;
/// log2 of the event queue entries: one 4 KiB page of 32-byte records.
const EVENTQ_LOG2: u32 = 7;
/// log2 of the STEs in one page (64 of 64 bytes): the largest linear
/// table and the level-2 tables (SPLIT 6).
const STE_PAGE_LOG2: u32 = 6;
/// log2 of the level-1 descriptors in one page (512 of 8 bytes).
const L1_PAGE_LOG2: u32 = 9;
/// CDs in one page.
const CDS_PER_PAGE: usize = 4096 / desc::CD_BYTES;
/// Per-leaf invalidations above this many become one VMID/ASID-wide one.
pub const MAX_LEAF_COMMANDS: usize = 32;
/// Raw events kept for [`SmmuV3Unit::take_raw_events`].
const RAW_KEEP: usize = 256;

/// Which translation stage domains should use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StagePreference {
    /// Stage 2 when the SMMU has it (IDR0.S2P), else stage 1.
    Auto,
    /// Stage 1 even when stage 2 exists.
    Stage1,
    /// Stage 2 only: bring-up fails without IDR0.S2P.
    Stage2,
}

/// The stage the unit's domains use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1 (CD per domain, ASID = tag).
    One,
    /// Stage 2 (VMID = tag).
    Two,
}

/// Why an SMMU could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The SMMU lacks something the driver needs.
    Unsupported(&'static str),
    /// No memory for the stream table or the queues.
    NoMemory,
    /// A register update or the first invalidation did not complete in time.
    Timeout(&'static str),
    /// The SMMU rejected a bring-up command (CMDQ_CONS.ERR code).
    CommandError(u32),
}

/// What the driver did, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Commands queued, CMD_SYNCs included.
    pub commands: u64,
    /// CMD_SYNCs queued.
    pub syncs: u64,
    /// STE and level-1 descriptor invalidations (CFGI_STE, CFGI_ALL).
    pub config_invalidations: u64,
    /// TLB invalidations by range (IDR3.RIL).
    pub tlbi_range: u64,
    /// TLB invalidations by single address.
    pub tlbi_leaf: u64,
    /// VMID- or ASID-wide TLB invalidations.
    pub tlbi_domain: u64,
    /// Completed waits.
    pub waits: u64,
    /// Bounded waits that expired.
    pub timeouts: u64,
    /// Commands the SMMU rejected (skipped).
    pub command_errors: u64,
    /// Event records drained.
    pub events: u64,
    /// Times EVENTQ_PROD.OVFLG toggled: events were lost.
    pub event_overflows: u64,
    /// Global errors acknowledged (CMDQ_ERR included).
    pub global_errors: u64,
}

/// A queue in one table page; `index` counts with the wrap bit.
#[derive(Clone, Copy, Debug)]
struct Queue {
    page: Hpa,
    log2: u32,
    index: u32,
}

impl Queue {
    const fn len(&self) -> u32 {
        1 << self.log2
    }
    /// Index and wrap bit.
    const fn mask(&self) -> u32 {
        (2 << self.log2) - 1
    }
    const fn slot(&self, index: u32) -> usize {
        (index & (self.len() - 1)) as usize
    }
    const fn used(&self, prod: u32, cons: u32) -> u32 {
        prod.wrapping_sub(cons) & self.mask()
    }
}

enum StreamTable {
    /// `1 << sid_bits` STEs in one page.
    Linear(Hpa),
    /// Level-1 descriptors in one page; level-2 tables of 64 STEs made on
    /// first use.
    TwoLevel { l1: Hpa, l2: BTreeMap<u32, Hpa> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attached {
    tag: u16,
    root: Hpa,
}

#[derive(Clone, Copy, Debug)]
struct CdSlot {
    page: Hpa,
    index: usize,
    root: Hpa,
    users: u32,
}

/// An Arm SMMUv3 driven with one stage: linear or 2-level stream table,
/// stage-2 STEs (or stage-1 STEs with one context descriptor per domain)
/// over tables from the core's engine, the command queue with CMD_SYNC
/// completion polling, the event queue drained on request.
pub struct SmmuV3Unit<M: TableMemory, C: Clock> {
    regs: &'static Regs,
    page1: &'static Page1Regs,
    caps: Caps,
    stage: Stage,
    info: UnitInfo,
    attrs: WalkAttrs,
    mem: M,
    clock: C,
    strtab: StreamTable,
    sid_bits: u32,
    cmdq: Queue,
    eventq: Queue,
    /// EVENTQ_CONS.OVACKFLG as last written.
    overflow_ack: u32,
    sync: SyncSignal,
    attached: BTreeMap<u32, Attached>,
    cds: BTreeMap<u16, CdSlot>,
    free_cds: Vec<(Hpa, usize)>,
    stats: Stats,
    recent: Vec<RawEvent>,
}

impl<M: TableMemory, C: Clock> core::fmt::Debug for SmmuV3Unit<M, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SmmuV3Unit")
            .field("caps", &self.caps)
            .field("stage", &self.stage)
            .field("sid_bits", &self.sid_bits)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

use InitError::Unsupported;

impl<M: TableMemory, C: Clock> SmmuV3Unit<M, C> {
    /// Take over the SMMU whose registers are at `base` and enable it with
    /// every stream blocked (unconfigured StreamIDs abort or fault).
    ///
    /// `stage` picks the translation stage of the unit's domains.
    ///
    /// # Safety
    ///
    /// `base` must be the virtual address of the SMMU's two 64 KiB register
    /// pages ([`regs::MMIO_SIZE`] bytes, the DT `reg` of an `arm,smmu-v3`
    /// node or the IORT base), mapped as device memory and valid for the
    /// rest of the program, and nothing else may access these registers
    /// while the returned value lives.
    pub unsafe fn new(base: usize, stage: StagePreference, mem: M, clock: C) -> Result<Self, InitError> {
        // SAFETY: the caller guarantees `base` is this SMMU's register
        // block, mapped for 'static and used by nobody else.
        let regs: &'static Regs = unsafe { &*(base as *const Regs) };
        // SAFETY: page 1 lies inside the same mapped block (MMIO_SIZE).
        let page1: &'static Page1Regs = unsafe { &*((base + regs::PAGE1_OFFSET) as *const Page1Regs) };
        Self::init(regs, page1, stage, mem, clock)
    }

    fn init(regs: &'static Regs, page1: &'static Page1Regs, pref: StagePreference, mut mem: M, clock: C) -> Result<Self, InitError> {
        let idr = [regs.idr0.get(), regs.idr1.get(), regs.idr2.get(), regs.idr3.get(), regs.idr4.get(), regs.idr5.get()];
        let caps = Caps::decode(idr, regs.iidr.get(), regs.aidr.get());
        if !caps.aarch64_tables() {
            return Err(Unsupported("no AArch64 translation tables (IDR0.TTF)"));
        }
        if !caps.little_endian() {
            return Err(Unsupported("big-endian tables only (IDR0.TTENDIAN)"));
        }
        if !caps.gran4k {
            return Err(Unsupported("no 4 KiB granule (IDR5.GRAN4K)"));
        }
        if caps.oas_bits == 0 {
            return Err(Unsupported("reserved IDR5.OAS"));
        }
        if caps.tables_preset || caps.queues_preset {
            return Err(Unsupported("preset stream table or queues (IDR1)"));
        }
        if caps.cmdqs == 0 {
            return Err(Unsupported("a one-entry command queue"));
        }
        let stage = match (pref, caps.s1p, caps.s2p) {
            (StagePreference::Auto | StagePreference::Stage2, _, true) => Stage::Two,
            (StagePreference::Auto | StagePreference::Stage1, true, _) => Stage::One,
            (StagePreference::Stage2, _, false) => return Err(Unsupported("no stage 2 (IDR0.S2P)")),
            _ => return Err(Unsupported("no translation stage (IDR0.S1P/S2P)")),
        };
        // 4 KiB granule: no 52-bit output (LPA2 is not used).
        let oas = caps.oas_bits.min(48);
        let blocks = LeafSizes::SZ_2M | LeafSizes::SZ_1G;
        let (format, max_domains) = match stage {
            // S2T0SZ must be at least 64 - OAS (QEMU's `s2t0sz_valid`,
            // the IAS of an SMMU with AArch64 tables only is its OAS).
            Stage::Two => (
                DomainFormat::ArmStage2(ArmStage2::new(oas, oas, blocks).map_err(|_| Unsupported("OAS below 32 bits"))?),
                (1u32 << caps.vmid_bits()) - 1,
            ),
            Stage::One => (
                DomainFormat::ArmStage1(ArmStage1::new(48, oas, blocks, 0).map_err(|_| Unsupported("OAS below 32 bits"))?),
                (1u32 << caps.asid_bits()) - 1,
            ),
        };
        let hw = SmmuV3HwInfo { flags: 0, reserved: 0, idr, iidr: caps.iidr, aidr: caps.aidr };
        let mut data = [0u8; 40];
        data.copy_from_slice(hw.as_bytes());
        let info = UnitInfo { format, max_domains, hw_info: HwInfo { kind: hw_info_type::ARM_SMMUV3, len: 40, data } };

        // The stream table: linear while 2^SIDSIZE STEs fit the one 4 KiB
        // page TableMemory hands out, else 2-level with SPLIT 6 (level-2
        // tables of one page) under a one-page level-1 table, which covers
        // 15 StreamID bits. Without 2-level support only 64 StreamIDs are
        // served.
        let (strtab, sid_bits) = if caps.sid_bits <= STE_PAGE_LOG2 || caps.st_level == 0 {
            (StreamTable::Linear(mem.alloc_table().ok_or(InitError::NoMemory)?), caps.sid_bits.min(STE_PAGE_LOG2))
        } else {
            let l1 = mem.alloc_table().ok_or(InitError::NoMemory)?;
            (StreamTable::TwoLevel { l1, l2: BTreeMap::new() }, caps.sid_bits.min(STE_PAGE_LOG2 + L1_PAGE_LOG2))
        };
        let cmdq = Queue { page: mem.alloc_table().ok_or(InitError::NoMemory)?, log2: caps.cmdqs.min(CMDQ_LOG2), index: 0 };
        let eventq = Queue { page: mem.alloc_table().ok_or(InitError::NoMemory)?, log2: caps.eventqs.min(EVENTQ_LOG2), index: 0 };
        let mut unit = Self {
            regs,
            page1,
            caps,
            stage,
            info,
            attrs: WalkAttrs::for_coherency(caps.cohacc),
            mem,
            clock,
            strtab,
            sid_bits,
            cmdq,
            eventq,
            overflow_ack: 0,
            sync: if caps.sev { SyncSignal::Sev } else { SyncSignal::None },
            attached: BTreeMap::new(),
            cds: BTreeMap::new(),
            free_cds: Vec::new(),
            stats: Stats::default(),
            recent: Vec::new(),
        };
        unit.take_over()?;
        Ok(unit)
    }

    /// Bring-up (Arm IHI 0070, 3.21 and Linux's `arm_smmu_device_reset`):
    /// GBPA abort first, so that no transaction bypasses while SMMUEN is
    /// clear, then SMMUEN off, interrupts off (faults are polled), old
    /// global errors acknowledged, CR1/CR2, stream table, command queue on,
    /// invalidate everything, event queue on, SMMU on.
    fn take_over(&mut self) -> Result<(), InitError> {
        let regs = self.regs;
        self.wait(|| (regs.gbpa.get() & gbpa::UPDATE == 0).then_some(())).map_err(|_| InitError::Timeout("GBPA update"))?;
        regs.gbpa.set((regs.gbpa.get() & !gbpa::UPDATE) | gbpa::ABORT | gbpa::UPDATE);
        self.wait(|| (regs.gbpa.get() & gbpa::UPDATE == 0).then_some(())).map_err(|_| InitError::Timeout("GBPA update"))?;
        self.set_cr0(0).map_err(|_| InitError::Timeout("SMMU disable"))?;
        regs.irq_ctrl.set(0);
        self.wait(|| (regs.irq_ctrlack.get() & 7 == 0).then_some(())).map_err(|_| InitError::Timeout("IRQ_CTRL"))?;
        regs.gerrorn.set(regs.gerror.get());
        let (cache, sh) = if self.caps.cohacc { (cr1::WB, cr1::ISH) } else { (cr1::NC, cr1::OSH) };
        regs.cr1.set(cr1::value(cache, sh));
        regs.cr2.set(cr2::PTM | cr2::RECINVSID);

        let (base, cfg) = match &self.strtab {
            StreamTable::Linear(t) => (*t, strtab_cfg::value(self.sid_bits, 0, false)),
            StreamTable::TwoLevel { l1, .. } => (*l1, strtab_cfg::value(self.sid_bits, STE_PAGE_LOG2, true)),
        };
        regs.strtab_base.set(regs::strtab_base::RA | (base.raw() & regs::strtab_base::ADDR_MASK));
        regs.strtab_base_cfg.set(cfg);

        regs.cmdq_base.set(queue::base(self.cmdq.page.raw(), self.cmdq.log2));
        regs.cmdq_prod.set(0);
        regs.cmdq_cons.set(0);
        self.set_cr0(cr0::CMDQEN).map_err(|_| InitError::Timeout("command queue enable"))?;
        let mut cmds = alloc::vec![Command::CfgiAll];
        if self.caps.hyp {
            cmds.push(Command::TlbiEl2All);
        }
        cmds.push(Command::TlbiNsnhAll);
        match self.issue(&cmds) {
            Ok(()) => {}
            Err(IommuError::Timeout) => return Err(InitError::Timeout("initial invalidation")),
            Err(IommuError::Refused) => return Err(InitError::CommandError(queue::cmdq_err(regs.cmdq_cons.get()))),
        }

        regs.eventq_base.set(queue::base(self.eventq.page.raw(), self.eventq.log2));
        self.page1.eventq_prod.set(0);
        self.page1.eventq_cons.set(0);
        self.set_cr0(cr0::CMDQEN | cr0::EVENTQEN).map_err(|_| InitError::Timeout("event queue enable"))?;
        self.set_cr0(cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN).map_err(|_| InitError::Timeout("SMMU enable"))?;
        Ok(())
    }

    /// The decoded identification registers.
    #[must_use]
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// The stage the unit's domains use.
    #[must_use]
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// StreamID bits the stream table covers: requester ids from
    /// `1 << sid_bits()` up are refused.
    #[must_use]
    pub fn sid_bits(&self) -> u32 {
        self.sid_bits
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The stream table (level 1 when 2-level), host-physical.
    #[must_use]
    pub fn stream_table(&self) -> Hpa {
        match &self.strtab {
            StreamTable::Linear(t) => *t,
            StreamTable::TwoLevel { l1, .. } => *l1,
        }
    }

    /// Whether the stream table is 2-level.
    #[must_use]
    pub fn two_level(&self) -> bool {
        matches!(self.strtab, StreamTable::TwoLevel { .. })
    }

    /// Events drained since the last call, raw, oldest first.
    pub fn take_raw_events(&mut self) -> Vec<RawEvent> {
        core::mem::take(&mut self.recent)
    }

    /// Domain tag `rid` translates through, `None` when blocked.
    #[must_use]
    pub fn domain_of(&self, rid: u32) -> Option<u32> {
        self.attached.get(&rid).map(|a| u32::from(a.tag))
    }

    fn wait<T>(&mut self, done: impl FnMut() -> Option<T>) -> Result<T, IommuError> {
        match wait_for(&self.clock, WAIT_US, done) {
            Ok(v) => {
                self.stats.waits += 1;
                Ok(v)
            }
            Err(_) => {
                self.stats.timeouts += 1;
                log::error!("smmuv3: hardware wait timed out");
                Err(IommuError::Timeout)
            }
        }
    }

    /// Write CR0 and wait until CR0ACK shows it.
    fn set_cr0(&mut self, value: u32) -> Result<(), IommuError> {
        let regs = self.regs;
        regs.cr0.set(value);
        self.wait(|| (regs.cr0ack.get() & cr0::KNOWN == value).then_some(()))
    }

    /// Queue `cmds` and a CMD_SYNC, and wait until the SMMU consumed them
    /// all. A command the SMMU rejects (GERROR.CMDQ_ERR) is replaced by a
    /// CMD_SYNC and the error acknowledged, so the rest still runs; the
    /// result is then `Refused`.
    fn issue(&mut self, cmds: &[Command]) -> Result<(), IommuError> {
        let per_batch = (self.cmdq.len() - 1) as usize;
        let mut refused = false;
        for chunk in cmds.chunks(per_batch.max(1)) {
            match self.issue_batch(chunk) {
                Ok(()) => {}
                Err(IommuError::Refused) => refused = true,
                Err(e) => return Err(e),
            }
        }
        if cmds.is_empty() {
            self.issue_batch(&[])?;
        }
        if refused { Err(IommuError::Refused) } else { Ok(()) }
    }

    fn issue_batch(&mut self, cmds: &[Command]) -> Result<(), IommuError> {
        for c in cmds {
            match c {
                Command::CfgiSte { .. } | Command::CfgiAll | Command::CfgiCdAll { .. } => self.stats.config_invalidations += 1,
                Command::TlbiNhVa { range: Some(_), .. } | Command::TlbiS2Ipa { range: Some(_), .. } => self.stats.tlbi_range += 1,
                Command::TlbiNhVa { .. } | Command::TlbiS2Ipa { .. } => self.stats.tlbi_leaf += 1,
                Command::TlbiNhAsid { .. } | Command::TlbiS12Vmall { .. } => self.stats.tlbi_domain += 1,
                _ => {}
            }
        }
        let regs = self.regs;
        let q = self.cmdq;
        let need = cmds.len() as u32 + 1;
        // Everything earlier was waited for, so the queue only lacks room
        // after a timeout: wait (bounded) for the SMMU to catch up.
        self.wait(|| (q.used(q.index, regs.cmdq_cons.get()) + need <= q.len()).then_some(()))?;
        let table = self.mem.table(q.page);
        let mut prod = q.index;
        for c in cmds.iter().chain(core::iter::once(&Command::Sync(self.sync))) {
            let w = c.encode();
            let slot = 2 * q.slot(prod);
            table[slot].store(w[0], Ordering::Relaxed);
            table[slot + 1].store(w[1], Ordering::Relaxed);
            self.mem.sync_entries(q.page, slot, 2);
            prod = (prod + 1) & q.mask();
        }
        self.stats.commands += u64::from(need);
        self.stats.syncs += 1;
        fence(Ordering::SeqCst);
        regs.cmdq_prod.set(prod);
        self.cmdq.index = prod;

        let mut refused = false;
        // Each rejected command stops the queue once; there are at most
        // `need` of them.
        for _ in 0..=need {
            let outcome = wait_for(&self.clock, WAIT_US, || {
                if regs.cmdq_cons.get() & q.mask() == prod {
                    return Some(true);
                }
                ((regs.gerror.get() ^ regs.gerrorn.get()) & gerror::CMDQ_ERR != 0).then_some(false)
            });
            match outcome {
                Ok(true) => {
                    self.stats.waits += 1;
                    return if refused { Err(IommuError::Refused) } else { Ok(()) };
                }
                Ok(false) => {
                    refused = true;
                    self.skip_bad_command();
                }
                Err(_) => {
                    self.stats.timeouts += 1;
                    log::error!("smmuv3: CMD_SYNC timed out (prod {prod:#x}, cons {:#x})", regs.cmdq_cons.get());
                    return Err(IommuError::Timeout);
                }
            }
        }
        Err(IommuError::Refused)
    }

    /// The SMMU stopped at the command CMDQ_CONS points at: overwrite it
    /// with a CMD_SYNC and acknowledge CMDQ_ERR, so it carries on from
    /// there (Linux's `arm_smmu_cmdq_skip_err`).
    fn skip_bad_command(&mut self) {
        let regs = self.regs;
        let cons = regs.cmdq_cons.get();
        let slot = 2 * self.cmdq.slot(cons);
        let table = self.mem.table(self.cmdq.page);
        let bad = [table[slot].load(Ordering::Relaxed), table[slot + 1].load(Ordering::Relaxed)];
        log::error!("smmuv3: command {bad:#x?} rejected (CMDQ_CONS.ERR {})", queue::cmdq_err(cons));
        let sync = Command::Sync(self.sync).encode();
        table[slot].store(sync[0], Ordering::Relaxed);
        table[slot + 1].store(sync[1], Ordering::Relaxed);
        self.mem.sync_entries(self.cmdq.page, slot, 2);
        fence(Ordering::SeqCst);
        let g = regs.gerror.get();
        regs.gerrorn.set((regs.gerrorn.get() & !gerror::CMDQ_ERR) | (g & gerror::CMDQ_ERR));
        self.stats.command_errors += 1;
        self.stats.global_errors += 1;
    }

    /// Acknowledge global errors other than CMDQ_ERR (the command path
    /// handles that one).
    fn service_global_errors(&mut self) {
        let regs = self.regs;
        let pending = (regs.gerror.get() ^ regs.gerrorn.get()) & gerror::ALL & !gerror::CMDQ_ERR;
        if pending == 0 {
            return;
        }
        if pending & gerror::EVENTQ_ABT_ERR != 0 {
            // An event could not be written. QEMU signals a full event
            // queue this way (hardware sets EVENTQ_PROD.OVFLG instead):
            // either way events were lost.
            log::warn!("smmuv3: event queue write aborted (queue full?): events lost");
            self.stats.event_overflows += 1;
        }
        if pending & !gerror::EVENTQ_ABT_ERR != 0 {
            log::error!("smmuv3: global error {pending:#x}");
        }
        self.stats.global_errors += u64::from(pending.count_ones());
        regs.gerrorn.set(regs.gerrorn.get() ^ pending);
    }

    fn sid(&self, rid: u32) -> Result<u32, IommuError> {
        if u64::from(rid) >> self.sid_bits != 0 {
            return Err(IommuError::Refused);
        }
        Ok(rid)
    }

    fn tag(&self, tag: u32) -> Result<u16, IommuError> {
        if tag == 0 || tag > self.info.max_domains {
            return Err(IommuError::Refused);
        }
        Ok(tag as u16)
    }

    /// The page and first word of `sid`'s STE, and whether a level-1
    /// descriptor was just made valid for it (the first CFGI_STE then
    /// has Leaf clear).
    fn ste_slot(&mut self, sid: u32) -> Result<(Hpa, usize, bool), IommuError> {
        match &mut self.strtab {
            StreamTable::Linear(t) => Ok((*t, 8 * sid as usize, false)),
            StreamTable::TwoLevel { l1, l2 } => {
                let i = sid >> STE_PAGE_LOG2;
                let slot = 8 * (sid & ((1 << STE_PAGE_LOG2) - 1)) as usize;
                if let Some(t) = l2.get(&i) {
                    return Ok((*t, slot, false));
                }
                let t = self.mem.alloc_table().ok_or(IommuError::Refused)?;
                let l1 = *l1;
                l2.insert(i, t);
                // A zeroed level-2 table: every STE invalid (C_BAD_STE).
                self.mem.table(l1)[i as usize].store(desc::l1_desc(t.raw(), (STE_PAGE_LOG2 + 1) as u8), Ordering::Release);
                self.mem.sync_entries(l1, i as usize, 1);
                Ok((t, slot, true))
            }
        }
    }

    fn read_ste(&self, page: Hpa, slot: usize) -> [u64; 4] {
        let t = self.mem.table(page);
        core::array::from_fn(|k| t[slot + k].load(Ordering::Relaxed))
    }

    /// Store `words` (all or only the first) of an STE, visible to the SMMU.
    fn store(&self, page: Hpa, slot: usize, words: &[u64]) {
        let t = self.mem.table(page);
        for (k, w) in words.iter().enumerate() {
            t[slot + k].store(*w, Ordering::Relaxed);
        }
        self.mem.sync_entries(page, slot, words.len());
        fence(Ordering::SeqCst);
    }

    /// What invalidates a domain's TLB entries.
    fn domain_tlbi(&self, tag: u16) -> Command {
        match self.stage {
            Stage::Two => Command::TlbiS12Vmall { vmid: tag },
            Stage::One => Command::TlbiNhAsid { asid: tag },
        }
    }

    fn by_address(&self, tag: u16, addr: u64, leaf: bool, range: Option<desc::Range>) -> Command {
        match self.stage {
            Stage::Two => Command::TlbiS2Ipa { vmid: tag, addr, leaf, range },
            Stage::One => Command::TlbiNhVa { asid: tag, addr, leaf, range },
        }
    }

    /// The context descriptor of stage-1 domain `tag` with tables at
    /// `root`, written on first use. A CD no StreamID uses any more may be
    /// rewritten in place: every StreamID that left it had its CDs
    /// invalidated (CFGI_CD_ALL).
    fn context_descriptor(&mut self, tag: u16, root: Hpa) -> Result<u64, IommuError> {
        let DomainFormat::ArmStage1(f) = self.info.format else { return Err(IommuError::Refused) };
        let cd = desc::context_descriptor(&Stage1 {
            asid: tag,
            t0sz: f.t0sz(),
            ips: ps_code(f.geometry().output_bits),
            attrs: self.attrs,
            ttb: root.raw(),
            mair: u64::from(MAIR_NORMAL_WB) << (8 * f.attr_index()),
        });
        let slot = match self.cds.get(&tag) {
            Some(s) if s.root == root => return Ok(s.page.raw() + (s.index * desc::CD_BYTES) as u64),
            Some(s) if s.users > 0 => return Err(IommuError::Refused),
            Some(s) => *s,
            None => {
                if self.free_cds.is_empty() {
                    let page = self.mem.alloc_table().ok_or(IommuError::Refused)?;
                    self.free_cds.extend((0..CDS_PER_PAGE).rev().map(|i| (page, i)));
                }
                let (page, index) = self.free_cds.pop().ok_or(IommuError::Refused)?;
                CdSlot { page, index, root, users: 0 }
            }
        };
        let w = slot.index * desc::CD_BYTES / 8;
        // Invalid first, the rest, then the word holding V.
        self.store(slot.page, w, &[0]);
        self.store(slot.page, w + 1, &cd[1..]);
        self.store(slot.page, w, &cd[..1]);
        self.cds.insert(tag, CdSlot { root, ..slot });
        Ok(slot.page.raw() + (slot.index * desc::CD_BYTES) as u64)
    }

    fn forget(&mut self, sid: u32) {
        if let Some(old) = self.attached.remove(&sid)
            && let Some(cd) = self.cds.get_mut(&old.tag)
            && self.stage == Stage::One
        {
            cd.users = cd.users.saturating_sub(1);
        }
    }

    /// Commands after `sid` left domain `old`: its configuration caches
    /// (the CDs too for stage 1) and the old domain's TLB entries.
    fn left(&self, sid: u32, leaf: bool, old: Option<Attached>, into: &mut Vec<Command>) {
        into.push(Command::CfgiSte { sid, leaf });
        if self.stage == Stage::One {
            into.push(Command::CfgiCdAll { sid });
        }
        if let Some(old) = old {
            into.push(self.domain_tlbi(old.tag));
        }
    }
}

impl<M: TableMemory, C: Clock> Iommu for SmmuV3Unit<M, C> {
    fn info(&self) -> &UnitInfo {
        &self.info
    }

    fn attach(&mut self, rid: u32, domain: &Domain) -> Result<(), IommuError> {
        let sid = self.sid(rid)?;
        let tag = self.tag(domain.tag)?;
        if domain.format != self.info.format || !domain.root.is_aligned(4096) {
            return Err(IommuError::Refused);
        }
        let want = Attached { tag, root: domain.root };
        if self.attached.get(&sid) == Some(&want) {
            return Ok(());
        }
        let (page, slot, fresh) = self.ste_slot(sid)?;
        let mut leaf = !fresh;
        let cur = self.read_ste(page, slot);
        // An STE is four words the SMMU may fetch at any time: a
        // translating one is first turned into an abort STE (the device
        // faults meanwhile, it never reaches anything else), then the
        // other words are written, then the word with V and Config.
        if cur[0] & desc::STE_V != 0 && desc::ste_config(cur[0]) != desc::config::ABORT {
            self.store(page, slot, &desc::ste_abort()[..1]);
            let old = self.attached.get(&sid).copied();
            self.forget(sid);
            let mut cmds = Vec::new();
            self.left(sid, leaf, old, &mut cmds);
            self.issue(&cmds)?;
            leaf = true;
        }
        let new = match (self.stage, self.info.format) {
            (Stage::Two, DomainFormat::ArmStage2(f)) => desc::ste_stage2(&Stage2 {
                vmid: tag,
                t0sz: f.t0sz(),
                sl0: f.sl0(),
                ps: ps_code(f.geometry().output_bits),
                attrs: self.attrs,
                ttb: domain.root.raw(),
            }),
            (Stage::One, DomainFormat::ArmStage1(_)) => desc::ste_stage1(self.context_descriptor(tag, domain.root)?, self.attrs),
            _ => return Err(IommuError::Refused),
        };
        self.store(page, slot + 1, &new[1..]);
        self.issue(&[Command::CfgiSte { sid, leaf }])?;
        self.store(page, slot, &new[..1]);
        self.forget(sid);
        self.attached.insert(sid, want);
        if self.stage == Stage::One
            && let Some(cd) = self.cds.get_mut(&tag)
        {
            cd.users += 1;
        }
        let mut cmds = alloc::vec![Command::CfgiSte { sid, leaf: true }];
        if self.stage == Stage::One {
            cmds.push(Command::CfgiCdAll { sid });
        }
        self.issue(&cmds)
    }

    fn block(&mut self, rid: u32) -> Result<(), IommuError> {
        let sid = self.sid(rid)?;
        let (page, slot, fresh) = self.ste_slot(sid)?;
        let cur = self.read_ste(page, slot);
        if !fresh && cur[0] == desc::ste_abort()[0] {
            return Ok(());
        }
        self.store(page, slot, &desc::ste_abort()[..1]);
        let old = self.attached.get(&sid).copied();
        self.forget(sid);
        let mut cmds = Vec::new();
        self.left(sid, !fresh, old, &mut cmds);
        self.issue(&cmds)
    }

    fn flush(&mut self, flush: &Flush) -> Result<(), IommuError> {
        let tag = self.tag(flush.tag)?;
        let leaf = !flush.tables;
        let cmds: Vec<Command> = match flush.range {
            None => alloc::vec![self.domain_tlbi(tag)],
            Some((_, 0)) => return Ok(()),
            Some((iova, len)) if self.caps.ril => {
                // TTL: the Arm level of the leaves when only leaves of one
                // size went (level 0 here is Arm level 3), else unknown.
                let ttl = if leaf && flush.leaf_levels.count_ones() == 1 && flush.leaf_levels < 8 {
                    3 - flush.leaf_levels.trailing_zeros() as u8
                } else {
                    0
                };
                desc::range_commands(iova.raw(), len, ttl).into_iter().map(|(a, r)| self.by_address(tag, a, leaf, Some(r))).collect()
            }
            Some((iova, len)) => {
                // One command per leaf of the smallest size removed.
                let level = if flush.leaf_levels == 0 { 0 } else { flush.leaf_levels.trailing_zeros().min(2) };
                match desc::leaf_addresses(iova.raw(), len, level_shift(level), MAX_LEAF_COMMANDS) {
                    Some(addrs) => addrs.into_iter().map(|a| self.by_address(tag, a, leaf, None)).collect(),
                    None => alloc::vec![self.domain_tlbi(tag)],
                }
            }
        };
        self.issue(&cmds)
    }

    fn mapped(&mut self, tag: u32, iova: Iova, len: u64) -> Result<(), IommuError> {
        // The SMMU caches no invalid entries: nothing to do.
        let _ = (iova, len);
        self.tag(tag).map(|_| ())
    }

    fn drain_faults(&mut self, sink: &mut dyn FnMut(UnitFault)) {
        self.service_global_errors();
        let q = self.eventq;
        let prod_reg = self.page1.eventq_prod.get();
        let prod = prod_reg & q.mask();
        let mut cons = q.index;
        let table = self.mem.table(q.page);
        // One pass: at most a queue's worth; later events wait for the
        // next poll.
        let mut n = 0;
        while cons != prod && n < q.len() {
            let at = 4 * q.slot(cons);
            let ev = RawEvent { words: core::array::from_fn(|k| table[at + k].load(Ordering::Acquire)) };
            cons = (cons + 1) & q.mask();
            n += 1;
            self.stats.events += 1;
            if self.recent.len() < RAW_KEEP {
                self.recent.push(ev);
            }
            sink(UnitFault { rid: ev.sid(), iova: ev.input_addr(), reason: ev.core_reason(), flags: ev.core_flags() });
        }
        self.eventq.index = cons;
        let overflow = prod_reg & queue::OVERFLOW;
        if overflow != self.overflow_ack {
            // Events were lost while the queue was full.
            self.stats.event_overflows += 1;
            self.overflow_ack = overflow;
            log::warn!("smmuv3: event queue overflowed");
        }
        self.page1.eventq_cons.set(cons | self.overflow_ack);
    }
}
