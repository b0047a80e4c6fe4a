//! Address newtypes used across module boundaries: an I/O virtual address
//! is never silently a host-physical one.

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            #[inline]
            #[must_use]
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// `self + bytes`, or `None` when that overflows 64 bits.
            #[inline]
            #[must_use]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Whether the address is a multiple of `align` (a power of two).
            #[inline]
            #[must_use]
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
        }

        impl core::fmt::LowerHex for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_type!(
    /// An I/O virtual address: what a device puts on the bus, the input of
    /// an IOMMU translation.
    Iova
);
address_type!(
    /// A host-physical address: the output of the IOMMU translation, and the
    /// address of page-table pages.
    Hpa
);
address_type!(
    /// A guest-physical address: an address in a partition's own view of its
    /// memory.
    Gpa
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_add_reports_overflow() {
        assert_eq!(Iova(0x1000).checked_add(0x1000), Some(Iova(0x2000)));
        assert_eq!(Iova(u64::MAX).checked_add(1), None);
        assert_eq!(Hpa(u64::MAX - 1).checked_add(1), Some(Hpa(u64::MAX)));
    }

    #[test]
    fn alignment() {
        assert!(Gpa(0x20_0000).is_aligned(0x20_0000));
        assert!(!Gpa(0x20_1000).is_aligned(0x20_0000));
        assert!(Gpa(0).is_aligned(1 << 30));
    }
}
