//! The common ACPI system description table header, checksums, and reading
//! whole tables out of physical memory.

use alloc::vec;
use alloc::vec::Vec;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::{AcpiError, PhysRead};

/// Longest table this crate reads (16 MiB). A corrupted length field could
/// otherwise ask for a 4 GiB buffer; real RSDT/XSDT/MCFG/DMAR tables are a
/// few KiB at most.
pub const MAX_TABLE_LEN: u32 = 16 << 20;

/// The 36-byte header every ACPI system description table starts with
/// (ACPI 6.5, section 5.2.6).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct SdtHeader {
    pub signature: [u8; 4],
    pub length: U32,
    pub revision: u8,
    pub checksum: u8,
    pub oem_id: [u8; 6],
    pub oem_table_id: [u8; 8],
    pub oem_revision: U32,
    pub creator_id: [u8; 4],
    pub creator_revision: U32,
}

/// Size of [`SdtHeader`].
pub(crate) const SDT_HEADER_LEN: usize = 36;
const _: () = assert!(size_of::<SdtHeader>() == SDT_HEADER_LEN);

/// True when the bytes sum to zero modulo 256, the ACPI checksum rule.
pub(crate) fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

/// Read the header at `pa` (no checks beyond the read itself).
pub(crate) fn read_header<M: PhysRead + ?Sized>(mem: &M, pa: u64) -> Result<SdtHeader, AcpiError> {
    let mut header = SdtHeader::new_zeroed();
    mem.read(pa, header.as_mut_bytes())?;
    Ok(header)
}

/// Read the whole table at `pa` into an owned buffer and check that it has
/// the signature `signature`, a length between the header size and
/// [`MAX_TABLE_LEN`], and a valid checksum.
pub(crate) fn read_table<M: PhysRead + ?Sized>(
    mem: &M,
    pa: u64,
    signature: [u8; 4],
) -> Result<Vec<u8>, AcpiError> {
    let header = read_header(mem, pa)?;
    if header.signature != signature {
        return Err(AcpiError::BadSignature {
            expected: signature,
            found: header.signature,
        });
    }
    let length = header.length.get();
    if (length as usize) < SDT_HEADER_LEN {
        return Err(AcpiError::TableTooShort { signature, length });
    }
    if length > MAX_TABLE_LEN {
        return Err(AcpiError::TableTooLong { signature, length });
    }
    let mut bytes = vec![0u8; length as usize];
    mem.read(pa, &mut bytes)?;
    if !checksum_ok(&bytes) {
        return Err(AcpiError::BadChecksum { signature });
    }
    Ok(bytes)
}
