//! SMMU_IDR0..IDR5, decoded (Arm IHI 0070, 6.3.1-6.3.6).

/// What an SMMU can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Raw IDR0..IDR5.
    pub idr: [u32; 6],
    /// Raw IIDR.
    pub iidr: u32,
    /// Raw AIDR (architecture revision: 0 = SMMUv3.0, 1 = v3.1, ...).
    pub aidr: u32,
    /// IDR0.S2P: stage-2 translation.
    pub s2p: bool,
    /// IDR0.S1P: stage-1 translation.
    pub s1p: bool,
    /// IDR0.TTF: 1 = AArch32 tables, 2 = AArch64, 3 = both.
    pub ttf: u8,
    /// IDR0.COHACC: the SMMU's table, queue and walk accesses are coherent.
    pub cohacc: bool,
    /// IDR0.BTM: broadcast TLB maintenance.
    pub btm: bool,
    /// IDR0.HTTU: hardware access/dirty flag updates.
    pub httu: u8,
    /// IDR0.HYP: EL2 translation regime (TLBI_EL2_* needed at reset).
    pub hyp: bool,
    /// IDR0.ATS.
    pub ats: bool,
    /// IDR0.ASID16: 16-bit ASIDs (else 8).
    pub asid16: bool,
    /// IDR0.MSI: MSI-based completion and interrupts.
    pub msi: bool,
    /// IDR0.SEV: the SMMU sends WFE wake-up events (CMD_SYNC CS=SEV).
    pub sev: bool,
    /// IDR0.PRI.
    pub pri: bool,
    /// IDR0.VMID16: 16-bit VMIDs (else 8).
    pub vmid16: bool,
    /// IDR0.CD2L: 2-level context descriptor tables.
    pub cd2l: bool,
    /// IDR0.TTENDIAN: 0 = mixed, 2 = little, 3 = big endian only.
    pub ttendian: u8,
    /// IDR0.STALL_MODEL: 0 = stall and terminate, 1 = terminate only,
    /// 2 = stall forced.
    pub stall_model: u8,
    /// IDR0.TERM_MODEL: terminated transactions always abort.
    pub term_model: bool,
    /// IDR0.ST_LEVEL: 0 = linear stream table only, 1 = 2-level too.
    pub st_level: u8,
    /// IDR1.SIDSIZE: StreamID bits.
    pub sid_bits: u32,
    /// IDR1.SSIDSIZE: SubstreamID bits.
    pub ssid_bits: u32,
    /// IDR1.PRIQS: log2 of the largest PRI queue.
    pub priqs: u32,
    /// IDR1.EVENTQS: log2 of the largest event queue.
    pub eventqs: u32,
    /// IDR1.CMDQS: log2 of the largest command queue.
    pub cmdqs: u32,
    /// IDR1.REL: base addresses relative to the SMMU (preset tables).
    pub rel: bool,
    /// IDR1.QUEUES_PRESET: the queues' bases are fixed.
    pub queues_preset: bool,
    /// IDR1.TABLES_PRESET: the stream table's base is fixed.
    pub tables_preset: bool,
    /// IDR3.HAD: hierarchical attribute disables.
    pub had: bool,
    /// IDR3.RIL: range invalidation (TG/NUM/SCALE/TTL in TLBI commands).
    pub ril: bool,
    /// IDR3.BBML: break-before-make level.
    pub bbml: u8,
    /// IDR5.OAS as the SMMU encodes it.
    pub oas_code: u8,
    /// IDR5.OAS in bits (0 for a reserved encoding).
    pub oas_bits: u32,
    /// IDR5.GRAN4K.
    pub gran4k: bool,
    /// IDR5.GRAN16K.
    pub gran16k: bool,
    /// IDR5.GRAN64K.
    pub gran64k: bool,
    /// IDR5.VAX: 1 = 52-bit VAs with 64 KiB granule.
    pub vax: u8,
    /// IDR5.STALL_MAX.
    pub stall_max: u16,
}

/// Bits of an OAS/IPS/PS encoding (0 for reserved values).
#[must_use]
pub const fn oas_bits(code: u8) -> u32 {
    match code {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        6 => 52,
        _ => 0,
    }
}

/// The PS/IPS encoding of an address size (sizes between encodings round
/// down; sizes below 32 bits give 0).
#[must_use]
pub const fn ps_code(bits: u32) -> u8 {
    match bits {
        52.. => 6,
        48.. => 5,
        44.. => 4,
        42.. => 3,
        40.. => 2,
        36.. => 1,
        _ => 0,
    }
}

impl Caps {
    /// Decode the identification registers.
    #[must_use]
    pub fn decode(idr: [u32; 6], iidr: u32, aidr: u32) -> Self {
        let bits = |v: u32, lo: u32, n: u32| (v >> lo) & ((1 << n) - 1);
        let flag = |v: u32, b: u32| v & (1 << b) != 0;
        let [i0, i1, _i2, i3, _i4, i5] = idr;
        let oas_code = bits(i5, 0, 3) as u8;
        Self {
            idr,
            iidr,
            aidr,
            s2p: flag(i0, 0),
            s1p: flag(i0, 1),
            ttf: bits(i0, 2, 2) as u8,
            cohacc: flag(i0, 4),
            btm: flag(i0, 5),
            httu: bits(i0, 6, 2) as u8,
            hyp: flag(i0, 9),
            ats: flag(i0, 10),
            asid16: flag(i0, 12),
            msi: flag(i0, 13),
            sev: flag(i0, 14),
            pri: flag(i0, 16),
            vmid16: flag(i0, 18),
            cd2l: flag(i0, 19),
            ttendian: bits(i0, 21, 2) as u8,
            stall_model: bits(i0, 24, 2) as u8,
            term_model: flag(i0, 26),
            st_level: bits(i0, 27, 2) as u8,
            sid_bits: bits(i1, 0, 6),
            ssid_bits: bits(i1, 6, 5),
            priqs: bits(i1, 11, 5),
            eventqs: bits(i1, 16, 5),
            cmdqs: bits(i1, 21, 5),
            rel: flag(i1, 28),
            queues_preset: flag(i1, 29),
            tables_preset: flag(i1, 30),
            had: flag(i3, 2),
            ril: flag(i3, 10),
            bbml: bits(i3, 11, 2) as u8,
            oas_code,
            oas_bits: oas_bits(oas_code),
            gran4k: flag(i5, 4),
            gran16k: flag(i5, 5),
            gran64k: flag(i5, 6),
            vax: bits(i5, 10, 2) as u8,
            stall_max: bits(i5, 16, 16) as u16,
        }
    }

    /// Width of the VMIDs the unit tags stage-2 entries with.
    #[must_use]
    pub const fn vmid_bits(&self) -> u32 {
        if self.vmid16 { 16 } else { 8 }
    }

    /// Width of the ASIDs the unit tags stage-1 entries with.
    #[must_use]
    pub const fn asid_bits(&self) -> u32 {
        if self.asid16 { 16 } else { 8 }
    }

    /// AArch64 translation tables are supported.
    #[must_use]
    pub const fn aarch64_tables(&self) -> bool {
        self.ttf & 2 != 0
    }

    /// Little-endian tables are supported.
    #[must_use]
    pub const fn little_endian(&self) -> bool {
        self.ttendian != 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's arm-smmuv3 (hw/arm/smmuv3.c, `smmuv3_init_regs`) with
    /// `stage=2`: S2P, TTF=AArch64, COHACC, ASID16, VMID16, TTENDIAN=LE,
    /// STALL_MODEL=1, TERM_MODEL, ST_LEVEL=2-level; IDR1 SIDSIZE=16,
    /// EVENTQS=CMDQS=19; IDR3 HAD, XNX, RIL, BBML=2; IDR5 OAS=44 bits and
    /// all three granules; AIDR=1 (SMMUv3.1).
    pub const QEMU_STAGE2: [u32; 6] = [
        1 | (2 << 2) | (1 << 4) | (1 << 12) | (1 << 18) | (2 << 21) | (1 << 24) | (1 << 26) | (1 << 27),
        16 | (19 << 16) | (19 << 21),
        0,
        (1 << 2) | (1 << 4) | (1 << 10) | (2 << 11),
        0,
        4 | (1 << 4) | (1 << 5) | (1 << 6),
    ];

    #[test]
    fn qemu_stage2() {
        let c = Caps::decode(QEMU_STAGE2, 0, 1);
        assert!(c.s2p && !c.s1p);
        assert_eq!(c.ttf, 2);
        assert!(c.aarch64_tables() && c.little_endian());
        assert!(c.cohacc && c.asid16 && c.vmid16 && c.term_model);
        assert!(!c.btm && !c.hyp && !c.ats && !c.msi && !c.sev && !c.pri && !c.cd2l);
        assert_eq!((c.ttendian, c.stall_model, c.st_level), (2, 1, 1));
        assert_eq!((c.sid_bits, c.ssid_bits, c.eventqs, c.cmdqs), (16, 0, 19, 19));
        assert!(!c.rel && !c.queues_preset && !c.tables_preset);
        assert!(c.had && c.ril);
        assert_eq!(c.bbml, 2);
        assert_eq!((c.oas_code, c.oas_bits), (4, 44));
        assert!(c.gran4k && c.gran16k && c.gran64k);
        assert_eq!((c.vmid_bits(), c.asid_bits()), (16, 16));
        assert_eq!(c.aidr, 1);
    }

    #[test]
    fn qemu_stage1_only() {
        let mut idr = QEMU_STAGE2;
        idr[0] = (idr[0] & !1) | 2;
        idr[3] &= !(1 << 4); // no XNX without stage 2
        let c = Caps::decode(idr, 0, 1);
        assert!(c.s1p && !c.s2p);
        assert!(c.ril);
    }

    #[test]
    fn field_edges() {
        let c = Caps::decode([u32::MAX, u32::MAX, 0, 0, 0, 7 | (0xffff << 16)], 0, 0);
        assert_eq!(c.sid_bits, 63);
        assert_eq!(c.ssid_bits, 31);
        assert_eq!(c.cmdqs, 31);
        assert_eq!(c.oas_bits, 0, "OAS 7 is reserved");
        assert_eq!(c.stall_max, 0xffff);
        assert_eq!(c.ttendian, 3);
        assert!(!c.little_endian());
        let c = Caps::decode([0; 6], 0, 0);
        assert_eq!((c.vmid_bits(), c.asid_bits()), (8, 8));
        assert_eq!(c.oas_bits, 32);
        assert!(!c.aarch64_tables());
    }

    #[test]
    fn ps_codes_round_trip() {
        for code in 0..=6u8 {
            assert_eq!(ps_code(oas_bits(code)), code);
        }
        assert_eq!(ps_code(47), 4);
        assert_eq!(ps_code(31), 0);
    }
}
