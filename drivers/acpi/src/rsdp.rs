//! The Root System Description Pointer (ACPI 6.5, section 5.2.5).

use alloc::vec;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use crate::{AcpiError, PhysRead};

/// Length of the ACPI 1.0 RSDP, covered by the first checksum.
const RSDP_V1_LEN: usize = 20;
/// Length of the ACPI 2.0+ RSDP.
const RSDP_V2_LEN: usize = 36;
/// Longest extended RSDP accepted (the length field is 32 bits).
const RSDP_MAX_LEN: u32 = 1024;
const RSDP_SIGNATURE: [u8; 8] = *b"RSD PTR ";

/// The ACPI 2.0+ RSDP as laid out in memory; an ACPI 1.0 RSDP is its first
/// 20 bytes.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawRsdp {
    signature: [u8; 8],
    checksum: u8,
    oem_id: [u8; 6],
    revision: u8,
    rsdt_address: U32,
    length: U32,
    xsdt_address: U64,
    extended_checksum: u8,
    reserved: [u8; 3],
}
const _: () = assert!(size_of::<RawRsdp>() == RSDP_V2_LEN);

/// A validated RSDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    /// 0 for ACPI 1.0 (RSDT only), 2 for ACPI 2.0 and later.
    pub revision: u8,
    /// OEM identifier, as found (not necessarily ASCII).
    pub oem_id: [u8; 6],
    /// 32-bit physical address of the RSDT (may be 0 on 2.0+ systems).
    pub rsdt_address: u32,
    /// 64-bit physical address of the XSDT: `Some` only for revision >= 2
    /// with a non-zero address.
    pub xsdt_address: Option<u64>,
}

impl Rsdp {
    /// Parse an RSDP from bytes (for example the copy a Multiboot2 loader
    /// puts in its ACPI tags). Checks the signature and the 20-byte checksum;
    /// for revision >= 2 also the length field and the extended checksum
    /// over that length.
    pub fn parse(bytes: &[u8]) -> Result<Self, AcpiError> {
        let v1 = bytes.get(..RSDP_V1_LEN).ok_or(AcpiError::RsdpTooShort {
            length: bytes.len(),
        })?;
        if v1[..8] != RSDP_SIGNATURE {
            return Err(AcpiError::BadRsdpSignature);
        }
        if !crate::sdt::checksum_ok(v1) {
            return Err(AcpiError::BadRsdpChecksum);
        }
        let revision = v1[15];
        let mut oem_id = [0u8; 6];
        oem_id.copy_from_slice(&v1[9..15]);
        let rsdt_address = u32::from_le_bytes([v1[16], v1[17], v1[18], v1[19]]);
        if revision < 2 {
            return Ok(Self {
                revision,
                oem_id,
                rsdt_address,
                xsdt_address: None,
            });
        }
        let (raw, _) = RawRsdp::read_from_prefix(bytes).map_err(|_| AcpiError::RsdpTooShort {
            length: bytes.len(),
        })?;
        let length = raw.length.get();
        if (length as usize) < RSDP_V2_LEN || length > RSDP_MAX_LEN {
            return Err(AcpiError::BadRsdpLength { length });
        }
        let extended = bytes
            .get(..length as usize)
            .ok_or(AcpiError::RsdpTooShort {
                length: bytes.len(),
            })?;
        if !crate::sdt::checksum_ok(extended) {
            return Err(AcpiError::BadRsdpChecksum);
        }
        let xsdt = raw.xsdt_address.get();
        Ok(Self {
            revision,
            oem_id,
            rsdt_address,
            xsdt_address: (xsdt != 0).then_some(xsdt),
        })
    }

    /// Read and validate the RSDP at physical address `pa` (for example the
    /// `rsdp_paddr` of a PVH start info, or a UEFI configuration table entry).
    pub fn read<M: PhysRead + ?Sized>(mem: &M, pa: u64) -> Result<Self, AcpiError> {
        let mut head = [0u8; RSDP_V2_LEN];
        mem.read(pa, &mut head[..RSDP_V1_LEN])?;
        if head[15] < 2 {
            return Self::parse(&head[..RSDP_V1_LEN]);
        }
        mem.read(pa, &mut head)?;
        let length = u32::from_le_bytes([head[20], head[21], head[22], head[23]]);
        if length as usize <= RSDP_V2_LEN || length > RSDP_MAX_LEN {
            // Either exactly the usual size, or rejected by `parse`.
            return Self::parse(&head);
        }
        let mut full = vec![0u8; length as usize];
        mem.read(pa, &mut full)?;
        Self::parse(&full)
    }

    /// Physical address of the root table to use and whether it is the XSDT
    /// (64-bit entries): the XSDT when the RSDP has one, else the RSDT.
    pub fn root_table(&self) -> (u64, crate::RootKind) {
        match self.xsdt_address {
            Some(xsdt) => (xsdt, crate::RootKind::Xsdt),
            None => (u64::from(self.rsdt_address), crate::RootKind::Rsdt),
        }
    }
}

/// Search the legacy BIOS areas for the RSDP, as ACPI 6.5 section 5.2.5.1
/// describes: the first KiB of the EBDA (its segment is the 16-bit word at
/// physical 0x40e), then 0xe0000..0x100000, on 16-byte boundaries. Returns
/// the physical address of the first candidate that validates.
///
/// Only for BIOS boots; UEFI and PVH give the address directly.
pub fn find_rsdp_in_bios_areas<M: PhysRead + ?Sized>(mem: &M) -> Result<u64, AcpiError> {
    let mut ebda_segment = [0u8; 2];
    if mem.read(0x40e, &mut ebda_segment).is_ok() {
        let ebda = u64::from(u16::from_le_bytes(ebda_segment)) << 4;
        // A real EBDA lives below the 640 KiB line, above the BDA.
        if (0x500..0xa0000).contains(&ebda) {
            if let Some(pa) = scan(mem, ebda, 1024) {
                return Ok(pa);
            }
        }
    }
    scan(mem, 0xe0000, 0x20000).ok_or(AcpiError::RsdpNotFound)
}

/// Scan `len` bytes at `start` on 16-byte boundaries; `None` if the area
/// cannot be read or holds no valid RSDP.
fn scan<M: PhysRead + ?Sized>(mem: &M, start: u64, len: usize) -> Option<u64> {
    let mut area = vec![0u8; len];
    mem.read(start, &mut area).ok()?;
    (0..len)
        .step_by(16)
        .filter(|&off| area[off..].starts_with(&RSDP_SIGNATURE))
        .map(|off| start + off as u64)
        .find(|&pa| Rsdp::read(mem, pa).is_ok())
}
