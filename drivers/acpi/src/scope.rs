//! Which remapping unit and which reserved regions apply to a PCI device
//! (VT-d 8.3.1 and 8.4).
//!
//! Device scopes name devices by a path from a start bus, not by bus number,
//! because bus numbers are assigned at enumeration. Resolving a path needs
//! the secondary bus of each bridge on it, and a sub-hierarchy scope needs
//! its bridge's subordinate bus too; the caller supplies both through a
//! callback (the PCI driver reads them from the bridges' configuration
//! space), so this crate never touches PCI itself.

use alloc::vec::Vec;
use core::fmt;

use crate::{DeviceScope, Dmar, ScopeKind};

/// A PCI bus/device/function within a segment.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub dev: u8,
    /// Function number (0..8).
    pub func: u8,
}

impl Bdf {
    /// `bus:dev.func` (`dev` and `func` are masked to 5 and 3 bits).
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        Self {
            bus,
            dev: dev & 0x1f,
            func: func & 0x7,
        }
    }

    /// The 16-bit requester id: bus << 8 | dev << 3 | func.
    pub const fn rid(self) -> u16 {
        (self.bus as u16) << 8 | (self.dev as u16) << 3 | self.func as u16
    }

    /// The device with requester id `rid`.
    pub const fn from_rid(rid: u16) -> Self {
        Self::new((rid >> 8) as u8, (rid >> 3) as u8, rid as u8)
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The bus range behind a PCI-PCI bridge, from its type 1 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeBuses {
    /// Secondary bus: the bus directly behind the bridge.
    pub secondary: u8,
    /// Subordinate bus: the highest bus behind the bridge.
    pub subordinate: u8,
}

impl DeviceScope {
    /// Follow this scope's path to the device it names: start on
    /// `start_bus`; for every path entry but the last, look up that bridge's
    /// secondary bus with `bridges(segment, bridge)` and continue there; the
    /// last entry on the bus reached is the device.
    ///
    /// `None` when a bridge on the way is absent or not a bridge (`bridges`
    /// returned `None`), or is not configured sanely (secondary bus not above
    /// the bridge's own bus, subordinate below secondary).
    pub fn resolve(
        &self,
        segment: u16,
        bridges: &impl Fn(u16, Bdf) -> Option<BridgeBuses>,
    ) -> Option<Bdf> {
        let (last, hops) = self.path.split_last()?;
        let mut bus = self.start_bus;
        for hop in hops {
            bus = checked_bridge(segment, Bdf::new(bus, hop.dev, hop.func), bridges)?.secondary;
        }
        Some(Bdf::new(bus, last.dev, last.func))
    }

    /// How this scope covers `device` of `segment`, if it does: a PCI
    /// endpoint scope only its own device; a PCI sub-hierarchy scope its
    /// bridge and every bus from the bridge's secondary to its subordinate.
    /// Other scope kinds (I/O APIC, HPET, ACPI namespace) cover no PCI
    /// device. The scope's structure decides which segment it is in.
    pub fn covers(
        &self,
        segment: u16,
        device: Bdf,
        bridges: &impl Fn(u16, Bdf) -> Option<BridgeBuses>,
    ) -> Option<Coverage> {
        if !matches!(
            self.kind,
            ScopeKind::PciEndpoint | ScopeKind::PciSubHierarchy
        ) {
            return None;
        }
        let target = self.resolve(segment, bridges)?;
        if target == device {
            return Some(Coverage::Exact);
        }
        if self.kind != ScopeKind::PciSubHierarchy {
            return None;
        }
        let buses = checked_bridge(segment, target, bridges)?;
        (buses.secondary..=buses.subordinate)
            .contains(&device.bus)
            .then_some(Coverage::Below {
                buses: u16::from(buses.subordinate) - u16::from(buses.secondary) + 1,
            })
    }
}

/// How a device scope covers a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coverage {
    /// The scope names the device itself.
    Exact,
    /// The device is below the scope's bridge, which spans `buses` buses.
    Below {
        /// Number of buses behind the bridge (narrower is more specific).
        buses: u16,
    },
}

/// `bridges(segment, bridge)`, if the answer is a sane bridge.
fn checked_bridge(
    segment: u16,
    bridge: Bdf,
    bridges: &impl Fn(u16, Bdf) -> Option<BridgeBuses>,
) -> Option<BridgeBuses> {
    let buses = bridges(segment, bridge)?;
    (buses.secondary > bridge.bus && buses.subordinate >= buses.secondary).then_some(buses)
}

impl Dmar {
    /// Index into [`Dmar::drhds`] of the unit that translates DMA from
    /// `device` of `segment`, following VT-d 8.3: a unit without
    /// INCLUDE_PCI_ALL of that segment whose device scope covers the device
    /// (an endpoint scope naming it, a sub-hierarchy scope naming it or a
    /// bridge above it), else the segment's INCLUDE_PCI_ALL unit, else
    /// `None` (the device is not behind any remapping unit).
    ///
    /// If several scopes cover the device (a firmware error), a scope naming
    /// the device wins over a bridge scope, a narrower bridge over a wider
    /// one, and then the unit listed first. The INCLUDE_PCI_ALL unit only
    /// applies when no explicit scope does, wherever it is listed.
    ///
    /// DMA aliases (devices behind a PCIe-to-PCI bridge using the bridge's
    /// requester id) are the PCI driver's business: ask for the alias too.
    pub fn unit_for(
        &self,
        segment: u16,
        device: Bdf,
        bridges: &impl Fn(u16, Bdf) -> Option<BridgeBuses>,
    ) -> Option<usize> {
        let explicit = self
            .drhds
            .iter()
            .enumerate()
            .filter(|(_, d)| d.segment == segment && !d.include_pci_all())
            .filter_map(|(i, d)| {
                let best = d
                    .scopes
                    .iter()
                    .filter_map(|s| s.covers(segment, device, bridges))
                    .min()?;
                Some((best, i))
            })
            .min();
        if let Some((_, i)) = explicit {
            return Some(i);
        }
        self.drhds
            .iter()
            .position(|d| d.segment == segment && d.include_pci_all())
    }

    /// The reserved memory regions `(base, limit inclusive)` that `device`
    /// of `segment` uses, in table order: every RMRR of that segment with a
    /// device scope covering the device (naming it, or, for a sub-hierarchy
    /// scope, a bridge above it). These must stay identity-mapped for the
    /// device while it is attached.
    pub fn rmrrs_for(
        &self,
        segment: u16,
        device: Bdf,
        bridges: &impl Fn(u16, Bdf) -> Option<BridgeBuses>,
    ) -> Vec<(u64, u64)> {
        self.rmrrs
            .iter()
            .filter(|r| {
                r.segment == segment
                    && r.scopes
                        .iter()
                        .any(|s| s.covers(segment, device, bridges).is_some())
            })
            .map(|r| (r.base, r.limit))
            .collect()
    }
}
