//! CAP_REG and ECAP_REG, decoded (VT-d 11.4.2, 11.4.3).

/// What a unit can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Raw CAP_REG.
    pub cap: u64,
    /// Raw ECAP_REG.
    pub ecap: u64,
    /// ND: domain ids supported, `2^(4 + 2 * ND)`.
    pub domains: u32,
    /// RWBF: write-buffer flushing required.
    pub rwbf: bool,
    /// CM: not-present and erroneous entries may be cached.
    pub caching_mode: bool,
    /// SAGAW: bit 1 = 39-bit 3-level, bit 2 = 48-bit 4-level, bit 3 = 57-bit.
    pub sagaw: u8,
    /// MGAW: maximum guest address width in bits.
    pub mgaw: u32,
    /// FRO: byte offset of the fault recording registers.
    pub fault_offset: usize,
    /// SLLPS: bit 0 = 2 MiB, bit 1 = 1 GiB second-level pages.
    pub sllps: u8,
    /// PSI: page-selective IOTLB invalidation.
    pub psi: bool,
    /// NFR: number of fault recording registers.
    pub fault_records: usize,
    /// MAMV: largest address mask of a page-selective invalidation.
    pub mamv: u32,
    /// DWD / DRD: write / read draining.
    pub drain_write: bool,
    /// See `drain_write`.
    pub drain_read: bool,
    /// ECAP.C: page walks snoop the CPU caches.
    pub coherent: bool,
    /// ECAP.QI: queued invalidation.
    pub queued_invalidation: bool,
    /// ECAP.DT: device-TLB.
    pub device_tlb: bool,
    /// ECAP.IR: interrupt remapping.
    pub interrupt_remapping: bool,
    /// ECAP.PT: pass-through.
    pub pass_through: bool,
    /// ECAP.SC: snoop control (the SNP bit of leaves).
    pub snoop_control: bool,
    /// IRO: byte offset of the IOTLB registers.
    pub iotlb_offset: usize,
    /// ECAP.SMTS: scalable mode.
    pub scalable: bool,
}

impl Caps {
    /// Decode the two registers.
    #[must_use]
    pub fn decode(cap: u64, ecap: u64) -> Self {
        let bits = |v: u64, lo: u32, n: u32| (v >> lo) & ((1 << n) - 1);
        Self {
            cap,
            ecap,
            domains: 1 << (4 + 2 * bits(cap, 0, 3).min(6)),
            rwbf: bits(cap, 4, 1) != 0,
            caching_mode: bits(cap, 7, 1) != 0,
            sagaw: bits(cap, 8, 5) as u8,
            mgaw: bits(cap, 16, 6) as u32 + 1,
            fault_offset: bits(cap, 24, 10) as usize * 16,
            sllps: bits(cap, 34, 4) as u8,
            psi: bits(cap, 39, 1) != 0,
            fault_records: bits(cap, 40, 8) as usize + 1,
            mamv: bits(cap, 48, 6) as u32,
            drain_write: bits(cap, 54, 1) != 0,
            drain_read: bits(cap, 55, 1) != 0,
            coherent: bits(ecap, 0, 1) != 0,
            queued_invalidation: bits(ecap, 1, 1) != 0,
            device_tlb: bits(ecap, 2, 1) != 0,
            interrupt_remapping: bits(ecap, 3, 1) != 0,
            pass_through: bits(ecap, 6, 1) != 0,
            snoop_control: bits(ecap, 7, 1) != 0,
            iotlb_offset: bits(ecap, 8, 10) as usize * 16,
            scalable: bits(ecap, 43, 1) != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 10's intel-iommu with aw-bits=48 (values read from the device
    /// in the QEMU self-test): ND=6, CM=0, SAGAW=39|48, MGAW=48, FRO=0x220,
    /// SLLPS=2M|1G, PSI, NFR=1, MAMV=18, DRD, DWD; ECAP: QI, IR, EIM, PT,
    /// MHMV, IRO=0xF0.
    #[test]
    fn qemu_intel_iommu() {
        let cap = 6 | (0b110 << 8) | (47 << 16) | ((0x220 / 16) << 24) | (0b11 << 34) | (1 << 39) | (18 << 48) | (3 << 54);
        let ecap = (1 << 1) | (1 << 3) | (1 << 4) | (1 << 6) | (0xf << 20) | ((0xf0 / 16) << 8);
        let c = Caps::decode(cap, ecap);
        assert_eq!(c.domains, 65536);
        assert!(!c.caching_mode && !c.rwbf);
        assert_eq!(c.sagaw, 0b110);
        assert_eq!(c.mgaw, 48);
        assert_eq!(c.fault_offset, 0x220);
        assert_eq!(c.sllps, 3);
        assert!(c.psi);
        assert_eq!(c.fault_records, 1);
        assert_eq!(c.mamv, 18);
        assert!(c.drain_read && c.drain_write);
        assert!(c.queued_invalidation && c.interrupt_remapping && c.pass_through);
        assert!(!c.coherent && !c.snoop_control && !c.scalable && !c.device_tlb);
        assert_eq!(c.iotlb_offset, 0xf0);
    }

    #[test]
    fn caching_mode_and_field_edges() {
        let c = Caps::decode((1 << 7) | (0xff << 40) | (0x3f << 16) | 7, 0x3ff << 8);
        assert!(c.caching_mode);
        assert_eq!(c.fault_records, 256);
        assert_eq!(c.mgaw, 64);
        assert_eq!(c.domains, 1 << 16, "ND values above 6 are reserved; clamp");
        assert_eq!(c.iotlb_offset, 0x3ff0);
    }
}
