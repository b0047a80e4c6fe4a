//! MCFG: where the PCIe enhanced configuration (ECAM) windows are (PCI
//! Firmware Specification 3.3, section 4.1.2).

use alloc::vec::Vec;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use crate::AcpiError;
use crate::sdt::{SDT_HEADER_LEN, SdtHeader, checksum_ok};

/// MCFG fixed part: the SDT header and 8 reserved bytes.
const MCFG_FIXED_LEN: usize = SDT_HEADER_LEN + 8;

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawMcfgEntry {
    base: U64,
    segment: U16,
    bus_start: u8,
    bus_end: u8,
    reserved: U32,
}
const MCFG_ENTRY_LEN: usize = 16;
const _: () = assert!(size_of::<RawMcfgEntry>() == MCFG_ENTRY_LEN);

/// One ECAM window: configuration space of buses `bus_start..=bus_end` of
/// PCI segment `segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamRegion {
    /// Physical address that corresponds to bus 0 of the segment, as the
    /// MCFG defines it, even when `bus_start` is not 0 (the window itself
    /// starts at `base + (bus_start << 20)`).
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub bus_start: u8,
    /// Last bus decoded (inclusive).
    pub bus_end: u8,
}

impl EcamRegion {
    /// Physical start and length of the part of the window that is decoded
    /// (1 MiB per bus).
    pub fn window(&self) -> (u64, u64) {
        let start = self.base.saturating_add(u64::from(self.bus_start) << 20);
        let len = (u64::from(self.bus_end) - u64::from(self.bus_start) + 1) << 20;
        (start, len)
    }

    /// Physical address of the 4 KiB configuration space of `bus:dev.func`,
    /// or `None` if the bus is outside the window or `dev`/`func` are out of
    /// range (dev < 32, func < 8).
    pub fn config_address(&self, bus: u8, dev: u8, func: u8) -> Option<u64> {
        if !(self.bus_start..=self.bus_end).contains(&bus) || dev >= 32 || func >= 8 {
            return None;
        }
        self.base
            .checked_add((u64::from(bus) << 20) | (u64::from(dev) << 15) | (u64::from(func) << 12))
    }
}

/// Parse an MCFG table from its bytes: checks the signature, the length
/// (at least the 44-byte fixed part, at most the bytes given) and the
/// checksum, and each entry's bus range (end not below start, window not
/// wrapping the address space). A trailing partial entry is ignored, as
/// some firmware has one.
pub fn parse_mcfg(bytes: &[u8]) -> Result<Vec<EcamRegion>, AcpiError> {
    let signature = *b"MCFG";
    let (header, _) = SdtHeader::read_from_prefix(bytes).map_err(|_| AcpiError::TableTooShort {
        signature,
        length: bytes.len() as u32,
    })?;
    if header.signature != signature {
        return Err(AcpiError::BadSignature {
            expected: signature,
            found: header.signature,
        });
    }
    let length = header.length.get();
    if (length as usize) < MCFG_FIXED_LEN {
        return Err(AcpiError::TableTooShort { signature, length });
    }
    let table = bytes
        .get(..length as usize)
        .ok_or(AcpiError::TableTooLong { signature, length })?;
    if !checksum_ok(table) {
        return Err(AcpiError::BadChecksum { signature });
    }
    table[MCFG_FIXED_LEN..]
        .chunks_exact(MCFG_ENTRY_LEN)
        .enumerate()
        .map(|(index, chunk)| {
            let raw = RawMcfgEntry::read_from_bytes(chunk)
                .map_err(|_| AcpiError::BadMcfgEntry { index })?;
            let region = EcamRegion {
                base: raw.base.get(),
                segment: raw.segment.get(),
                bus_start: raw.bus_start,
                bus_end: raw.bus_end,
            };
            let window_end = region
                .base
                .checked_add((u64::from(region.bus_end) + 1) << 20);
            if region.bus_end < region.bus_start || window_end.is_none() {
                return Err(AcpiError::BadMcfgEntry { index });
            }
            Ok(region)
        })
        .collect()
}
