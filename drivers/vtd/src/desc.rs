//! Bytes the unit reads from memory: root and context entries (legacy
//! mode, VT-d 9.1 and 9.3) and invalidation descriptors (VT-d 6.5.2), as
//! pure functions so their bits are tested on their own.

/// A 128-bit entry or descriptor as two 64-bit words (low first).
pub type Words = [u64; 2];

/// Root entry pointing at a context table.
#[must_use]
pub const fn root_entry(context_table: u64) -> Words {
    [(context_table & !0xfff) | 1, 0]
}

/// Legacy context entry: present, translation type 00 (untranslated
/// requests through second-level tables), `aw` (1: 39-bit, 2: 48-bit),
/// domain id `did`.
#[must_use]
pub const fn context_entry(slptptr: u64, aw: u8, did: u16) -> Words {
    [(slptptr & !0xfff) | 1, (aw as u64 & 7) | ((did as u64) << 8)]
}

/// Context-cache invalidation granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextScope {
    /// Every entry.
    Global,
    /// Entries tagged with a domain id.
    Domain(u16),
    /// One requester's entry (its old domain id).
    Device { did: u16, sid: u16 },
}

/// IOTLB invalidation granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbScope {
    /// Everything.
    Global,
    /// One domain.
    Domain(u16),
    /// `2^am` pages of one domain from `addr` (aligned to them); `leaf_only`
    /// sets the invalidation hint (paging-structure caches may stay).
    Pages { did: u16, addr: u64, am: u32, leaf_only: bool },
}

/// Context-cache invalidate descriptor (type 1).
#[must_use]
pub const fn context_cache_desc(scope: ContextScope) -> Words {
    let lo = match scope {
        ContextScope::Global => 1 << 4,
        ContextScope::Domain(did) => (2 << 4) | ((did as u64) << 16),
        ContextScope::Device { did, sid } => (3 << 4) | ((did as u64) << 16) | ((sid as u64) << 32),
    };
    [lo | 1, 0]
}

/// IOTLB invalidate descriptor (type 2) with read/write draining.
#[must_use]
pub const fn iotlb_desc(scope: IotlbScope, drain_read: bool, drain_write: bool) -> Words {
    let drain = ((drain_read as u64) << 7) | ((drain_write as u64) << 6);
    let (g, did, hi) = match scope {
        IotlbScope::Global => (1, 0, 0),
        IotlbScope::Domain(did) => (2, did, 0),
        IotlbScope::Pages { did, addr, am, leaf_only } => (3, did, (addr & !0xfff) | ((leaf_only as u64) << 6) | (am as u64 & 0x3f)),
    };
    [2 | (g << 4) | drain | ((did as u64) << 16), hi]
}

/// Invalidation wait descriptor (type 5): when every earlier descriptor
/// completed, the unit writes `data` (32 bits) at `status_addr`.
#[must_use]
pub const fn wait_desc(status_addr: u64, data: u32) -> Words {
    [5 | (1 << 5) | ((data as u64) << 32), status_addr & !3]
}

/// CCMD register value for a register-based context-cache invalidation.
#[must_use]
pub const fn ccmd(scope: ContextScope) -> u64 {
    let v = match scope {
        ContextScope::Global => 1 << 61,
        ContextScope::Domain(did) => (2 << 61) | did as u64,
        ContextScope::Device { did, sid } => (3 << 61) | did as u64 | ((sid as u64) << 16),
    };
    v | crate::regs::CCMD_ICC
}

/// IVA and IOTLB register values for a register-based IOTLB invalidation.
#[must_use]
pub const fn iotlb_regs(scope: IotlbScope, drain_read: bool, drain_write: bool) -> (u64, u64) {
    let drain = ((drain_read as u64) << 49) | ((drain_write as u64) << 48);
    let (g, did, iva) = match scope {
        IotlbScope::Global => (1, 0, 0),
        IotlbScope::Domain(did) => (2, did, 0),
        IotlbScope::Pages { did, addr, am, leaf_only } => (3, did, (addr & !0xfff) | ((leaf_only as u64) << 6) | (am as u64 & 0x3f)),
    };
    (iva, crate::regs::IOTLB_IVT | (g << 60) | drain | ((did as u64) << 32))
}

/// The page-selective invalidation covering `[iova, iova + len)`: the
/// smallest naturally aligned block of `2^am` pages holding the range,
/// or `None` when that needs a mask above `mamv` (then the whole domain
/// is invalidated).
#[must_use]
pub fn covering_block(iova: u64, len: u64, mamv: u32) -> Option<(u64, u32)> {
    if len == 0 {
        return None;
    }
    let first = iova >> 12;
    let last = iova.checked_add(len - 1)? >> 12;
    let am = 64 - (first ^ last).leading_zeros();
    (am <= mamv).then(|| ((first >> am) << am << 12, am))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        assert_eq!(root_entry(0x1234_5000), [0x1234_5001, 0]);
        // AW=2 (48-bit), DID 0x1234: hi = 2 | 0x1234 << 8.
        assert_eq!(context_entry(0xabc_d000, 2, 0x1234), [0xabc_d001, 0x12_3402]);
    }

    /// Every descriptor stays clear of the reserved masks QEMU's
    /// intel-iommu checks (VTD_INV_DESC_*_RSVD*).
    #[test]
    fn descriptors_match_the_spec_and_avoid_reserved_bits() {
        let cc = context_cache_desc(ContextScope::Device { did: 7, sid: 0x0018 });
        assert_eq!(cc, [1 | (3 << 4) | (7 << 16) | (0x18 << 32), 0]);
        assert_eq!(cc[0] & 0xfffc_0000_0000_ffc0, 0);
        assert_eq!(context_cache_desc(ContextScope::Global), [0x11, 0]);
        assert_eq!(context_cache_desc(ContextScope::Domain(3)), [0x21 | (3 << 16), 0]);

        let psi = iotlb_desc(IotlbScope::Pages { did: 9, addr: 0x20_0000, am: 9, leaf_only: true }, true, true);
        assert_eq!(psi, [2 | (3 << 4) | (1 << 7) | (1 << 6) | (9 << 16), 0x20_0000 | (1 << 6) | 9]);
        assert_eq!(psi[0] & 0xffff_ffff_0000_ff00, 0);
        assert_eq!(psi[1] & 0xf80, 0);
        assert_eq!(iotlb_desc(IotlbScope::Domain(1), false, false), [0x22 | (1 << 16), 0]);
        assert_eq!(iotlb_desc(IotlbScope::Global, false, false), [0x12, 0]);

        let w = wait_desc(0x5000, 0xdead_beef);
        assert_eq!(w, [5 | (1 << 5) | (0xdead_beef << 32), 0x5000]);
        assert_eq!(w[0] & 0xffff_ff80 & !(1 << 5) & !0xf, 0);
        assert_eq!(w[1] & 3, 0);
    }

    #[test]
    fn register_forms() {
        assert_eq!(ccmd(ContextScope::Device { did: 2, sid: 0x10 }), (1 << 63) | (3 << 61) | 2 | (0x10 << 16));
        let (iva, reg) = iotlb_regs(IotlbScope::Pages { did: 5, addr: 0x3000, am: 0, leaf_only: false }, false, true);
        assert_eq!(iva, 0x3000);
        assert_eq!(reg, (1 << 63) | (3 << 60) | (1 << 48) | (5 << 32));
    }

    #[test]
    fn covering_blocks() {
        assert_eq!(covering_block(0x1000, 0x1000, 18), Some((0x1000, 0)));
        assert_eq!(covering_block(0x2000, 0x2000, 18), Some((0x2000, 1)));
        // 0x1000..0x3000 straddles an 8 KiB boundary: a 16 KiB block.
        assert_eq!(covering_block(0x1000, 0x2000, 18), Some((0, 2)));
        assert_eq!(covering_block(0x20_0000, 0x20_0000, 18), Some((0x20_0000, 9)));
        assert_eq!(covering_block(0x4000_0000, 0x4000_0000, 18), Some((0x4000_0000, 18)));
        assert_eq!(covering_block(0x4000_0000, 0x4000_0000, 17), None);
        assert_eq!(covering_block(0, 0, 18), None);
        assert_eq!(covering_block(u64::MAX - 0xfff, 0x2000, 63), None);
        // Every result covers the range and is aligned.
        for (iova, len) in [(0x5000u64, 0x3000u64), (0x7f000, 0x2000), (0x1234_5000, 0x10_0000)] {
            let (a, am) = covering_block(iova, len, 52).unwrap();
            let size = 1u64 << (am + 12);
            assert_eq!(a % size, 0);
            assert!(a <= iova && iova + len <= a + size);
            assert!(am == 0 || iova + len > a + size / 2 || iova < a + size / 2, "not minimal");
        }
    }
}
