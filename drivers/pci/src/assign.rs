//! BAR assignment for platforms where nobody did it (aarch64 `virt` booted
//! with `-kernel`): place memory BARs in the host bridge's MMIO windows.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use pci_types::ConfigRegionAccess;

use crate::Bdf;
use crate::config;
use crate::enumerate::{BarInfo, PciFunction};
use crate::segment::PciSegment;

/// The smallest span a BAR is given: no two functions' registers share a
/// 4 KiB page, so each can be mapped into a partition on its own.
pub const MIN_BAR_SPAN: u64 = 4096;

/// Which memory BARs [`PciSegment::assign_bars`] places.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignPolicy {
    /// Only BARs without an address; assigned BARs stay where they are and
    /// are avoided.
    UnassignedOnly,
    /// Every memory BAR on the root bus, assigned or not.
    All,
}

/// Where one BAR was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarPlacement {
    /// The function.
    pub bdf: Bdf,
    /// Its BAR slot.
    pub slot: u8,
    /// The new bus address.
    pub address: u64,
    /// The BAR's size.
    pub size: u64,
}

/// What [`PciSegment::assign_bars`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignReport {
    /// BARs given an address, in the order they were placed (largest
    /// first).
    pub placed: Vec<BarPlacement>,
    /// Unassigned memory BARs behind a PCI-PCI bridge, left alone: reaching
    /// them would need the bridge's forwarding window programmed too, which
    /// this routine does not do.
    pub behind_bridge: Vec<(Bdf, u8)>,
}

/// Why BAR assignment failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignError {
    /// No window was given.
    NoWindow,
    /// The window holds no address.
    EmptyWindow {
        /// Window start.
        start: u64,
        /// Window end (exclusive).
        end: u64,
    },
    /// No naturally aligned free space left for a BAR in any window
    /// (32-bit BARs must also end at or below 4 GiB). Nothing was written.
    NoSpace {
        /// The function.
        bdf: Bdf,
        /// Its BAR slot.
        slot: u8,
        /// The BAR's size.
        size: u64,
    },
    /// The BAR did not read back the address written to it.
    ReadBack {
        /// The function.
        bdf: Bdf,
        /// Its BAR slot.
        slot: u8,
        /// The address written.
        wrote: u64,
        /// The address read back.
        read: u64,
    },
}

impl fmt::Display for AssignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoWindow => f.write_str("no MMIO window given"),
            Self::EmptyWindow { start, end } => write!(f, "MMIO window {start:#x}..{end:#x} is empty"),
            Self::NoSpace { bdf, slot, size } => {
                write!(f, "PCI {bdf} BAR{slot}: no room for {size:#x} bytes in the MMIO windows")
            }
            Self::ReadBack { bdf, slot, wrote, read } => {
                write!(f, "PCI {bdf} BAR{slot}: wrote {wrote:#x}, read back {read:#x}")
            }
        }
    }
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

fn align_down(value: u64, align: u64) -> u64 {
    value & !(align - 1)
}

/// The first address in `start..limit` aligned to `span` where `span`
/// bytes overlap none of `occupied`.
fn first_fit(occupied: &[Range<u64>], start: u64, limit: u64, span: u64) -> Option<u64> {
    let mut at = align_up(start, span)?;
    loop {
        let end = at.checked_add(span)?;
        if end > limit {
            return None;
        }
        match occupied.iter().find(|r| r.start < end && at < r.end) {
            None => return Some(at),
            Some(r) => at = align_up(r.end, span)?,
        }
    }
}

/// The space a BAR takes: its size, at least [`MIN_BAR_SPAN`].
fn span_of(bar: &BarInfo) -> u64 {
    bar.size.max(MIN_BAR_SPAN)
}

impl<A: ConfigRegionAccess> PciSegment<A> {
    /// Give memory BARs addresses in the MMIO `windows` (`start..end`
    /// ranges, from the host bridge's device-tree `ranges`): each BAR goes
    /// into the first window, in the order given, with naturally aligned
    /// free room for it; it spans at least [`MIN_BAR_SPAN`], and a 32-bit
    /// BAR ends at or below 4 GiB. 32-bit BARs are placed before 64-bit
    /// ones, largest first. `functions` (from [`PciSegment::enumerate`])
    /// is updated to the new addresses.
    ///
    /// Only functions on the segment's first bus are placed (see
    /// [`AssignReport::behind_bridge`]); I/O BARs are left alone, and so
    /// are the command registers: turn on memory decoding with
    /// [`PciSegment::set_memory_space`] afterwards.
    ///
    /// # Errors
    ///
    /// [`AssignError::NoWindow`], [`AssignError::EmptyWindow`];
    /// [`AssignError::NoSpace`] (checked for all BARs before any is
    /// written); [`AssignError::ReadBack`].
    pub fn assign_bars(
        &self,
        functions: &mut [PciFunction],
        windows: &[Range<u64>],
        policy: AssignPolicy,
    ) -> Result<AssignReport, AssignError> {
        if windows.is_empty() {
            return Err(AssignError::NoWindow);
        }
        if let Some(w) = windows.iter().find(|w| w.start >= w.end) {
            return Err(AssignError::EmptyWindow { start: w.start, end: w.end });
        }
        let root_bus = *self.buses().start();
        let mut report = AssignReport::default();
        let mut occupied = Vec::new();
        // (function index, bar index) of the BARs to place.
        let mut todo = Vec::new();
        for (fi, function) in functions.iter().enumerate() {
            for (bi, bar) in function.bars.iter().enumerate().filter(|(_, b)| b.is_memory()) {
                let wanted = !bar.is_assigned() || policy == AssignPolicy::All;
                if wanted && function.bdf.bus() == root_bus {
                    todo.push((fi, bi));
                } else if !bar.is_assigned() {
                    report.behind_bridge.push((function.bdf, bar.slot));
                } else {
                    let start = align_down(bar.address, MIN_BAR_SPAN);
                    let end = bar.address.saturating_add(bar.size);
                    occupied.push(start..align_up(end, MIN_BAR_SPAN).unwrap_or(u64::MAX));
                }
            }
        }
        // 32-bit BARs have the tighter limit, so they choose first; largest
        // first packs naturally aligned BARs without holes.
        todo.sort_by_key(|&(fi, bi)| {
            let bar = &functions[fi].bars[bi];
            (bar.is_64bit, core::cmp::Reverse(span_of(bar)), fi, bi)
        });

        // Plan every placement before touching the hardware.
        let mut plan = Vec::with_capacity(todo.len());
        for &(fi, bi) in &todo {
            let bar = &functions[fi].bars[bi];
            let span = span_of(bar);
            let at = windows.iter().find_map(|w| {
                // Address 0 would read as "unassigned".
                let start = w.start.max(1);
                let limit = if bar.is_64bit { w.end } else { w.end.min(1 << 32) };
                first_fit(&occupied, start, limit, span)
            });
            let at = at.ok_or(AssignError::NoSpace { bdf: functions[fi].bdf, slot: bar.slot, size: bar.size })?;
            occupied.push(at..at + span);
            plan.push((fi, bi, at));
        }

        for (fi, bi, address) in plan {
            let bdf = functions[fi].bdf;
            let bar = functions[fi].bars[bi];
            self.write_bar(bdf, &bar, address)?;
            functions[fi].bars[bi].address = address;
            report.placed.push(BarPlacement { bdf, slot: bar.slot, address, size: bar.size });
        }
        Ok(report)
    }

    /// Program a memory BAR with decoding off and check it took.
    fn write_bar(&self, bdf: Bdf, bar: &BarInfo, address: u64) -> Result<(), AssignError> {
        let offset = config::bar_offset(bar.slot);
        let read = self.with_decoding_off(bdf, || {
            // The function was enumerated on a bus of this segment.
            let _ = self.write_config(bdf, offset, address as u32);
            let mut read = u64::from(self.read_config(bdf, offset) & !config::BAR_MEM_FLAGS);
            if bar.is_64bit {
                let _ = self.write_config(bdf, offset + 4, (address >> 32) as u32);
                read |= u64::from(self.read_config(bdf, offset + 4)) << 32;
            }
            read
        });
        if read == address { Ok(()) } else { Err(AssignError::ReadBack { bdf, slot: bar.slot, wrote: address, read }) }
    }
}
