//! One VT-d unit (DRHD) as an [`Iommu`].

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use sluice_kernel::abi::{VtdHwInfo, fault_reason, hw_info_type};
use sluice_kernel::iommu::{Domain, DomainFormat, Flush, HwInfo, Iommu, IommuError, UnitFault, UnitInfo};
use sluice_kernel::pt::{TableMemory, VtdSecondLevel};
use sluice_kernel::time::{Clock, wait_for};
use sluice_kernel::{Hpa, Iova};
use tock_registers::interfaces::{Readable, Writeable};
use zerocopy::IntoBytes;

use crate::caps::Caps;
use crate::desc::{self, ContextScope, IotlbScope, Words};
use crate::regs::{self, FaultRecordRegs, IotlbRegs, Regs, fsts, gcmd};

/// Longest any single hardware wait may take before it is reported as a
/// timeout (the spec gives no bound; real units answer in microseconds,
/// QEMU's TCG in well under a millisecond).
pub const WAIT_US: u64 = 100_000;

/// Descriptors in the invalidation queue (one 4 KiB page of 128-bit
/// descriptors, IQA.QS = 0).
const QUEUE_LEN: usize = 256;

/// Why a unit could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The unit lacks something the driver needs.
    Unsupported(&'static str),
    /// No memory for the root table or the queue.
    NoMemory,
    /// A GCMD operation did not show in GSTS in time.
    Timeout(&'static str),
}

/// What the driver did, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Context-cache invalidations issued.
    pub context_invalidations: u64,
    /// IOTLB invalidations, by granularity.
    pub iotlb_global: u64,
    /// Domain-selective IOTLB invalidations.
    pub iotlb_domain: u64,
    /// Page-selective IOTLB invalidations.
    pub iotlb_pages: u64,
    /// Completed waits (wait descriptors or register polls).
    pub waits: u64,
    /// Fault records read and cleared.
    pub faults: u64,
    /// Times the primary fault overflow bit was found set (faults lost).
    pub overflows: u64,
    /// Bounded waits that expired.
    pub timeouts: u64,
    /// Invalidation queue errors seen.
    pub queue_errors: u64,
}

/// A fault as the unit recorded it, before translation into the core's
/// terms (kept for reports and the QEMU self-test).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFault {
    /// Source id (requester id).
    pub sid: u16,
    /// VT-d fault reason code.
    pub reason: u8,
    /// Page address of the faulting request.
    pub addr: u64,
    /// The request was a read.
    pub read: bool,
}

impl RawFault {
    /// The core's fault reason for a VT-d reason code. Reasons 5 and 6
    /// (no write / no read permission) are also what a not-present leaf
    /// gives; the core tells the two apart by its own tables.
    #[must_use]
    pub fn core_reason(&self) -> u32 {
        match self.reason {
            1 | 2 | 4 => fault_reason::NOT_PRESENT,
            5 => fault_reason::WRITE_TO_READ_ONLY,
            6 => fault_reason::READ_FROM_WRITE_ONLY,
            _ => fault_reason::OTHER,
        }
    }
}

struct Queue {
    page: Hpa,
    /// Where wait descriptors have the unit write their status.
    status: Hpa,
    tail: usize,
    seq: u32,
}

enum Op {
    Context(ContextScope),
    Iotlb(IotlbScope),
}

/// A VT-d remapping unit driven in legacy mode: root and context tables,
/// second-level tables from the core's engine, queued (or register-based)
/// invalidation, polled fault recording.
pub struct VtdUnit<M: TableMemory, C: Clock> {
    regs: &'static Regs,
    iotlb: &'static IotlbRegs,
    frcd: &'static [FaultRecordRegs],
    caps: Caps,
    format: VtdSecondLevel,
    info: UnitInfo,
    mem: M,
    clock: C,
    root: Hpa,
    context_tables: [Option<Hpa>; 256],
    queue: Option<Queue>,
    /// Requesters with a present context entry, and its domain id.
    attached: BTreeMap<u16, u16>,
    stats: Stats,
    recent: Vec<RawFault>,
}

impl<M: TableMemory, C: Clock> core::fmt::Debug for VtdUnit<M, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VtdUnit").field("caps", &self.caps).field("root", &self.root).field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl<M: TableMemory, C: Clock> VtdUnit<M, C> {
    /// Take over the unit whose registers are at `base` and enable DMA
    /// remapping with every device blocked.
    ///
    /// `host_address_bits` is the DMAR table's host address width.
    ///
    /// # Safety
    ///
    /// `base` must be the virtual address of the unit's mapped register
    /// block (its DRHD register base), covering the fault recording and
    /// IOTLB registers CAP/ECAP place after it, mapped uncached and valid
    /// for the rest of the program, and nothing else may access these
    /// registers while the returned value lives.
    pub unsafe fn new(base: usize, host_address_bits: u32, mem: M, clock: C) -> Result<Self, InitError> {
        // SAFETY: the caller guarantees `base` is this unit's register
        // block, mapped for 'static and used by nobody else.
        let regs: &'static Regs = unsafe { &*(base as *const Regs) };
        let caps = Caps::decode(regs.cap.get(), regs.ecap.get());
        if caps.iotlb_offset < 0xC0 || caps.fault_offset < 0xC0 {
            return Err(Unsupported("IRO/FRO inside the fixed registers"));
        }
        // SAFETY: ECAP.IRO places the IOTLB registers inside the unit's
        // register block, which the caller guarantees is mapped.
        let iotlb: &'static IotlbRegs = unsafe { &*((base + caps.iotlb_offset) as *const IotlbRegs) };
        // SAFETY: CAP.FRO and CAP.NFR place NFR 16-byte fault recording
        // registers inside the same block.
        let frcd: &'static [FaultRecordRegs] = unsafe { core::slice::from_raw_parts((base + caps.fault_offset) as *const FaultRecordRegs, caps.fault_records) };
        Self::init(regs, iotlb, frcd, caps, host_address_bits, mem, clock)
    }

    fn init(
        regs: &'static Regs,
        iotlb: &'static IotlbRegs,
        frcd: &'static [FaultRecordRegs],
        caps: Caps,
        host_address_bits: u32,
        mut mem: M,
        clock: C,
    ) -> Result<Self, InitError> {
        // Prefer 4 levels, but not beyond MGAW: a unit that translates only
        // 39 bits gets 3-level tables even if SAGAW also offers 4, so the
        // core's aperture never exceeds what the unit accepts.
        let sagaw = if caps.mgaw < 48 { caps.sagaw & 0b10 } else { caps.sagaw };
        let format = VtdSecondLevel::from_caps(sagaw, caps.sllps, host_address_bits.min(52), caps.snoop_control)
            .map_err(|_| Unsupported("no usable 3- or 4-level second-level tables (SAGAW, MGAW)"))?;
        let hw = VtdHwInfo { flags: 0, reserved: 0, cap_reg: caps.cap, ecap_reg: caps.ecap };
        let mut data = [0u8; 40];
        data[..24].copy_from_slice(hw.as_bytes());
        let info = UnitInfo {
            format: DomainFormat::Vtd(format),
            // Domain id 0 is reserved when CAP.CM is set; never use it.
            max_domains: caps.domains.min(1 << 16) - 1,
            hw_info: HwInfo { kind: hw_info_type::INTEL_VTD, len: 24, data },
        };
        let root = mem.alloc_table().ok_or(InitError::NoMemory)?;
        let mut unit = Self {
            regs,
            iotlb,
            frcd,
            caps,
            format,
            info,
            mem,
            clock,
            root,
            context_tables: [None; 256],
            queue: None,
            attached: BTreeMap::new(),
            stats: Stats::default(),
            recent: Vec::new(),
        };
        unit.take_over()?;
        Ok(unit)
    }

    /// The VT-d 10.4 bring-up: translation and queued invalidation off
    /// (firmware may have left them on), root table, fault interrupts
    /// masked and old faults cleared, queued invalidation on, global
    /// invalidations, translation on.
    fn take_over(&mut self) -> Result<(), InitError> {
        let regs = self.regs;
        self.global_command(gcmd::TE, false).map_err(|_| InitError::Timeout("translation disable"))?;
        self.global_command(gcmd::QIE, false).map_err(|_| InitError::Timeout("queued invalidation disable"))?;
        regs.rtaddr.set(self.root.raw());
        self.global_command(gcmd::SRTP, true).map_err(|_| InitError::Timeout("set root table pointer"))?;
        regs.fectl.set(regs::FECTL_IM);
        for r in self.frcd {
            r.hi.set(regs::FRCD_F);
        }
        regs.fsts.set(fsts::PFO | fsts::IQE | fsts::ICE | fsts::ITE);
        if self.caps.queued_invalidation {
            let page = self.mem.alloc_table().ok_or(InitError::NoMemory)?;
            let status = self.mem.alloc_table().ok_or(InitError::NoMemory)?;
            regs.iqt.set(0);
            regs.iqa.set(page.raw());
            self.global_command(gcmd::QIE, true).map_err(|_| InitError::Timeout("queued invalidation enable"))?;
            self.queue = Some(Queue { page, status, tail: 0, seq: 0 });
        }
        self.run(&[Op::Context(ContextScope::Global), Op::Iotlb(IotlbScope::Global)]).map_err(|_| InitError::Timeout("global invalidation"))?;
        self.global_command(gcmd::TE, true).map_err(|_| InitError::Timeout("translation enable"))?;
        Ok(())
    }

    /// The decoded capability registers.
    #[must_use]
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// The second-level format domains on this unit use.
    #[must_use]
    pub fn format(&self) -> VtdSecondLevel {
        self.format
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The root table (host-physical).
    #[must_use]
    pub fn root_table(&self) -> Hpa {
        self.root
    }

    /// Faults drained since the last call, raw, oldest first.
    pub fn take_raw_faults(&mut self) -> Vec<RawFault> {
        core::mem::take(&mut self.recent)
    }

    /// Domain id of `rid`'s present context entry.
    #[must_use]
    pub fn domain_of(&self, rid: u16) -> Option<u16> {
        self.attached.get(&rid).copied()
    }

    /// Set (`on`) or clear a persistent GCMD bit, or issue a one-shot
    /// command, and wait until GSTS shows it.
    fn global_command(&mut self, bit: u32, on: bool) -> Result<(), IommuError> {
        let regs = self.regs;
        let status = regs.gsts.get();
        let current = status & !gcmd::ONE_SHOT;
        let one_shot = bit & gcmd::ONE_SHOT != 0;
        if !one_shot && (status & bit != 0) == on {
            return Ok(());
        }
        regs.gcmd.set(if on { current | bit } else { current & !bit });
        // One-shot commands: SRTP completes when RTPS is set, WBF when
        // WBFS is clear again.
        let want = |s: u32| match bit {
            gcmd::WBF => s & bit == 0,
            _ => (s & bit != 0) == on,
        };
        self.wait(|| want(regs.gsts.get()).then_some(()))
    }

    fn wait<T>(&mut self, done: impl FnMut() -> Option<T>) -> Result<T, IommuError> {
        match wait_for(&self.clock, WAIT_US, done) {
            Ok(v) => {
                self.stats.waits += 1;
                Ok(v)
            }
            Err(_) => {
                self.stats.timeouts += 1;
                log::error!("vt-d: hardware wait timed out");
                Err(IommuError::Timeout)
            }
        }
    }

    /// Carry out invalidations and wait for their completion.
    fn run(&mut self, ops: &[Op]) -> Result<(), IommuError> {
        for op in ops {
            match op {
                Op::Context(_) => self.stats.context_invalidations += 1,
                Op::Iotlb(IotlbScope::Global) => self.stats.iotlb_global += 1,
                Op::Iotlb(IotlbScope::Domain(_)) => self.stats.iotlb_domain += 1,
                Op::Iotlb(IotlbScope::Pages { .. }) => self.stats.iotlb_pages += 1,
            }
        }
        let (dr, dw) = (self.caps.drain_read, self.caps.drain_write);
        if self.queue.is_none() {
            let regs = self.regs;
            let iotlb = self.iotlb;
            for op in ops {
                match *op {
                    Op::Context(scope) => {
                        regs.ccmd.set(desc::ccmd(scope));
                        self.wait(|| (regs.ccmd.get() & regs::CCMD_ICC == 0).then_some(()))?;
                    }
                    Op::Iotlb(scope) => {
                        let (iva, reg) = desc::iotlb_regs(scope, dr, dw);
                        if let IotlbScope::Pages { .. } = scope {
                            iotlb.iva.set(iva);
                        }
                        iotlb.iotlb.set(reg);
                        self.wait(|| (iotlb.iotlb.get() & regs::IOTLB_IVT == 0).then_some(()))?;
                    }
                }
            }
            return Ok(());
        }
        let mut descs: Vec<Words> = ops
            .iter()
            .map(|op| match *op {
                Op::Context(scope) => desc::context_cache_desc(scope),
                Op::Iotlb(scope) => desc::iotlb_desc(scope, dr, dw),
            })
            .collect();
        let (seq, status) = {
            let q = self.queue.as_mut().expect("queue");
            q.seq = q.seq.wrapping_add(1);
            (q.seq, q.status)
        };
        descs.push(desc::wait_desc(status.raw(), seq));
        self.mem.table(status)[0].store(0, Ordering::Relaxed);
        self.submit(&descs)?;
        let regs = self.regs;
        let mem = &self.mem;
        let outcome = wait_for(&self.clock, WAIT_US, || {
            if mem.table(status)[0].load(Ordering::Acquire) as u32 == seq {
                return Some(Ok(()));
            }
            (regs.fsts.get() & fsts::IQE != 0).then_some(Err(()))
        });
        match outcome {
            Ok(Ok(())) => {
                self.stats.waits += 1;
                Ok(())
            }
            Ok(Err(())) => {
                // The unit stopped at a descriptor it rejected: drop what is
                // queued and clear the error so later requests run.
                self.stats.queue_errors += 1;
                let head = regs.iqh.get();
                if let Some(q) = self.queue.as_mut() {
                    q.tail = ((head >> 4) as usize) % QUEUE_LEN;
                }
                regs.iqt.set(head & 0x7fff0);
                regs.fsts.set(fsts::IQE);
                log::error!("vt-d: invalidation queue error at head {head:#x}");
                Err(IommuError::Refused)
            }
            Err(_) => {
                self.stats.timeouts += 1;
                log::error!("vt-d: invalidation wait timed out");
                Err(IommuError::Timeout)
            }
        }
    }

    fn submit(&mut self, descs: &[Words]) -> Result<(), IommuError> {
        let regs = self.regs;
        let (page, tail) = {
            let q = self.queue.as_ref().expect("queue");
            (q.page, q.tail)
        };
        // The queue is drained after every request, so it only lacks room
        // after a timeout; wait (bounded) for the head to move on.
        let need = descs.len();
        self.wait(|| {
            let head = ((regs.iqh.get() >> 4) as usize) % QUEUE_LEN;
            let used = (tail + QUEUE_LEN - head) % QUEUE_LEN;
            (used + need < QUEUE_LEN).then_some(())
        })?;
        let table = self.mem.table(page);
        let mut t = tail;
        for d in descs {
            table[2 * t].store(d[0], Ordering::Relaxed);
            table[2 * t + 1].store(d[1], Ordering::Relaxed);
            self.mem.sync_entries(page, 2 * t, 2);
            t = (t + 1) % QUEUE_LEN;
        }
        fence(Ordering::SeqCst);
        regs.iqt.set((t as u64) << 4);
        self.queue.as_mut().expect("queue").tail = t;
        Ok(())
    }

    /// The context table of `bus`, made (and linked from the root table)
    /// on first use.
    fn context_table(&mut self, bus: u8) -> Result<Hpa, IommuError> {
        if let Some(t) = self.context_tables[bus as usize] {
            return Ok(t);
        }
        let t = self.mem.alloc_table().ok_or(IommuError::Refused)?;
        let e = desc::root_entry(t.raw());
        let root = self.mem.table(self.root);
        root[2 * bus as usize + 1].store(e[1], Ordering::Relaxed);
        fence(Ordering::Release);
        root[2 * bus as usize].store(e[0], Ordering::Relaxed);
        self.mem.sync_entries(self.root, 2 * bus as usize, 2);
        self.context_tables[bus as usize] = Some(t);
        // A root entry went from not present to present: units with CM may
        // have cached the absence.
        self.run(&[Op::Context(ContextScope::Global)])?;
        Ok(t)
    }

    fn write_context(&self, table: Hpa, devfn: u8, e: Words) {
        let t = self.mem.table(table);
        let i = 2 * devfn as usize;
        if e[0] & 1 != 0 {
            // Present: the rest first, the present bit last.
            t[i + 1].store(e[1], Ordering::Relaxed);
            fence(Ordering::Release);
            t[i].store(e[0], Ordering::Relaxed);
        } else {
            t[i].store(e[0], Ordering::Relaxed);
            fence(Ordering::Release);
            t[i + 1].store(e[1], Ordering::Relaxed);
        }
        self.mem.sync_entries(table, i, 2);
        fence(Ordering::SeqCst);
    }

    /// Clear `rid`'s context entry and invalidate what the unit cached of
    /// it and of its domain.
    fn clear_context(&mut self, rid: u16) -> Result<(), IommuError> {
        let Some(did) = self.attached.get(&rid).copied() else {
            return Ok(());
        };
        let table = self.context_table((rid >> 8) as u8)?;
        self.write_context(table, rid as u8, [0, 0]);
        self.attached.remove(&rid);
        self.run(&[Op::Context(ContextScope::Device { did, sid: rid }), Op::Iotlb(IotlbScope::Domain(did))])
    }

    fn flush_range(&mut self, did: u16, range: Option<(Iova, u64)>, leaf_only: bool) -> Result<(), IommuError> {
        let pages = range.filter(|_| self.caps.psi).and_then(|(iova, len)| desc::covering_block(iova.raw(), len, self.caps.mamv));
        let scope = match pages {
            Some((addr, am)) => IotlbScope::Pages { did, addr, am, leaf_only },
            None => IotlbScope::Domain(did),
        };
        if self.caps.rwbf {
            self.global_command(gcmd::WBF, true)?;
        }
        self.run(&[Op::Iotlb(scope)])
    }

    fn tag(&self, tag: u32) -> Result<u16, IommuError> {
        if tag == 0 || tag > self.info.max_domains {
            return Err(IommuError::Refused);
        }
        Ok(tag as u16)
    }
}

use InitError::Unsupported;

impl<M: TableMemory, C: Clock> Iommu for VtdUnit<M, C> {
    fn info(&self) -> &UnitInfo {
        &self.info
    }

    fn attach(&mut self, rid: u32, domain: &Domain) -> Result<(), IommuError> {
        let rid = u16::try_from(rid).map_err(|_| IommuError::Refused)?;
        let did = self.tag(domain.tag)?;
        if domain.format != self.info.format {
            return Err(IommuError::Refused);
        }
        let table = self.context_table((rid >> 8) as u8)?;
        // A present entry cannot be rewritten atomically (128 bits): block
        // first, so the device never translates through a half-written
        // entry, only faults for that instant.
        self.clear_context(rid)?;
        self.write_context(table, rid as u8, desc::context_entry(domain.root.raw(), self.format.context_aw(), did));
        self.attached.insert(rid, did);
        // Not present -> present: required with CM, harmless without.
        self.run(&[Op::Context(ContextScope::Device { did, sid: rid })])
    }

    fn block(&mut self, rid: u32) -> Result<(), IommuError> {
        let rid = u16::try_from(rid).map_err(|_| IommuError::Refused)?;
        // Make the bus's context table now, so a later attach of this
        // device allocates nothing.
        self.context_table((rid >> 8) as u8)?;
        self.clear_context(rid)
    }

    fn flush(&mut self, flush: &Flush) -> Result<(), IommuError> {
        let did = self.tag(flush.tag)?;
        self.flush_range(did, flush.range, !flush.tables)
    }

    fn mapped(&mut self, tag: u32, iova: Iova, len: u64) -> Result<(), IommuError> {
        let did = self.tag(tag)?;
        if self.caps.caching_mode {
            self.flush_range(did, Some((iova, len)), true)
        } else if self.caps.rwbf {
            self.global_command(gcmd::WBF, true)
        } else {
            Ok(())
        }
    }

    fn drain_faults(&mut self, sink: &mut dyn FnMut(UnitFault)) {
        let regs = self.regs;
        let n = self.frcd.len();
        // Oldest first: the unit fills records round-robin, and FRI points
        // at the one it will fill next, which is the oldest if it is full.
        // One pass: a fault recorded meanwhile waits for the next poll.
        let start = fsts::fri(regs.fsts.get()) % n;
        for k in 0..n {
            let r = &self.frcd[(start + k) % n];
            let hi = r.hi.get();
            if hi & regs::FRCD_F == 0 {
                continue;
            }
            let lo = r.lo.get();
            // Write 1 to F: the record is free for the next fault.
            r.hi.set(regs::FRCD_F);
            let raw = RawFault { sid: hi as u16, reason: (hi >> 32) as u8, addr: lo & !0xfff, read: hi & regs::FRCD_T != 0 };
            self.stats.faults += 1;
            if self.recent.len() < 256 {
                self.recent.push(raw);
            }
            let flags = if raw.read { fault_reason::FLAG_READ } else { fault_reason::FLAG_WRITE };
            sink(UnitFault { rid: u32::from(raw.sid), iova: raw.addr, reason: raw.core_reason(), flags });
        }
        if regs.fsts.get() & fsts::PFO != 0 {
            // Faults were dropped while every record was full.
            self.stats.overflows += 1;
            regs.fsts.set(fsts::PFO);
        }
    }
}
