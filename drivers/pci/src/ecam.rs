//! PCIe enhanced configuration access (ECAM): each function's 4 KiB of
//! configuration space is a window of memory-mapped registers.

use core::ptr;

use pci_types::{ConfigRegionAccess, PciAddress};

/// Bytes of ECAM window per bus (32 devices x 8 functions x 4 KiB).
pub const BYTES_PER_BUS: usize = 1 << 20;

/// Bytes of configuration space per function.
pub const CONFIG_SPACE_LEN: u16 = 4096;

/// A mapped ECAM window covering buses `bus_start..=bus_end` of one segment.
///
/// The window's first byte is the configuration space of
/// `bus_start:00.0`, so function `bus:dev.fn` lives at
/// `base_va + ((bus - bus_start) << 20 | dev << 15 | fn << 12)`.
///
/// Accesses are 32-bit and volatile. An address outside the window (another
/// segment, a bus outside the range, an offset past 4 KiB or not 4-byte
/// aligned) reads as all-ones, like an absent function, and a write to it
/// is dropped: the window is never left.
#[derive(Debug)]
pub struct Ecam {
    base_va: usize,
    segment: u16,
    bus_start: u8,
    bus_end: u8,
}

impl Ecam {
    /// An accessor for the ECAM window of `segment`, buses
    /// `bus_start..=bus_end`, mapped at `base_va`.
    ///
    /// With ACPI the MCFG entry's base address is that of bus 0, not of its
    /// start bus: map the range [`Ecam::mcfg_window`] gives. With a device
    /// tree (`pci-host-ecam-generic`) the `reg` already starts at the first
    /// bus of `bus-range`.
    ///
    /// # Safety
    ///
    /// `base_va .. base_va + Ecam::window_len(bus_start, bus_end)` must be
    /// mapped, as device (uncached) memory, to exactly that ECAM window, and
    /// stay mapped for the life of the returned value and everything that
    /// borrows it. Nothing may use the range as ordinary memory meanwhile.
    ///
    /// # Panics
    ///
    /// If `bus_end < bus_start` or `base_va` is not 4 KiB aligned.
    #[must_use]
    pub unsafe fn new(base_va: usize, segment: u16, bus_start: u8, bus_end: u8) -> Self {
        assert!(bus_start <= bus_end, "ECAM bus range {bus_start}..={bus_end} is empty");
        assert!(base_va % 4096 == 0, "ECAM window at {base_va:#x} is not page aligned");
        Self { base_va, segment, bus_start, bus_end }
    }

    /// Length in bytes of the ECAM window of buses `bus_start..=bus_end`.
    #[must_use]
    pub const fn window_len(bus_start: u8, bus_end: u8) -> usize {
        (bus_end as usize + 1 - bus_start as usize) * BYTES_PER_BUS
    }

    /// The physical range (start, length) to map for an ACPI MCFG entry
    /// whose base address (that of bus 0) is `mcfg_base`.
    #[must_use]
    pub const fn mcfg_window(mcfg_base: u64, bus_start: u8, bus_end: u8) -> (u64, usize) {
        (mcfg_base + (bus_start as u64) * BYTES_PER_BUS as u64, Self::window_len(bus_start, bus_end))
    }

    /// Virtual address of the window.
    #[must_use]
    pub fn base_va(&self) -> usize {
        self.base_va
    }

    /// The PCI segment (ACPI segment group) this window serves.
    #[must_use]
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// First bus of the window.
    #[must_use]
    pub fn bus_start(&self) -> u8 {
        self.bus_start
    }

    /// Last bus of the window (inclusive).
    #[must_use]
    pub fn bus_end(&self) -> u8 {
        self.bus_end
    }

    /// Byte offset into the window of a register, or `None` when the
    /// address lies outside it.
    fn window_offset(&self, address: PciAddress, offset: u16) -> Option<usize> {
        let bus = address.bus();
        if address.segment() != self.segment || bus < self.bus_start || bus > self.bus_end || offset >= CONFIG_SPACE_LEN || offset % 4 != 0
        {
            return None;
        }
        let bus_index = usize::from(bus - self.bus_start);
        Some(bus_index << 20 | usize::from(address.device()) << 15 | usize::from(address.function()) << 12 | usize::from(offset))
    }
}

impl ConfigRegionAccess for Ecam {
    unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
        let Some(off) = self.window_offset(address, offset) else {
            return u32::MAX;
        };
        let reg = ptr::with_exposed_provenance::<u32>(self.base_va + off);
        // SAFETY: `off` is a 4-byte aligned offset inside the window (checked
        // by window_offset), which `Ecam::new`'s caller promised is mapped
        // device memory for as long as `self` lives.
        unsafe { reg.read_volatile() }
    }

    unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
        let Some(off) = self.window_offset(address, offset) else {
            return;
        };
        let reg = ptr::with_exposed_provenance_mut::<u32>(self.base_va + off);
        // SAFETY: as in `read`: an aligned register inside the mapped window.
        unsafe { reg.write_volatile(value) }
    }
}
