//! Sluice's Arm SMMUv3 driver.
//!
//! One SMMU is driven with a single translation stage (Arm IHI 0070):
//! stage 2 when IDR0.S2P (STE.Config = S2 translate, S2VMID = the core's
//! domain tag, S2TTB = the root of tables the core's engine wrote in the
//! [`ArmStage2`] format, whose IPA size honours S2T0SZ >= 64 - OAS), or
//! stage 1 when only IDR0.S1P (STE.Config = S1 translate pointing at one
//! context descriptor per domain: ASID = tag, TTB0 = root, [`ArmStage1`]
//! format, MAIR from it). A blocked or replaced device gets an abort STE
//! (V = 1, Config = abort); the driver never writes a bypass STE, and GBPA
//! aborts everything while the SMMU is disabled. STE changes go through an
//! abort STE, each step followed by CFGI_STE and CMD_SYNC, so a device
//! never translates through a half-written entry.
//!
//! The stream table is linear while its STEs fit one 4 KiB page
//! (SIDSIZE <= 6), else 2-level with SPLIT 6 and level-2 tables made on
//! first use; a one-page level-1 table covers 15 StreamID bits, so with
//! QEMU's SIDSIZE 16 requester ids from 0x8000 up are refused. The command
//! queue (256 entries) and event queue (128 entries) are one page each.
//!
//! Invalidation: CFGI_ALL + TLBI_NSNH_ALL (+ TLBI_EL2_ALL with IDR0.HYP)
//! at bring-up; TLBI_S2_IPA (stage 2) or TLBI_NH_VA (stage 1) by range
//! (TG/NUM/SCALE/TTL) with IDR3.RIL, per leaf of the smallest removed size
//! without it (up to [`MAX_LEAF_COMMANDS`]), TLBI_S12_VMALL / TLBI_NH_ASID
//! for whole domains; Leaf is set when no table page was unlinked. Every
//! batch ends with CMD_SYNC, whose completion is seen by CMDQ_CONS passing
//! it (CS = SEV when IDR0.SEV, else none); a rejected command
//! (GERROR.CMDQ_ERR) is overwritten with CMD_SYNC, acknowledged and
//! reported as `IommuError::Refused`. Every wait is bounded by [`WAIT_US`]
//! on the platform's [`Clock`] and reported as `IommuError::Timeout`.
//!
//! Faults are polled: [`Iommu::drain_faults`] reads the event queue
//! (EVENTQ_PROD/CONS in register page 1), counts overflows (OVFLG) and
//! acknowledges global errors through GERRORN.
//!
//! Left out: MSIs and wired interrupts (everything is polled), the PRI
//! queue, ATS, stalls, substreams (S1CDMax 0), nested translation, 16/64
//! KiB granules, 52-bit addresses, 2-level CD tables, secure state, cache
//! maintenance of the event queue for a non-coherent SMMU (TableMemory
//! only cleans what the CPU wrote), and freeing context descriptor pages
//! (a CD slot stays with its tag). A device behind an abort STE faults
//! without an event record (the architecture records none), so blocked
//! DMA shows up in [`Iommu::drain_faults`] only for StreamIDs that were
//! never configured (C_BAD_STE, C_BAD_STREAMID).
//!
//! [`ArmStage2`]: sluice_kernel::pt::ArmStage2
//! [`ArmStage1`]: sluice_kernel::pt::ArmStage1
//! [`Iommu::drain_faults`]: sluice_kernel::iommu::Iommu::drain_faults
//! [`Clock`]: sluice_kernel::time::Clock
#![no_std]

extern crate alloc;

pub mod caps;
pub mod desc;
pub mod regs;
mod unit;

pub use caps::Caps;
pub use desc::RawEvent;
pub use unit::{InitError, MAX_LEAF_COMMANDS, SmmuV3Unit, Stage, StagePreference, Stats, WAIT_US};
