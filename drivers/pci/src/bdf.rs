//! Bus/device/function numbers and the requester id derived from them.

use core::fmt;

use pci_types::PciAddress;

/// A PCI function's bus, device and function number within one segment.
///
/// The device number is below 32 and the function number below 8, so the
/// triple packs into the 16-bit requester id (`bus << 8 | dev << 3 | fn`)
/// that IOMMUs index their context and stream tables with.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bdf {
    bus: u8,
    dev: u8,
    func: u8,
}

impl Bdf {
    /// The function `bus:dev.func`.
    ///
    /// # Panics
    ///
    /// If `dev >= 32` or `func >= 8`.
    #[must_use]
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        assert!(dev < 32, "PCI device number must be below 32");
        assert!(func < 8, "PCI function number must be below 8");
        Self { bus, dev, func }
    }

    /// `Some(bus:dev.func)`, or `None` when `dev` or `func` is out of range.
    #[must_use]
    pub const fn checked_new(bus: u8, dev: u8, func: u8) -> Option<Self> {
        if dev < 32 && func < 8 { Some(Self { bus, dev, func }) } else { None }
    }

    /// The function a requester id names.
    #[must_use]
    pub const fn from_rid(rid: u16) -> Self {
        Self { bus: (rid >> 8) as u8, dev: ((rid >> 3) & 0x1f) as u8, func: (rid & 0x7) as u8 }
    }

    /// The requester id: `bus << 8 | dev << 3 | func`.
    #[must_use]
    pub const fn rid(self) -> u16 {
        (self.bus as u16) << 8 | (self.dev as u16) << 3 | self.func as u16
    }

    /// Bus number.
    #[must_use]
    pub const fn bus(self) -> u8 {
        self.bus
    }

    /// Device number (0..32).
    #[must_use]
    pub const fn dev(self) -> u8 {
        self.dev
    }

    /// Function number (0..8).
    #[must_use]
    pub const fn func(self) -> u8 {
        self.func
    }

    /// The pci_types address of this function in `segment`.
    #[must_use]
    pub fn address(self, segment: u16) -> PciAddress {
        PciAddress::new(segment, self.bus, self.dev, self.func)
    }

    /// The bus/device/function part of a pci_types address (its segment is
    /// dropped).
    #[must_use]
    pub fn from_address(address: PciAddress) -> Self {
        Self { bus: address.bus(), dev: address.device(), func: address.function() }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn rid_packs_bus_dev_fn() {
        assert_eq!(Bdf::new(0, 0, 0).rid(), 0);
        assert_eq!(Bdf::new(0x12, 0x1f, 7).rid(), 0x12ff);
        assert_eq!(Bdf::new(1, 2, 3).rid(), 0x0113);
        assert_eq!(Bdf::new(0xff, 0, 1).rid(), 0xff01);
    }

    #[test]
    fn rid_round_trips() {
        for rid in 0..=u16::MAX {
            let bdf = Bdf::from_rid(rid);
            assert_eq!(bdf.rid(), rid);
            assert_eq!(Bdf::new(bdf.bus(), bdf.dev(), bdf.func()), bdf);
        }
    }

    #[test]
    fn address_conversion_keeps_segment_apart() {
        let bdf = Bdf::new(3, 4, 5);
        let address = bdf.address(7);
        assert_eq!((address.segment(), address.bus(), address.device(), address.function()), (7, 3, 4, 5));
        assert_eq!(Bdf::from_address(address), bdf);
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        assert_eq!(Bdf::checked_new(0, 32, 0), None);
        assert_eq!(Bdf::checked_new(0, 0, 8), None);
        assert_eq!(Bdf::checked_new(9, 31, 7), Some(Bdf::new(9, 31, 7)));
    }

    #[test]
    #[should_panic(expected = "device number")]
    fn new_panics_on_device_32() {
        let _ = Bdf::new(0, 32, 0);
    }

    #[test]
    fn displays_like_lspci() {
        assert_eq!(format!("{}", Bdf::new(0, 0x1f, 2)), "00:1f.2");
        assert_eq!(format!("{:?}", Bdf::new(0xab, 1, 0)), "ab:01.0");
    }
}
