//! The VT-d register block (VT-d specification, chapter 11), as
//! `tock-registers` structures. Only the driver's `unit` module touches
//! them, through the one reference [`crate::VtdUnit::new`] receives.

use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

register_structs! {
    /// The fixed part of a unit's registers (offsets 0x00..0xC0).
    pub Regs {
        (0x000 => pub ver: ReadOnly<u32>),
        (0x004 => _reserved0),
        (0x008 => pub cap: ReadOnly<u64>),
        (0x010 => pub ecap: ReadOnly<u64>),
        (0x018 => pub gcmd: ReadWrite<u32>),
        (0x01C => pub gsts: ReadOnly<u32>),
        (0x020 => pub rtaddr: ReadWrite<u64>),
        (0x028 => pub ccmd: ReadWrite<u64>),
        (0x030 => _reserved1),
        (0x034 => pub fsts: ReadWrite<u32>),
        (0x038 => pub fectl: ReadWrite<u32>),
        (0x03C => pub fedata: ReadWrite<u32>),
        (0x040 => pub feaddr: ReadWrite<u32>),
        (0x044 => pub feuaddr: ReadWrite<u32>),
        (0x048 => _reserved2),
        (0x058 => pub aflog: ReadWrite<u64>),
        (0x060 => _reserved3),
        (0x064 => pub pmen: ReadWrite<u32>),
        (0x068 => pub plmbase: ReadWrite<u32>),
        (0x06C => pub plmlimit: ReadWrite<u32>),
        (0x070 => pub phmbase: ReadWrite<u64>),
        (0x078 => pub phmlimit: ReadWrite<u64>),
        (0x080 => pub iqh: ReadOnly<u64>),
        (0x088 => pub iqt: ReadWrite<u64>),
        (0x090 => pub iqa: ReadWrite<u64>),
        (0x098 => _reserved4),
        (0x09C => pub ics: ReadWrite<u32>),
        (0x0A0 => pub iectl: ReadWrite<u32>),
        (0x0A4 => pub iedata: ReadWrite<u32>),
        (0x0A8 => pub ieaddr: ReadWrite<u32>),
        (0x0AC => pub ieuaddr: ReadWrite<u32>),
        (0x0B0 => pub iqercd: ReadOnly<u64>),
        (0x0B8 => pub irta: ReadWrite<u64>),
        (0x0C0 => @END),
    },

    /// The IOTLB registers, at ECAP.IRO * 16.
    pub IotlbRegs {
        (0x000 => pub iva: ReadWrite<u64>),
        (0x008 => pub iotlb: ReadWrite<u64>),
        (0x010 => @END),
    },

    /// One 128-bit fault recording register, at CAP.FRO * 16 + 16 * n.
    pub FaultRecordRegs {
        (0x000 => pub lo: ReadOnly<u64>),
        (0x008 => pub hi: ReadWrite<u64>),
        (0x010 => @END),
    }
}

/// GCMD / GSTS bits.
pub mod gcmd {
    /// Translation enable / status.
    pub const TE: u32 = 1 << 31;
    /// Set root table pointer / status.
    pub const SRTP: u32 = 1 << 30;
    /// Write-buffer flush / status.
    pub const WBF: u32 = 1 << 27;
    /// Queued invalidation enable / status.
    pub const QIE: u32 = 1 << 26;
    /// Interrupt remapping enable / status.
    pub const IRE: u32 = 1 << 25;
    /// Compatibility-format interrupts.
    pub const CFI: u32 = 1 << 23;
    /// The one-shot command bits: software clears them when it writes
    /// GCMD from GSTS (VT-d 11.4.4.1).
    pub const ONE_SHOT: u32 = (1 << 30) | (1 << 29) | (1 << 27) | (1 << 24);
}

/// FSTS bits.
pub mod fsts {
    /// Primary fault overflow (RW1C).
    pub const PFO: u32 = 1 << 0;
    /// Primary pending fault (read only: some F bit is set).
    pub const PPF: u32 = 1 << 1;
    /// Invalidation queue error (RW1C).
    pub const IQE: u32 = 1 << 4;
    /// Invalidation completion error (RW1C).
    pub const ICE: u32 = 1 << 5;
    /// Invalidation time-out error (RW1C).
    pub const ITE: u32 = 1 << 6;
    /// Fault record index.
    pub const fn fri(v: u32) -> usize {
        ((v >> 8) & 0xff) as usize
    }
}

/// FECTL: interrupt mask (faults are polled).
pub const FECTL_IM: u32 = 1 << 31;
/// IOTLB register: invalidate (set by software, cleared by hardware).
pub const IOTLB_IVT: u64 = 1 << 63;
/// CCMD: invalidate context cache.
pub const CCMD_ICC: u64 = 1 << 63;
/// Fault recording register, high word: fault (RW1C).
pub const FRCD_F: u64 = 1 << 63;
/// Fault recording register, high word: type (1: read).
pub const FRCD_T: u64 = 1 << 62;
