//! The SMMUv3 register pages (Arm IHI 0070, chapter 6), as
//! `tock-registers` structures. Only the driver's `unit` module touches
//! them, through the references [`crate::SmmuV3Unit::new`] makes.
//!
//! Page 0 holds the configuration registers and the command queue; the
//! event queue's PROD/CONS live in page 1 (base + 64 KiB). QEMU aliases the
//! two pages (`smmu_write_mmio` clears bit 16 of the offset), real SMMUs do
//! not, so the driver always uses page 1 for them.

use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

/// Offset of register page 1 from the base.
pub const PAGE1_OFFSET: usize = 0x1_0000;

/// Bytes of MMIO the driver uses: both 64 KiB pages.
pub const MMIO_SIZE: usize = 0x2_0000;

register_structs! {
    /// Register page 0 (offsets 0x00..0xC0; the PRI queue and the secure
    /// registers after it are not used).
    pub Regs {
        (0x000 => pub idr0: ReadOnly<u32>),
        (0x004 => pub idr1: ReadOnly<u32>),
        (0x008 => pub idr2: ReadOnly<u32>),
        (0x00C => pub idr3: ReadOnly<u32>),
        (0x010 => pub idr4: ReadOnly<u32>),
        (0x014 => pub idr5: ReadOnly<u32>),
        (0x018 => pub iidr: ReadOnly<u32>),
        (0x01C => pub aidr: ReadOnly<u32>),
        (0x020 => pub cr0: ReadWrite<u32>),
        (0x024 => pub cr0ack: ReadOnly<u32>),
        (0x028 => pub cr1: ReadWrite<u32>),
        (0x02C => pub cr2: ReadWrite<u32>),
        (0x030 => _reserved0),
        (0x040 => pub statusr: ReadOnly<u32>),
        (0x044 => pub gbpa: ReadWrite<u32>),
        (0x048 => _reserved1),
        (0x050 => pub irq_ctrl: ReadWrite<u32>),
        (0x054 => pub irq_ctrlack: ReadOnly<u32>),
        (0x058 => _reserved2),
        (0x060 => pub gerror: ReadOnly<u32>),
        (0x064 => pub gerrorn: ReadWrite<u32>),
        (0x068 => pub gerror_irq_cfg0: ReadWrite<u64>),
        (0x070 => pub gerror_irq_cfg1: ReadWrite<u32>),
        (0x074 => pub gerror_irq_cfg2: ReadWrite<u32>),
        (0x078 => _reserved3),
        (0x080 => pub strtab_base: ReadWrite<u64>),
        (0x088 => pub strtab_base_cfg: ReadWrite<u32>),
        (0x08C => _reserved4),
        (0x090 => pub cmdq_base: ReadWrite<u64>),
        (0x098 => pub cmdq_prod: ReadWrite<u32>),
        (0x09C => pub cmdq_cons: ReadWrite<u32>),
        (0x0A0 => pub eventq_base: ReadWrite<u64>),
        (0x0A8 => _reserved5),
        (0x0B0 => pub eventq_irq_cfg0: ReadWrite<u64>),
        (0x0B8 => pub eventq_irq_cfg1: ReadWrite<u32>),
        (0x0BC => pub eventq_irq_cfg2: ReadWrite<u32>),
        (0x0C0 => @END),
    },

    /// Register page 1, up to the event queue's index registers.
    pub Page1Regs {
        (0x000 => _reserved0),
        (0x0A8 => pub eventq_prod: ReadWrite<u32>),
        (0x0AC => pub eventq_cons: ReadWrite<u32>),
        (0x0B0 => @END),
    }
}

/// CR0 / CR0ACK bits.
pub mod cr0 {
    /// SMMU enable: translate (or abort) through the stream table.
    pub const SMMUEN: u32 = 1 << 0;
    /// PRI queue enable (never set).
    pub const PRIQEN: u32 = 1 << 1;
    /// Event queue enable.
    pub const EVENTQEN: u32 = 1 << 2;
    /// Command queue enable.
    pub const CMDQEN: u32 = 1 << 3;
    /// ATS check (never set).
    pub const ATSCHK: u32 = 1 << 4;
    /// The bits CR0ACK reflects that the driver compares.
    pub const KNOWN: u32 = SMMUEN | PRIQEN | EVENTQEN | CMDQEN | ATSCHK;
}

/// CR1: cacheability and shareability of the SMMU's own accesses to the
/// stream table (TABLE_*) and the queues (QUEUE_*).
pub mod cr1 {
    /// Non-cacheable.
    pub const NC: u32 = 0;
    /// Write-back cacheable.
    pub const WB: u32 = 1;
    /// Outer shareable.
    pub const OSH: u32 = 2;
    /// Inner shareable.
    pub const ISH: u32 = 3;

    /// CR1 with the same inner/outer cacheability `cache` and shareability
    /// `sh` for tables and queues.
    #[must_use]
    pub const fn value(cache: u32, sh: u32) -> u32 {
        (sh << 10) | (cache << 8) | (cache << 6) | (sh << 4) | (cache << 2) | cache
    }
}

/// CR2 bits.
pub mod cr2 {
    /// E2H: EL2 translation regime with ASIDs (not used).
    pub const E2H: u32 = 1 << 0;
    /// Record C_BAD_STREAMID events for out-of-range StreamIDs.
    pub const RECINVSID: u32 = 1 << 1;
    /// Private TLB maintenance: ignore broadcast TLB invalidations from
    /// the CPUs (the hypervisor's own ASIDs/VMIDs are unrelated to tags).
    pub const PTM: u32 = 1 << 2;
}

/// GBPA bits.
pub mod gbpa {
    /// Set by software with a new value, cleared by the SMMU when applied.
    pub const UPDATE: u32 = 1 << 31;
    /// Abort every transaction while SMMUEN is clear.
    pub const ABORT: u32 = 1 << 20;
}

/// GERROR / GERRORN bits: an error is active while the bits differ;
/// software acknowledges by toggling GERRORN.
pub mod gerror {
    /// Command queue error (details in CMDQ_CONS.ERR).
    pub const CMDQ_ERR: u32 = 1 << 0;
    /// An event queue write aborted.
    pub const EVENTQ_ABT_ERR: u32 = 1 << 2;
    /// A PRI queue write aborted.
    pub const PRIQ_ABT_ERR: u32 = 1 << 3;
    /// MSI write aborts (bits 4..7).
    pub const MSI_ABT_ERRS: u32 = 0xf << 4;
    /// Service failure mode.
    pub const SFM_ERR: u32 = 1 << 8;
    /// Every defined bit.
    pub const ALL: u32 = CMDQ_ERR | EVENTQ_ABT_ERR | PRIQ_ABT_ERR | MSI_ABT_ERRS | SFM_ERR;
}

/// STRTAB_BASE_CFG fields.
pub mod strtab_cfg {
    /// FMT = 2-level.
    pub const FMT_2LVL: u32 = 1 << 16;

    /// The register value: `log2size` StreamID bits, `split` (2-level
    /// only), linear or 2-level.
    #[must_use]
    pub const fn value(log2size: u32, split: u32, two_level: bool) -> u32 {
        let fmt = if two_level { FMT_2LVL } else { 0 };
        fmt | ((split & 0x1f) << 6) | (log2size & 0x3f)
    }
}

/// Queue base registers (CMDQ_BASE, EVENTQ_BASE) and index registers.
pub mod queue {
    /// Read/write-allocate hint for the queue's memory.
    pub const BASE_RWA: u64 = 1 << 62;
    /// Address bits of a queue base (51:5).
    pub const BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_ffe0;
    /// EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG.
    pub const OVERFLOW: u32 = 1 << 31;

    /// A queue base register value.
    #[must_use]
    pub const fn base(addr: u64, log2size: u32) -> u64 {
        BASE_RWA | (addr & BASE_ADDR_MASK) | (log2size as u64 & 0x1f)
    }

    /// CMDQ_CONS.ERR: the error code of a command queue error.
    #[must_use]
    pub const fn cmdq_err(cons: u32) -> u32 {
        (cons >> 24) & 0x7f
    }
}

/// STRTAB_BASE: read-allocate hint and address bits 51:6.
pub mod strtab_base {
    /// Read-allocate hint.
    pub const RA: u64 = 1 << 62;
    /// Address bits.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
}
