//! Discovery: RSDP -> RSDT/XSDT -> the tables this crate knows.

use alloc::vec::Vec;
use core::fmt;

use crate::sdt::{self, SDT_HEADER_LEN};
use crate::{Dmar, DmarError, EcamRegion, PhysRead, PhysReadError, Rsdp};

/// Which root table the entries came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// ACPI 1.0 RSDT: 32-bit table addresses.
    Rsdt,
    /// ACPI 2.0+ XSDT: 64-bit table addresses.
    Xsdt,
}

/// One table listed by the root table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// The table's four-byte signature, for example `*b"DMAR"`.
    pub signature: [u8; 4],
    /// Physical address of the table's header.
    pub address: u64,
    /// The length its header claims (checked when the table is read).
    pub length: u32,
}

/// Errors of discovery and of the RSDP, RSDT/XSDT and MCFG parsers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcpiError {
    /// Physical memory could not be read.
    Read(PhysReadError),
    /// No valid RSDP in the BIOS areas.
    RsdpNotFound,
    /// Fewer bytes than the RSDP needs.
    RsdpTooShort {
        /// Bytes available.
        length: usize,
    },
    /// The RSDP does not start with `"RSD PTR "`.
    BadRsdpSignature,
    /// The RSDP's 20-byte or extended checksum is wrong.
    BadRsdpChecksum,
    /// A revision >= 2 RSDP with a length below 36 or absurdly large.
    BadRsdpLength {
        /// The length field.
        length: u32,
    },
    /// A table does not carry the signature it was looked up by.
    BadSignature {
        /// The signature wanted.
        expected: [u8; 4],
        /// The signature found.
        found: [u8; 4],
    },
    /// A table's length is below its fixed part.
    TableTooShort {
        /// The table's signature.
        signature: [u8; 4],
        /// Its length field (or the bytes available, if fewer).
        length: u32,
    },
    /// A table's length exceeds [`crate::MAX_TABLE_LEN`], or the bytes
    /// given to a parser are fewer than the length field says.
    TableTooLong {
        /// The table's signature.
        signature: [u8; 4],
        /// Its length field.
        length: u32,
    },
    /// A table's bytes do not sum to zero.
    BadChecksum {
        /// The table's signature.
        signature: [u8; 4],
    },
    /// The root table lists no table with this signature.
    NotFound {
        /// The signature looked for.
        signature: [u8; 4],
    },
    /// An MCFG entry whose end bus is below its start bus.
    BadMcfgEntry {
        /// Index of the entry in the MCFG.
        index: usize,
    },
    /// The DMAR was found but does not parse.
    Dmar(DmarError),
}

impl From<PhysReadError> for AcpiError {
    fn from(e: PhysReadError) -> Self {
        Self::Read(e)
    }
}

impl From<DmarError> for AcpiError {
    fn from(e: DmarError) -> Self {
        Self::Dmar(e)
    }
}

/// Signature bytes for messages (non-ASCII bytes as `?`).
pub(crate) struct Sig(pub [u8; 4]);

impl fmt::Display for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Read(e) => write!(f, "{e}"),
            Self::RsdpNotFound => write!(f, "no RSDP in the BIOS areas"),
            Self::RsdpTooShort { length } => write!(f, "RSDP: only {length} bytes"),
            Self::BadRsdpSignature => write!(f, "RSDP: bad signature"),
            Self::BadRsdpChecksum => write!(f, "RSDP: bad checksum"),
            Self::BadRsdpLength { length } => write!(f, "RSDP: bad length {length}"),
            Self::BadSignature { expected, found } => {
                write!(f, "expected table {}, found {}", Sig(expected), Sig(found))
            }
            Self::TableTooShort { signature, length } => {
                write!(f, "{}: too short ({length} bytes)", Sig(signature))
            }
            Self::TableTooLong { signature, length } => {
                write!(f, "{}: length {length} too long", Sig(signature))
            }
            Self::BadChecksum { signature } => write!(f, "{}: bad checksum", Sig(signature)),
            Self::NotFound { signature } => write!(f, "no {} table", Sig(signature)),
            Self::BadMcfgEntry { index } => {
                write!(f, "MCFG entry {index}: end bus below start bus")
            }
            Self::Dmar(e) => write!(f, "DMAR: {e}"),
        }
    }
}

impl core::error::Error for AcpiError {}

/// The tables listed by a validated RSDT or XSDT.
///
/// Construction reads and checks the root table (signature, length,
/// checksum) and the header of every table it lists; a table's own length
/// and checksum are checked when it is read ([`Self::read_table`],
/// [`Self::mcfg`], [`Self::dmar`]). Null entries are skipped; trailing bytes
/// that do not make a whole entry are ignored, as ACPICA does. An entry whose
/// header cannot be read fails construction ([`AcpiError::Read`]): the
/// caller's [`PhysRead`] must cover every table the firmware lists.
#[derive(Clone, Debug)]
pub struct AcpiTables {
    rsdp: Rsdp,
    root_address: u64,
    root_kind: RootKind,
    entries: Vec<TableEntry>,
}

impl AcpiTables {
    /// Discover the tables from the RSDP at physical address `rsdp_pa`.
    pub fn from_rsdp_address<M: PhysRead + ?Sized>(
        mem: &M,
        rsdp_pa: u64,
    ) -> Result<Self, AcpiError> {
        Self::from_rsdp(mem, Rsdp::read(mem, rsdp_pa)?)
    }

    /// Discover the tables from an already validated RSDP (for example one
    /// parsed from a Multiboot2 tag). Revision >= 2 with an XSDT address uses
    /// the XSDT (64-bit entries); otherwise the RSDT (32-bit entries).
    pub fn from_rsdp<M: PhysRead + ?Sized>(mem: &M, rsdp: Rsdp) -> Result<Self, AcpiError> {
        let (root_address, root_kind) = rsdp.root_table();
        let (signature, entry_len) = match root_kind {
            RootKind::Rsdt => (*b"RSDT", 4),
            RootKind::Xsdt => (*b"XSDT", 8),
        };
        let root = sdt::read_table(mem, root_address, signature)?;
        let mut entries = Vec::new();
        for chunk in root[SDT_HEADER_LEN..].chunks_exact(entry_len) {
            let address = match *chunk {
                [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
                [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
                _ => unreachable!("chunks_exact yields 4 or 8 bytes"),
            };
            if address == 0 {
                continue;
            }
            let header = sdt::read_header(mem, address)?;
            entries.push(TableEntry {
                signature: header.signature,
                address,
                length: header.length.get(),
            });
        }
        Ok(Self {
            rsdp,
            root_address,
            root_kind,
            entries,
        })
    }

    /// The RSDP discovery started from.
    pub fn rsdp(&self) -> &Rsdp {
        &self.rsdp
    }

    /// Physical address and kind of the root table used.
    pub fn root(&self) -> (u64, RootKind) {
        (self.root_address, self.root_kind)
    }

    /// Every table the root table lists, in its order.
    pub fn entries(&self) -> &[TableEntry] {
        &self.entries
    }

    /// The first table with this signature.
    pub fn find(&self, signature: [u8; 4]) -> Option<&TableEntry> {
        self.entries.iter().find(|e| e.signature == signature)
    }

    /// Read the first table with this signature into an owned buffer,
    /// checking its signature, length and checksum.
    pub fn read_table<M: PhysRead + ?Sized>(
        &self,
        mem: &M,
        signature: [u8; 4],
    ) -> Result<Vec<u8>, AcpiError> {
        let entry = self
            .find(signature)
            .ok_or(AcpiError::NotFound { signature })?;
        sdt::read_table(mem, entry.address, signature)
    }

    /// The ECAM regions of the MCFG table.
    pub fn mcfg<M: PhysRead + ?Sized>(&self, mem: &M) -> Result<Vec<EcamRegion>, AcpiError> {
        crate::parse_mcfg(&self.read_table(mem, *b"MCFG")?)
    }

    /// The parsed DMAR table.
    pub fn dmar<M: PhysRead + ?Sized>(&self, mem: &M) -> Result<Dmar, AcpiError> {
        Ok(Dmar::parse(&self.read_table(mem, *b"DMAR")?)?)
    }
}
