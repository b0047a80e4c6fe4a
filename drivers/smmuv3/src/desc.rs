//! Bytes the SMMU reads from memory: stream table entries and level-1
//! descriptors (Arm IHI 0070, 5.1-5.2), context descriptors (5.4),
//! commands (4.1-4.7) and event records (7.3), as pure functions so their
//! bits are tested on their own.

use alloc::vec::Vec;

use sluice_kernel::abi::fault_reason;

/// Bytes of one STE (eight 64-bit words; the driver uses the first four).
pub const STE_BYTES: usize = 64;
/// Bytes of one context descriptor.
pub const CD_BYTES: usize = 64;
/// Bytes of one command.
pub const CMD_BYTES: usize = 16;
/// Bytes of one event record.
pub const EVENT_BYTES: usize = 32;

/// STE word 0: valid.
pub const STE_V: u64 = 1 << 0;
/// STE.Config values (word 0, bits 3:1).
pub mod config {
    /// Abort every transaction (no event is recorded).
    pub const ABORT: u64 = 0b000;
    /// Bypass both stages (the driver never writes it).
    pub const BYPASS: u64 = 0b100;
    /// Stage-1 translation, stage 2 bypassed.
    pub const S1_TRANS: u64 = 0b101;
    /// Stage-2 translation, stage 1 bypassed.
    pub const S2_TRANS: u64 = 0b110;
}

/// STE.Config of an STE's first word.
#[must_use]
pub const fn ste_config(word0: u64) -> u64 {
    (word0 >> 1) & 7
}

/// Memory attributes of the SMMU's own accesses (table walks, CD fetches)
/// as the IRGN/ORGN/SH fields encode them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkAttrs {
    /// Inner and outer cacheability: 0 = non-cacheable, 1 = write-back
    /// read/write-allocate.
    pub cache: u64,
    /// Shareability: 2 = outer, 3 = inner.
    pub sh: u64,
}

impl WalkAttrs {
    /// Write-back inner-shareable for a coherent SMMU (IDR0.COHACC),
    /// non-cacheable outer-shareable otherwise.
    #[must_use]
    pub const fn for_coherency(coherent: bool) -> Self {
        if coherent { Self { cache: 1, sh: 3 } } else { Self { cache: 0, sh: 2 } }
    }
}

/// What a stage-2 STE says besides its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2 {
    /// S2VMID: the domain tag.
    pub vmid: u16,
    /// S2T0SZ: 64 minus the IPA size.
    pub t0sz: u8,
    /// S2SL0 (4 KiB granule: 2 = level 0, 1 = level 1).
    pub sl0: u8,
    /// S2PS: output size encoding.
    pub ps: u8,
    /// Walk attributes (S2IR0, S2OR0, S2SH0).
    pub attrs: WalkAttrs,
    /// S2TTB.
    pub ttb: u64,
}

/// STE word 1: SHCFG = use incoming shareability.
const STE1_SHCFG_INCOMING: u64 = 1 << 44;
/// STE word 2: S2AA64, S2R (record faults).
const STE2_S2AA64: u64 = 1 << 51;
const STE2_S2R: u64 = 1 << 58;
/// STE word 1: S1DSS = substream 0 (what non-substream traffic uses).
const STE1_S1DSS_SSID0: u64 = 2;
/// Address bits 51:4 / 51:6.
const ADDR_51_4: u64 = 0x000f_ffff_ffff_fff0;
const ADDR_51_6: u64 = 0x000f_ffff_ffff_ffc0;

/// The abort STE a blocked device gets: valid, Config = abort.
#[must_use]
pub const fn ste_abort() -> [u64; 4] {
    [STE_V | (config::ABORT << 1), 0, 0, 0]
}

/// A stage-2 translating STE (stage 1 bypassed): AArch64 tables, 4 KiB
/// granule (S2TG 0), faults recorded (S2R), little-endian, no stalls.
#[must_use]
pub const fn ste_stage2(s2: &Stage2) -> [u64; 4] {
    let vtcr = (s2.t0sz as u64 & 0x3f)
        | ((s2.sl0 as u64 & 3) << 6)
        | (s2.attrs.cache << 8)
        | (s2.attrs.cache << 10)
        | (s2.attrs.sh << 12)
        | ((s2.ps as u64 & 7) << 16);
    [
        STE_V | (config::S2_TRANS << 1),
        STE1_SHCFG_INCOMING,
        s2.vmid as u64 | (vtcr << 32) | STE2_S2AA64 | STE2_S2R,
        s2.ttb & ADDR_51_4,
    ]
}

/// A stage-1 translating STE with one context descriptor at `cd`
/// (S1Fmt linear, S1CDMax 0), CD fetches with `attrs`.
#[must_use]
pub const fn ste_stage1(cd: u64, attrs: WalkAttrs) -> [u64; 4] {
    [
        STE_V | (config::S1_TRANS << 1) | (cd & ADDR_51_6),
        STE1_S1DSS_SSID0 | (attrs.cache << 2) | (attrs.cache << 4) | (attrs.sh << 6) | STE1_SHCFG_INCOMING,
        0,
        0,
    ]
}

/// A level-1 stream table descriptor: `span` = log2(STEs in the level-2
/// table) + 1 (0: invalid).
#[must_use]
pub const fn l1_desc(l2_table: u64, span: u8) -> u64 {
    (l2_table & ADDR_51_6) | (span as u64 & 0x1f)
}

/// What a stage-1 context descriptor says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1 {
    /// ASID: the domain tag.
    pub asid: u16,
    /// T0SZ: 64 minus the VA size.
    pub t0sz: u8,
    /// IPS: output size encoding.
    pub ips: u8,
    /// Walk attributes (IR0, OR0, SH0).
    pub attrs: WalkAttrs,
    /// TTB0.
    pub ttb: u64,
    /// MAIR.
    pub mair: u64,
}

/// CD word 0 bits.
pub mod cd {
    /// TTB1 walks disabled.
    pub const EPD1: u64 = 1 << 30;
    /// Valid.
    pub const V: u64 = 1 << 31;
    /// AArch64 tables.
    pub const AA64: u64 = 1 << 41;
    /// Record faults.
    pub const R: u64 = 1 << 45;
    /// Abort (rather than RAZ/WI) on faults: required with TERM_MODEL.
    pub const A: u64 = 1 << 46;
    /// ASID set: ASID not shared with the CPUs (no broadcast TLBI).
    pub const ASET: u64 = 1 << 47;
}

/// A stage-1 context descriptor: TTB0 only (EPD1), 4 KiB granule (TG0 0),
/// AArch64, faults recorded and aborted, no stalls, no HTTU.
#[must_use]
pub const fn context_descriptor(s1: &Stage1) -> [u64; 4] {
    let w0 = (s1.t0sz as u64 & 0x3f)
        | (s1.attrs.cache << 8)
        | (s1.attrs.cache << 10)
        | (s1.attrs.sh << 12)
        | cd::EPD1
        | cd::V
        | ((s1.ips as u64 & 7) << 32)
        | cd::AA64
        | cd::R
        | cd::A
        | cd::ASET
        | ((s1.asid as u64) << 48);
    [w0, s1.ttb & ADDR_51_4, 0, s1.mair]
}

/// Command opcodes.
pub mod op {
    /// Invalidate one STE (and with Leaf clear, its level-1 descriptor).
    pub const CFGI_STE: u8 = 0x03;
    /// Invalidate a range of STEs; with Range = 31 it is CMD_CFGI_ALL.
    pub const CFGI_ALL: u8 = 0x04;
    /// Invalidate every CD of a StreamID.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// Invalidate all stage-1 entries (of VMID, when stage 2 exists).
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// Invalidate stage-1 entries of an ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// Invalidate stage-1 entries of an ASID by address.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// Invalidate everything of the EL2 regime.
    pub const TLBI_EL2_ALL: u8 = 0x20;
    /// Invalidate stage-1 and stage-2 entries of a VMID.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// Invalidate stage-2 entries of a VMID by IPA.
    pub const TLBI_S2_IPA: u8 = 0x2a;
    /// Invalidate all non-secure, non-hypervisor entries.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// Synchronise: complete every earlier command.
    pub const SYNC: u8 = 0x46;
}

/// CMD_SYNC completion signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncSignal {
    /// None: completion is seen by CMDQ_CONS passing the command.
    None,
    /// Send a WFE wake-up event too (IDR0.SEV).
    Sev,
}

/// Range fields of a TLBI by address (IDR3.RIL): `(NUM + 1) << SCALE`
/// pages of granule `TG` from the address; `TTL` says at which level the
/// leaves are (0: unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// TG: 1 = 4 KiB.
    pub tg: u8,
    /// NUM (0..=31).
    pub num: u8,
    /// SCALE (0..=31).
    pub scale: u8,
    /// TTL (0..=3; with the 4 KiB granule the Arm level of the leaves).
    pub ttl: u8,
}

/// One command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// CMD_CFGI_STE.
    CfgiSte {
        /// StreamID.
        sid: u32,
        /// Only the STE (not the level-1 descriptor) changed.
        leaf: bool,
    },
    /// CMD_CFGI_ALL.
    CfgiAll,
    /// CMD_CFGI_CD_ALL.
    CfgiCdAll {
        /// StreamID.
        sid: u32,
    },
    /// CMD_TLBI_NH_ASID.
    TlbiNhAsid {
        /// ASID.
        asid: u16,
    },
    /// CMD_TLBI_NH_VA.
    TlbiNhVa {
        /// ASID.
        asid: u16,
        /// Address (bits 63:12).
        addr: u64,
        /// Only leaf entries need to go.
        leaf: bool,
        /// Range fields (RIL) or `None` for one address.
        range: Option<Range>,
    },
    /// CMD_TLBI_EL2_ALL.
    TlbiEl2All,
    /// CMD_TLBI_S12_VMALL.
    TlbiS12Vmall {
        /// VMID.
        vmid: u16,
    },
    /// CMD_TLBI_S2_IPA.
    TlbiS2Ipa {
        /// VMID.
        vmid: u16,
        /// IPA (bits 51:12).
        addr: u64,
        /// Only leaf entries need to go.
        leaf: bool,
        /// Range fields (RIL) or `None` for one address.
        range: Option<Range>,
    },
    /// CMD_TLBI_NSNH_ALL.
    TlbiNsnhAll,
    /// CMD_SYNC.
    Sync(SyncSignal),
}

const fn range_words(leaf: bool, range: Option<Range>) -> (u64, u64) {
    match range {
        Some(r) => (
            ((r.num as u64 & 0x1f) << 12) | ((r.scale as u64 & 0x1f) << 20),
            leaf as u64 | ((r.ttl as u64 & 3) << 8) | ((r.tg as u64 & 3) << 10),
        ),
        None => (0, leaf as u64),
    }
}

impl Command {
    /// The two 64-bit words of the command.
    #[must_use]
    pub const fn encode(&self) -> [u64; 2] {
        match *self {
            Self::CfgiSte { sid, leaf } => [op::CFGI_STE as u64 | ((sid as u64) << 32), leaf as u64],
            Self::CfgiAll => [op::CFGI_ALL as u64, 31],
            Self::CfgiCdAll { sid } => [op::CFGI_CD_ALL as u64 | ((sid as u64) << 32), 0],
            Self::TlbiNhAsid { asid } => [op::TLBI_NH_ASID as u64 | ((asid as u64) << 48), 0],
            Self::TlbiNhVa { asid, addr, leaf, range } => {
                let (w0, w1) = range_words(leaf, range);
                [op::TLBI_NH_VA as u64 | w0 | ((asid as u64) << 48), w1 | (addr & !0xfff)]
            }
            Self::TlbiEl2All => [op::TLBI_EL2_ALL as u64, 0],
            Self::TlbiS12Vmall { vmid } => [op::TLBI_S12_VMALL as u64 | ((vmid as u64) << 32), 0],
            Self::TlbiS2Ipa { vmid, addr, leaf, range } => {
                let (w0, w1) = range_words(leaf, range);
                [op::TLBI_S2_IPA as u64 | w0 | ((vmid as u64) << 32), w1 | (addr & 0x000f_ffff_ffff_f000)]
            }
            Self::TlbiNsnhAll => [op::TLBI_NSNH_ALL as u64, 0],
            Self::Sync(signal) => {
                let cs: u64 = match signal {
                    SyncSignal::None => 0,
                    SyncSignal::Sev => 2,
                };
                [op::SYNC as u64 | (cs << 12), 0]
            }
        }
    }
}

/// The range invalidations covering `[iova, iova + len)` with 4 KiB
/// pages, as Linux's `__arm_smmu_tlb_inv_range` splits them: each command
/// takes the lowest five set bits of the remaining page count. With no
/// level hint (`ttl` 0) a count ending in a single page is rounded up one
/// page, so no command has NUM = SCALE = TTL = 0.
#[must_use]
pub fn range_commands(iova: u64, len: u64, ttl: u8) -> Vec<(u64, Range)> {
    let mut out = Vec::new();
    if len == 0 {
        return out;
    }
    let start = iova & !0xfff;
    let Some(last) = iova.checked_add(len - 1) else {
        return out;
    };
    let mut pages = (last >> 12) - (start >> 12) + 1;
    if ttl == 0 && pages & 0x1f == 1 {
        pages += 1;
    }
    let mut addr = start;
    while pages != 0 {
        // SCALE has five bits: beyond 2^31 pages, take up to 32 chunks
        // of 2^31 pages.
        let tz = pages.trailing_zeros();
        let scale = tz.min(31);
        let num = if tz > 31 { (pages >> 31).min(32) } else { (pages >> scale) & 0x1f };
        out.push((addr, Range { tg: 1, num: (num - 1) as u8, scale: scale as u8, ttl }));
        addr = addr.wrapping_add(num << (scale + 12));
        pages -= num << scale;
    }
    out
}

/// The addresses of per-leaf invalidations covering `[iova, iova + len)`
/// in steps of `1 << stride_shift`, or `None` when there would be more
/// than `max` (then the whole domain is invalidated instead).
#[must_use]
pub fn leaf_addresses(iova: u64, len: u64, stride_shift: u32, max: usize) -> Option<Vec<u64>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let first = iova >> stride_shift;
    let last = iova.checked_add(len - 1)? >> stride_shift;
    let count = last - first + 1;
    if count > max as u64 {
        return None;
    }
    Some((first..=last).map(|i| i << stride_shift).collect())
}

/// Event types (Arm IHI 0070, 7.3).
pub mod event {
    /// Unsupported upstream transaction.
    pub const F_UUT: u8 = 0x01;
    /// StreamID beyond the stream table.
    pub const C_BAD_STREAMID: u8 = 0x02;
    /// Fetching an STE aborted.
    pub const F_STE_FETCH: u8 = 0x03;
    /// An STE is invalid or misconfigured.
    pub const C_BAD_STE: u8 = 0x04;
    /// ATS translation request disallowed.
    pub const F_BAD_ATS_TREQ: u8 = 0x05;
    /// Non-substream traffic disabled by the STE.
    pub const F_STREAM_DISABLED: u8 = 0x06;
    /// Bypass forbidden (GBPA or STE).
    pub const F_TRANS_FORBIDDEN: u8 = 0x07;
    /// SubstreamID out of range.
    pub const C_BAD_SUBSTREAMID: u8 = 0x08;
    /// Fetching a CD aborted.
    pub const F_CD_FETCH: u8 = 0x09;
    /// A CD is invalid or misconfigured.
    pub const C_BAD_CD: u8 = 0x0a;
    /// A table walk's memory access aborted.
    pub const F_WALK_EABT: u8 = 0x0b;
    /// Translation fault: nothing mapped.
    pub const F_TRANSLATION: u8 = 0x10;
    /// Address size fault.
    pub const F_ADDR_SIZE: u8 = 0x11;
    /// Access flag fault.
    pub const F_ACCESS: u8 = 0x12;
    /// Permission fault.
    pub const F_PERMISSION: u8 = 0x13;
    /// TLB conflict.
    pub const F_TLB_CONFLICT: u8 = 0x20;
    /// Configuration cache conflict.
    pub const F_CFG_CONFLICT: u8 = 0x21;
}

/// An event record as the SMMU wrote it (four 64-bit words), kept raw
/// for reports and the QEMU self-test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// The record.
    pub words: [u64; 4],
}

impl RawEvent {
    /// Event type.
    #[must_use]
    pub const fn kind(&self) -> u8 {
        self.words[0] as u8
    }
    /// StreamID.
    #[must_use]
    pub const fn sid(&self) -> u32 {
        (self.words[0] >> 32) as u32
    }
    /// SubstreamID, when the record carries one (SSV).
    #[must_use]
    pub const fn ssid(&self) -> Option<u32> {
        if self.words[0] & (1 << 11) != 0 { Some(((self.words[0] >> 12) & 0xf_ffff) as u32) } else { None }
    }
    /// Whether the type carries access details (RnW, InputAddr).
    #[must_use]
    pub const fn has_access(&self) -> bool {
        matches!(
            self.kind(),
            event::F_UUT
                | event::F_TRANS_FORBIDDEN
                | event::F_WALK_EABT
                | event::F_TRANSLATION
                | event::F_ADDR_SIZE
                | event::F_ACCESS
                | event::F_PERMISSION
        )
    }
    /// RnW: the access was a read.
    #[must_use]
    pub const fn read(&self) -> bool {
        self.words[1] & (1 << 35) != 0
    }
    /// The fault came from stage 2.
    #[must_use]
    pub const fn stage2(&self) -> bool {
        self.words[1] & (1 << 39) != 0
    }
    /// CLASS: 0 = CD fetch, 1 = table walk, 2 = the input address.
    #[must_use]
    pub const fn class(&self) -> u8 {
        ((self.words[1] >> 40) & 3) as u8
    }
    /// InputAddr (0 for types that carry none).
    #[must_use]
    pub const fn input_addr(&self) -> u64 {
        if self.has_access() { self.words[2] } else { 0 }
    }
    /// IPA or fetch address (word 3).
    #[must_use]
    pub const fn addr2(&self) -> u64 {
        self.words[3]
    }

    /// The core's fault reason: nothing mapped, a permission fault by
    /// direction, or (for a StreamID with no usable STE: a blocked or
    /// never configured device) not present; anything else is other.
    #[must_use]
    pub const fn core_reason(&self) -> u32 {
        match self.kind() {
            event::F_TRANSLATION => fault_reason::NOT_PRESENT,
            event::F_PERMISSION => {
                if self.read() {
                    fault_reason::READ_FROM_WRITE_ONLY
                } else {
                    fault_reason::WRITE_TO_READ_ONLY
                }
            }
            event::C_BAD_STREAMID
            | event::F_STE_FETCH
            | event::C_BAD_STE
            | event::F_STREAM_DISABLED
            | event::F_TRANS_FORBIDDEN => fault_reason::NOT_PRESENT,
            _ => fault_reason::OTHER,
        }
    }

    /// `FLAG_READ` / `FLAG_WRITE` for types with access details, else 0.
    #[must_use]
    pub const fn core_flags(&self) -> u32 {
        if !self.has_access() {
            0
        } else if self.read() {
            fault_reason::FLAG_READ
        } else {
            fault_reason::FLAG_WRITE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn stage2_ste_fields() {
        let s2 = Stage2 { vmid: 0x1234, t0sz: 20, sl0: 2, ps: 4, attrs: WalkAttrs::for_coherency(true), ttb: 0x8_1234_5000 };
        let e = ste_stage2(&s2);
        assert_eq!(e[0], 1 | (6 << 1));
        assert_eq!(ste_config(e[0]), config::S2_TRANS);
        assert_eq!(e[1], 1 << 44);
        // VTCR: T0SZ 20, SL0 2, IR0/OR0 WB, SH0 inner, TG 4K, PS 44 bits.
        let vtcr = 20 | (2 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (4 << 16);
        assert_eq!(e[2], 0x1234 | (vtcr << 32) | (1 << 51) | (1 << 58));
        // QEMU's view (word 5 = bits 63:32 of e[2]).
        let w5 = (e[2] >> 32) as u32;
        assert_eq!((w5 & 0x3f, (w5 >> 6) & 3, (w5 >> 14) & 3, (w5 >> 16) & 7), (20, 2, 0, 4));
        assert_eq!(((w5 >> 19) & 1, (w5 >> 20) & 1, (w5 >> 25) & 1, (w5 >> 26) & 1), (1, 0, 0, 1), "AA64, LE, no stall, record");
        assert_eq!(e[3], 0x8_1234_5000);
        let nc = ste_stage2(&Stage2 { attrs: WalkAttrs::for_coherency(false), ..s2 });
        assert_eq!((nc[2] >> 40) & 0x3f, 0b10_00_00, "non-coherent: NC, outer shareable");
    }

    #[test]
    fn stage1_ste_and_cd_fields() {
        let e = ste_stage1(0x4_0000_1040, WalkAttrs::for_coherency(true));
        assert_eq!(e[0], 1 | (5 << 1) | 0x4_0000_1040);
        assert_eq!(e[0] >> 59, 0, "S1CDMax 0");
        assert_eq!((e[0] >> 4) & 3, 0, "S1Fmt linear");
        assert_eq!(e[1], 2 | (1 << 2) | (1 << 4) | (3 << 6) | (1 << 44));
        assert_eq!(e[1] & (1 << 27), 0, "S1STALLD clear: QEMU rejects it with STALL_MODEL 1");
        assert_eq!((e[2], e[3]), (0, 0));

        let c = context_descriptor(&Stage1 { asid: 7, t0sz: 16, ips: 4, attrs: WalkAttrs::for_coherency(true), ttb: 0x1_2345_6000, mair: 0xff });
        let w0 = c[0] as u32;
        let w1 = (c[0] >> 32) as u32;
        // QEMU's CD_0/CD_1 fields.
        assert_eq!((w0 & 0x3f, (w0 >> 6) & 3, (w0 >> 14) & 1, (w0 >> 15) & 1, (w0 >> 30) & 1, w0 >> 31), (16, 0, 0, 0, 1, 1));
        assert_eq!((w1 & 7, (w1 >> 9) & 1, (w1 >> 10) & 3, (w1 >> 12) & 1, (w1 >> 13) & 1, (w1 >> 14) & 1), (4, 1, 0, 0, 1, 1));
        assert_eq!(w1 >> 16, 7, "ASID");
        assert_eq!((c[1], c[2], c[3]), (0x1_2345_6000, 0, 0xff));
    }

    #[test]
    fn abort_and_l1() {
        assert_eq!(ste_abort(), [1, 0, 0, 0]);
        assert_eq!(ste_config(ste_abort()[0]), config::ABORT);
        assert_eq!(l1_desc(0x8000_3000, 7), 0x8000_3007);
    }

    #[test]
    fn command_encodings() {
        assert_eq!(Command::CfgiSte { sid: 0x18, leaf: true }.encode(), [3 | (0x18 << 32), 1]);
        assert_eq!(Command::CfgiAll.encode(), [4, 31]);
        assert_eq!(Command::CfgiCdAll { sid: 9 }.encode(), [6 | (9 << 32), 0]);
        assert_eq!(Command::TlbiNhAsid { asid: 0x42 }.encode(), [0x11 | (0x42 << 48), 0]);
        assert_eq!(Command::TlbiS12Vmall { vmid: 0x42 }.encode(), [0x28 | (0x42 << 32), 0]);
        assert_eq!(Command::TlbiNsnhAll.encode(), [0x30, 0]);
        assert_eq!(Command::TlbiEl2All.encode(), [0x20, 0]);
        assert_eq!(Command::Sync(SyncSignal::None).encode(), [0x46, 0]);
        assert_eq!(Command::Sync(SyncSignal::Sev).encode(), [0x46 | (2 << 12), 0]);
        let r = Range { tg: 1, num: 3, scale: 9, ttl: 2 };
        assert_eq!(
            Command::TlbiS2Ipa { vmid: 5, addr: 0x20_0000, leaf: true, range: Some(r) }.encode(),
            [0x2a | (3 << 12) | (9 << 20) | (5 << 32), 1 | (2 << 8) | (1 << 10) | 0x20_0000]
        );
        assert_eq!(Command::TlbiNhVa { asid: 5, addr: 0x1234_5678, leaf: false, range: None }.encode(), [0x12 | (5 << 48), 0x1234_5000]);
        // QEMU's CMD_* extraction: ADDR from word 2 bits 31:12 and word 3.
        let c = Command::TlbiS2Ipa { vmid: 1, addr: 0xabc_dead_b000, leaf: false, range: None }.encode();
        let qemu_addr = ((c[1] >> 32) << 32) | (((c[1] as u32 >> 12) as u64) << 12);
        assert_eq!(qemu_addr, 0xabc_dead_b000);
    }

    fn covered(cmds: &[(u64, Range)]) -> (u64, u64) {
        let start = cmds[0].0;
        let mut at = start;
        for (a, r) in cmds {
            assert_eq!(*a, at, "contiguous");
            assert_eq!(r.tg, 1);
            at += (u64::from(r.num) + 1) << (r.scale + 12);
        }
        (start, at)
    }

    #[test]
    fn range_splits_like_linux() {
        // One page with a level hint: NUM 0, SCALE 0.
        assert_eq!(range_commands(0x5000, 0x1000, 3), vec![(0x5000, Range { tg: 1, num: 0, scale: 0, ttl: 3 })]);
        // Without a hint the single page becomes two.
        assert_eq!(range_commands(0x5000, 0x1000, 0), vec![(0x5000, Range { tg: 1, num: 0, scale: 1, ttl: 0 })]);
        // 512 pages: one command, NUM 0, SCALE 9.
        assert_eq!(range_commands(0x20_0000, 0x20_0000, 2), vec![(0x20_0000, Range { tg: 1, num: 0, scale: 9, ttl: 2 })]);
        // 33 pages: 1 then 32.
        let c = range_commands(0, 33 << 12, 3);
        assert_eq!(c.len(), 2);
        assert_eq!(covered(&c), (0, 33 << 12));
        // Unaligned start and end are widened to pages.
        let c = range_commands(0x1234, 0x2000, 3);
        assert_eq!(covered(&c), (0x1000, 0x4000));
        for (iova, len) in [(0x7000u64, 0x12_3000u64), (0x4000_0000, 0x4000_0000), (0, 1 << 47), (0x1000, 0x1f_f000)] {
            let c = range_commands(iova, len, 3);
            let (s, e) = covered(&c);
            assert!(s <= iova && e >= iova + len);
            assert!(c.len() <= 8, "{} commands", c.len());
            assert!(c.iter().all(|(_, r)| r.num < 32 && r.scale < 32));
        }
        assert!(range_commands(0x1000, 0, 3).is_empty());
        let top = range_commands(u64::MAX - 0xfff, 0x1000, 3);
        assert_eq!(top, vec![(u64::MAX - 0xfff, Range { tg: 1, num: 0, scale: 0, ttl: 3 })]);
    }

    #[test]
    fn leaf_address_lists() {
        assert_eq!(leaf_addresses(0x1000, 0x3000, 12, 8), Some(vec![0x1000, 0x2000, 0x3000]));
        assert_eq!(leaf_addresses(0x1800, 0x1000, 12, 8), Some(vec![0x1000, 0x2000]));
        assert_eq!(leaf_addresses(0x20_0000, 0x40_0000, 21, 8), Some(vec![0x20_0000, 0x40_0000]));
        assert_eq!(leaf_addresses(0, 0x10_0000, 12, 8), None);
        assert_eq!(leaf_addresses(0, 0, 12, 8), Some(vec![]));
    }

    #[test]
    fn events_decode() {
        // QEMU's EVT_SET_*: type in word 0, SID in word 1, RnW in word 3
        // bit 3, InputAddr in words 4-5.
        let w = |words: [u32; 8]| RawEvent {
            words: [0, 1, 2, 3].map(|i| u64::from(words[2 * i]) | (u64::from(words[2 * i + 1]) << 32)),
        };
        let perm_read = w([0x13, 0x18, 0, 1 << 3 | 1 << 7 | 2 << 8, 0x5000, 0x1, 0, 0]);
        assert_eq!((perm_read.kind(), perm_read.sid(), perm_read.input_addr()), (0x13, 0x18, 0x1_0000_5000));
        assert!(perm_read.read() && perm_read.stage2());
        assert_eq!(perm_read.class(), 2);
        assert_eq!(perm_read.core_reason(), fault_reason::READ_FROM_WRITE_ONLY);
        assert_eq!(perm_read.core_flags(), fault_reason::FLAG_READ);
        let perm_write = w([0x13, 0x18, 0, 0, 0x5000, 0, 0, 0]);
        assert_eq!(perm_write.core_reason(), fault_reason::WRITE_TO_READ_ONLY);
        assert_eq!(perm_write.core_flags(), fault_reason::FLAG_WRITE);
        let tr = w([0x10, 3, 0, 0, 0x7000, 0, 0, 0]);
        assert_eq!(tr.core_reason(), fault_reason::NOT_PRESENT);
        let bad_ste = w([0x04 | (5 << 12) | (1 << 11), 0x20, 0, 0, 0xdead, 0, 0, 0]);
        assert_eq!((bad_ste.core_reason(), bad_ste.core_flags(), bad_ste.input_addr()), (fault_reason::NOT_PRESENT, 0, 0));
        assert_eq!(bad_ste.ssid(), Some(5));
        for k in [event::C_BAD_STREAMID, event::F_STE_FETCH, event::F_STREAM_DISABLED] {
            assert_eq!(w([u32::from(k), 0, 0, 0, 0, 0, 0, 0]).core_reason(), fault_reason::NOT_PRESENT);
        }
        for k in [event::F_ADDR_SIZE, event::F_ACCESS, event::C_BAD_CD, event::F_WALK_EABT, event::F_CFG_CONFLICT] {
            assert_eq!(w([u32::from(k), 0, 0, 0, 0, 0, 0, 0]).core_reason(), fault_reason::OTHER);
        }
        assert_eq!(w([0x12, 0, 0, 0, 0, 0, 0x4000, 0]).addr2(), 0x4000);
    }
}
