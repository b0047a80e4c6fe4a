//! One PCI segment (host bridge) reached through a configuration accessor:
//! raw configuration reads and writes, command register control, and the
//! bridge lookups that resolve ACPI DMAR device-scope paths.

use core::fmt;
use core::ops::RangeInclusive;

use pci_types::{CommandRegister, ConfigRegionAccess, PciHeader, PciPciBridgeHeader};

use crate::Bdf;
use crate::config;
use crate::ecam::CONFIG_SPACE_LEN;

/// Why a configuration operation on one function failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    /// The bus lies outside the segment's bus range.
    BusOutOfRange(Bdf),
    /// No function answers at this address (vendor id reads 0xffff).
    NoFunction(Bdf),
    /// The function is not a PCI-PCI bridge (header type 1).
    NotABridge(Bdf),
    /// A device-scope path with no entries.
    EmptyPath,
    /// A device-scope path entry whose device or function number is out of
    /// range.
    BadPathEntry {
        /// Device number of the entry.
        dev: u8,
        /// Function number of the entry.
        func: u8,
    },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BusOutOfRange(bdf) => write!(f, "PCI {bdf}: bus outside the segment's bus range"),
            Self::NoFunction(bdf) => write!(f, "PCI {bdf}: no function present"),
            Self::NotABridge(bdf) => write!(f, "PCI {bdf}: not a PCI-PCI bridge"),
            Self::EmptyPath => f.write_str("PCI device-scope path is empty"),
            Self::BadPathEntry { dev, func } => write!(f, "PCI device-scope path entry {dev:#x}.{func:#x} out of range"),
        }
    }
}

/// The primary, secondary and subordinate bus numbers of a PCI-PCI bridge,
/// as firmware (or nobody) programmed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeBuses {
    /// The bus the bridge sits on.
    pub primary: u8,
    /// The bus directly behind the bridge (0: not assigned).
    pub secondary: u8,
    /// The highest bus behind the bridge.
    pub subordinate: u8,
}

/// One PCI segment: a configuration accessor (normally an [`crate::Ecam`],
/// a [`crate::fake::FakeConfigSpace`] in host tests) and the range of
/// buses it serves.
///
/// Every access is checked against the bus range, so the accessor is only
/// ever asked for addresses it was built for.
#[derive(Debug)]
pub struct PciSegment<A> {
    pub(crate) access: A,
    segment: u16,
    bus_start: u8,
    bus_end: u8,
}

impl<A: ConfigRegionAccess> PciSegment<A> {
    /// A segment whose buses `bus_start..=bus_end` are reached through
    /// `access`.
    ///
    /// # Panics
    ///
    /// If `bus_end < bus_start`.
    pub fn new(access: A, segment: u16, bus_start: u8, bus_end: u8) -> Self {
        assert!(bus_start <= bus_end, "PCI bus range {bus_start}..={bus_end} is empty");
        Self { access, segment, bus_start, bus_end }
    }

    /// The configuration accessor.
    pub fn access(&self) -> &A {
        &self.access
    }

    /// The segment (ACPI segment group) number.
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// The buses of this segment.
    pub fn buses(&self) -> RangeInclusive<u8> {
        self.bus_start..=self.bus_end
    }

    /// Whether `bdf`'s bus belongs to this segment.
    pub fn contains(&self, bdf: Bdf) -> bool {
        self.buses().contains(&bdf.bus())
    }

    /// Read the 32-bit configuration register at `offset` of `bdf`.
    /// A bus outside the segment reads as all-ones (no function).
    ///
    /// # Panics
    ///
    /// If `offset` is not 4-byte aligned or not below 4096.
    pub fn read_config(&self, bdf: Bdf, offset: u16) -> u32 {
        assert!(offset % 4 == 0 && offset < CONFIG_SPACE_LEN, "bad config offset {offset:#x}");
        if !self.contains(bdf) {
            return u32::MAX;
        }
        // SAFETY: the bus is inside the range this segment's accessor was
        // built for, the device and function numbers are in range (Bdf's
        // invariant) and the offset is an aligned register of the 4 KiB
        // configuration space (asserted above).
        unsafe { self.access.read(bdf.address(self.segment), offset) }
    }

    /// Write the 32-bit configuration register at `offset` of `bdf`.
    ///
    /// # Errors
    ///
    /// [`PciError::BusOutOfRange`] when the bus is not in this segment.
    ///
    /// # Panics
    ///
    /// If `offset` is not 4-byte aligned or not below 4096.
    pub fn write_config(&self, bdf: Bdf, offset: u16, value: u32) -> Result<(), PciError> {
        assert!(offset % 4 == 0 && offset < CONFIG_SPACE_LEN, "bad config offset {offset:#x}");
        if !self.contains(bdf) {
            return Err(PciError::BusOutOfRange(bdf));
        }
        // SAFETY: as in `read_config`: an aligned register of a function
        // whose bus this accessor serves.
        unsafe { self.access.write(bdf.address(self.segment), offset, value) };
        Ok(())
    }

    fn header(&self, bdf: Bdf) -> PciHeader {
        PciHeader::new(bdf.address(self.segment))
    }

    /// Whether a function answers at `bdf` (its vendor id is not 0xffff).
    pub fn is_present(&self, bdf: Bdf) -> bool {
        self.contains(bdf) && self.header(bdf).id(&self.access).0 != 0xffff
    }

    fn present(&self, bdf: Bdf) -> Result<(), PciError> {
        if !self.contains(bdf) {
            Err(PciError::BusOutOfRange(bdf))
        } else if !self.is_present(bdf) {
            Err(PciError::NoFunction(bdf))
        } else {
            Ok(())
        }
    }

    /// The command register of `bdf`.
    ///
    /// # Errors
    ///
    /// [`PciError::BusOutOfRange`] or [`PciError::NoFunction`].
    pub fn command(&self, bdf: Bdf) -> Result<CommandRegister, PciError> {
        self.present(bdf)?;
        Ok(self.header(bdf).command(&self.access))
    }

    /// Write the command register of `bdf`, leaving the status register
    /// alone.
    ///
    /// Configuration access here is 32-bit, so the status half is written
    /// too: it is written as zero, which clears none of its
    /// write-one-to-clear error bits. (pci_types' `update_command` writes the
    /// status back as read, which clears every error bit that was set.)
    pub(crate) fn write_command(&self, bdf: Bdf, command: CommandRegister) -> Result<(), PciError> {
        self.write_config(bdf, config::COMMAND_STATUS, u32::from(command.bits()))
    }

    /// Set (`on`) or clear the given command register bits of `bdf`.
    ///
    /// # Errors
    ///
    /// [`PciError::BusOutOfRange`] or [`PciError::NoFunction`].
    pub fn update_command(&self, bdf: Bdf, bits: CommandRegister, on: bool) -> Result<(), PciError> {
        let mut command = self.command(bdf)?;
        command.set(bits, on);
        self.write_command(bdf, command)
    }

    /// Let `bdf` master the bus (issue DMA), or stop it.
    ///
    /// # Errors
    ///
    /// [`PciError::BusOutOfRange`] or [`PciError::NoFunction`].
    pub fn set_bus_master(&self, bdf: Bdf, on: bool) -> Result<(), PciError> {
        self.update_command(bdf, CommandRegister::BUS_MASTER_ENABLE, on)
    }

    /// Let `bdf` decode its memory BARs, or stop it.
    ///
    /// # Errors
    ///
    /// [`PciError::BusOutOfRange`] or [`PciError::NoFunction`].
    pub fn set_memory_space(&self, bdf: Bdf, on: bool) -> Result<(), PciError> {
        self.update_command(bdf, CommandRegister::MEMORY_ENABLE, on)
    }

    /// The bus numbers of the PCI-PCI bridge at `bdf`.
    ///
    /// # Errors
    ///
    /// [`PciError::BusOutOfRange`], [`PciError::NoFunction`] or
    /// [`PciError::NotABridge`].
    pub fn bridge_buses(&self, bdf: Bdf) -> Result<BridgeBuses, PciError> {
        self.present(bdf)?;
        let bridge = PciPciBridgeHeader::from_header(self.header(bdf), &self.access).ok_or(PciError::NotABridge(bdf))?;
        Ok(BridgeBuses {
            primary: bridge.primary_bus_number(&self.access),
            secondary: bridge.secondary_bus_number(&self.access),
            subordinate: bridge.subordinate_bus_number(&self.access),
        })
    }

    /// The secondary bus number of the PCI-PCI bridge at `bdf`.
    ///
    /// # Errors
    ///
    /// As [`PciSegment::bridge_buses`].
    pub fn secondary_bus(&self, bdf: Bdf) -> Result<u8, PciError> {
        self.bridge_buses(bdf).map(|b| b.secondary)
    }

    /// Resolve an ACPI device-scope path (DMAR DRHD/RMRR/ATSR scopes):
    /// starting on `start_bus`, every entry but the last names a bridge
    /// whose secondary bus the next entry sits on; the last names the
    /// function. The final function need not be present.
    ///
    /// # Errors
    ///
    /// [`PciError::EmptyPath`], [`PciError::BadPathEntry`], or the errors of
    /// [`PciSegment::secondary_bus`] for an intermediate entry.
    pub fn resolve_path(&self, start_bus: u8, path: &[(u8, u8)]) -> Result<Bdf, PciError> {
        let (&(last_dev, last_func), bridges) = path.split_last().ok_or(PciError::EmptyPath)?;
        let mut bus = start_bus;
        for &(dev, func) in bridges {
            let bdf = Bdf::checked_new(bus, dev, func).ok_or(PciError::BadPathEntry { dev, func })?;
            bus = self.secondary_bus(bdf)?;
        }
        Bdf::checked_new(bus, last_dev, last_func).ok_or(PciError::BadPathEntry { dev: last_dev, func: last_func })
    }

    pub(crate) fn pci_header(&self, bdf: Bdf) -> PciHeader {
        self.header(bdf)
    }
}
