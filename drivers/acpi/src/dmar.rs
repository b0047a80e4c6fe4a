//! The DMA Remapping Reporting table (Intel VT-d specification, chapter 8).
//!
//! [`Dmar::parse`] turns the table's bytes into plain owned types. Every
//! length field is checked against its parent before anything is read
//! through it, so a malformed table gives a [`DmarError`], never a panic or
//! an endless loop: every structure is at least 4 bytes and every device
//! scope at least 8, so each step moves forward.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use crate::sdt::{SdtHeader, checksum_ok};
use crate::tables::Sig;

/// Defines a flags byte: a newtype with named bits, `bits`, `contains`, and
/// a `Debug` that lists the named bits set.
macro_rules! flags_u8 {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $flag:ident = $bit:expr;)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name(u8);

        impl $name {
            $($(#[$fm])* pub const $flag: Self = Self($bit);)*

            /// Flags from the raw byte, keeping reserved bits.
            pub const fn from_bits_retain(bits: u8) -> Self {
                Self(bits)
            }

            /// The raw byte, including reserved bits.
            pub const fn bits(self) -> u8 {
                self.0
            }

            /// Whether every bit of `other` is set in `self`.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }
        }

        impl core::ops::BitOr for $name {
            type Output = Self;
            fn bitor(self, rhs: Self) -> Self {
                Self(self.0 | rhs.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#04x}", stringify!($name), self.0)?;
                $(if self.contains(Self::$flag) {
                    write!(f, " {}", stringify!($flag))?;
                })*
                write!(f, ")")
            }
        }
    };
}

flags_u8! {
    /// DMAR header flags.
    DmarFlags {
        /// The platform supports interrupt remapping.
        INTR_REMAP = 1 << 0;
        /// Firmware asks not to enable x2APIC mode.
        X2APIC_OPT_OUT = 1 << 1;
        /// Firmware may have set up DMA protection that the OS must take
        /// over (DMA_CTRL_PLATFORM_OPT_IN_FLAG).
        DMA_CTRL_PLATFORM_OPT_IN = 1 << 2;
    }
}

flags_u8! {
    /// DRHD flags.
    DrhdFlags {
        /// The unit covers every PCI device of its segment not covered by
        /// another unit's device scopes.
        INCLUDE_PCI_ALL = 1 << 0;
    }
}

flags_u8! {
    /// ATSR flags.
    AtsrFlags {
        /// Every root port of the segment supports ATS.
        ALL_PORTS = 1 << 0;
    }
}

flags_u8! {
    /// SATC flags.
    SatcFlags {
        /// The devices must have ATS enabled for the platform to work
        /// correctly (ATC_REQUIRED).
        ATC_REQUIRED = 1 << 0;
    }
}

/// Kind of a device scope entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    /// 1: a PCI endpoint device.
    PciEndpoint,
    /// 2: a PCI-PCI bridge and every device below it.
    PciSubHierarchy,
    /// 3: an I/O APIC (`enumeration_id` is its APIC id).
    IoApic,
    /// 4: an MSI-capable HPET (`enumeration_id` is its HPET number).
    Hpet,
    /// 5: an ACPI namespace device (`enumeration_id` is its ANDD number).
    AcpiNamespace,
    /// Any other (reserved) type, kept as found.
    Other(u8),
}

impl ScopeKind {
    fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::PciEndpoint,
            2 => Self::PciSubHierarchy,
            3 => Self::IoApic,
            4 => Self::Hpet,
            5 => Self::AcpiNamespace,
            other => Self::Other(other),
        }
    }
}

/// One hop of a device scope path: a device and function on the current bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathEntry {
    /// Device number (0..32).
    pub dev: u8,
    /// Function number (0..8).
    pub func: u8,
}

/// A device scope entry (VT-d 8.3.1): which device(s) a structure applies to.
///
/// The device is found by starting on bus `start_bus`; every path entry but
/// the last is a PCI-PCI bridge whose secondary bus is where the next entry
/// lives, and the last entry is the device itself (see
/// [`DeviceScope::resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceScope {
    /// Scope type.
    pub kind: ScopeKind,
    /// Flags byte (reserved in older revisions of the specification).
    pub flags: u8,
    /// I/O APIC id, HPET number or ANDD device number; 0 for PCI scopes.
    pub enumeration_id: u8,
    /// Bus where the path starts.
    pub start_bus: u8,
    /// The path, never empty.
    pub path: Vec<PathEntry>,
}

/// DMA remapping hardware unit definition (type 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drhd {
    /// Flags.
    pub flags: DrhdFlags,
    /// Raw size field: bits 3:0 give the register set size as 2^N 4 KiB
    /// pages (0 in tables older than that field).
    pub size: u8,
    /// PCI segment of the devices in scope.
    pub segment: u16,
    /// Physical base address of the unit's register set (4 KiB aligned).
    pub register_base: u64,
    /// Device scopes: PCI devices and bridges (none with INCLUDE_PCI_ALL),
    /// I/O APICs, HPETs, ACPI namespace devices.
    pub scopes: Vec<DeviceScope>,
}

impl Drhd {
    /// Whether this unit covers every device of its segment not listed by
    /// another unit.
    pub fn include_pci_all(&self) -> bool {
        self.flags.contains(DrhdFlags::INCLUDE_PCI_ALL)
    }

    /// Size in bytes of the register set (4 KiB << bits 3:0 of `size`).
    pub fn register_size(&self) -> u64 {
        4096 << (self.size & 0xf)
    }
}

/// Reserved memory region reporting (type 1): memory that devices in scope
/// may DMA to at any time, which must stay identity-mapped for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rmrr {
    /// PCI segment of the devices in scope.
    pub segment: u16,
    /// First byte of the region (should be 4 KiB aligned; taken as found).
    pub base: u64,
    /// Last byte of the region, inclusive (limit + 1 should be 4 KiB
    /// aligned; taken as found).
    pub limit: u64,
    /// The devices that use the region.
    pub scopes: Vec<DeviceScope>,
}

/// Root port ATS capability reporting (type 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Atsr {
    /// Flags.
    pub flags: AtsrFlags,
    /// PCI segment.
    pub segment: u16,
    /// Root ports that support ATS (empty with ALL_PORTS).
    pub scopes: Vec<DeviceScope>,
}

/// Remapping hardware static affinity (type 3): the NUMA proximity domain of
/// a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rhsa {
    /// Register base address of the unit it describes.
    pub register_base: u64,
    /// ACPI proximity domain.
    pub proximity_domain: u32,
}

/// ACPI name-space device declaration (type 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Andd {
    /// Device number that `AcpiNamespace` device scopes refer to through
    /// their enumeration id.
    pub device_number: u8,
    /// The device's ACPI object name, up to its NUL (lossily decoded).
    pub name: String,
}

/// SoC integrated address translation cache reporting (type 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Satc {
    /// Flags.
    pub flags: SatcFlags,
    /// PCI segment.
    pub segment: u16,
    /// The ATC-capable devices.
    pub scopes: Vec<DeviceScope>,
}

/// A parsed DMAR table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmar {
    /// Maximum DMA physical address width in bits (the table's field + 1).
    pub host_address_width: u8,
    /// Header flags.
    pub flags: DmarFlags,
    /// Remapping units, in table order; [`Dmar::unit_for`] returns indices
    /// into this list.
    pub drhds: Vec<Drhd>,
    /// Reserved memory regions, in table order.
    pub rmrrs: Vec<Rmrr>,
    /// ATS capability reports, in table order.
    pub atsrs: Vec<Atsr>,
    /// Unit proximity domains.
    pub rhsas: Vec<Rhsa>,
    /// ACPI namespace device declarations.
    pub andds: Vec<Andd>,
    /// SoC integrated ATC reports.
    pub satcs: Vec<Satc>,
    /// Types of the structures skipped because this parser does not know
    /// them (for example type 6, SIDP, of VT-d 4.x), in table order.
    pub skipped: Vec<u16>,
}

/// Why a DMAR table was rejected. Offsets are byte offsets from the start
/// of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DmarError {
    /// Fewer bytes than the 48-byte DMAR header, or a length field below it.
    TableTooShort {
        /// The bytes available or the length field, whichever was short.
        length: usize,
    },
    /// The signature is not `DMAR`.
    BadSignature {
        /// The signature found.
        found: [u8; 4],
    },
    /// The length field claims more bytes than were given.
    LengthMismatch {
        /// The length field.
        length: u32,
        /// The bytes given.
        available: usize,
    },
    /// The table's bytes do not sum to zero.
    BadChecksum,
    /// The host address width field gives more than 64 bits.
    BadHostAddressWidth {
        /// The raw field (width - 1).
        field: u8,
    },
    /// Fewer than 4 bytes left for a structure header.
    StructureTruncated {
        /// Where the structure starts.
        offset: usize,
    },
    /// A structure's length is below the fixed part of its type (a zero
    /// length is reported here).
    StructureLength {
        /// Where the structure starts.
        offset: usize,
        /// Its type.
        ty: u16,
        /// Its length field.
        length: u16,
    },
    /// A structure's length runs past the end of the table.
    StructureOverrun {
        /// Where the structure starts.
        offset: usize,
        /// Its type.
        ty: u16,
        /// Its length field.
        length: u16,
    },
    /// Fewer than 2 bytes left for a device scope header.
    ScopeTruncated {
        /// Where the scope starts.
        offset: usize,
    },
    /// A device scope's length is below 8 or leaves half a path entry.
    ScopeLength {
        /// Where the scope starts.
        offset: usize,
        /// Its length field.
        length: u8,
    },
    /// A device scope's length runs past the end of its structure.
    ScopeOverrun {
        /// Where the scope starts.
        offset: usize,
        /// Its length field.
        length: u8,
    },
    /// A path entry with device >= 32 or function >= 8.
    BadScopePath {
        /// Where the scope starts.
        offset: usize,
    },
    /// A DRHD register base that is zero or not 4 KiB aligned.
    BadRegisterBase {
        /// Where the DRHD starts.
        offset: usize,
        /// The address.
        base: u64,
    },
    /// An RMRR whose base is above its limit.
    BadRmrrRange {
        /// Where the RMRR starts.
        offset: usize,
        /// Its base.
        base: u64,
        /// Its (inclusive) limit.
        limit: u64,
    },
    /// Two DRHDs with INCLUDE_PCI_ALL for the same segment.
    DuplicateIncludeAll {
        /// The segment.
        segment: u16,
    },
}

impl fmt::Display for DmarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TableTooShort { length } => write!(f, "table too short ({length} bytes)"),
            Self::BadSignature { found } => write!(f, "signature {} instead of DMAR", Sig(found)),
            Self::LengthMismatch { length, available } => {
                write!(f, "length field {length} but {available} bytes given")
            }
            Self::BadChecksum => write!(f, "bad checksum"),
            Self::BadHostAddressWidth { field } => {
                write!(f, "host address width field {field} above 63")
            }
            Self::StructureTruncated { offset } => {
                write!(f, "truncated structure header at {offset:#x}")
            }
            Self::StructureLength { offset, ty, length } => {
                write!(
                    f,
                    "structure type {ty} at {offset:#x}: length {length} too small"
                )
            }
            Self::StructureOverrun { offset, ty, length } => {
                write!(
                    f,
                    "structure type {ty} at {offset:#x}: length {length} runs past the table"
                )
            }
            Self::ScopeTruncated { offset } => write!(f, "truncated device scope at {offset:#x}"),
            Self::ScopeLength { offset, length } => {
                write!(f, "device scope at {offset:#x}: bad length {length}")
            }
            Self::ScopeOverrun { offset, length } => {
                write!(
                    f,
                    "device scope at {offset:#x}: length {length} runs past its structure"
                )
            }
            Self::BadScopePath { offset } => write!(
                f,
                "device scope at {offset:#x}: device or function out of range"
            ),
            Self::BadRegisterBase { offset, base } => {
                write!(f, "DRHD at {offset:#x}: bad register base {base:#x}")
            }
            Self::BadRmrrRange {
                offset,
                base,
                limit,
            } => {
                write!(
                    f,
                    "RMRR at {offset:#x}: base {base:#x} above limit {limit:#x}"
                )
            }
            Self::DuplicateIncludeAll { segment } => {
                write!(f, "two INCLUDE_PCI_ALL units for segment {segment}")
            }
        }
    }
}

impl core::error::Error for DmarError {}

// Raw layouts (all little-endian, byte-aligned).

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawDmarHeader {
    sdt: SdtHeader,
    host_address_width: u8,
    flags: u8,
    reserved: [u8; 10],
}
const DMAR_HEADER_LEN: usize = 48;
const _: () = assert!(size_of::<RawDmarHeader>() == DMAR_HEADER_LEN);

/// Type and length, the start of every remapping structure.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawStructHeader {
    ty: U16,
    length: U16,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawDrhd {
    header: RawStructHeader,
    flags: u8,
    size: u8,
    segment: U16,
    register_base: U64,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawRmrr {
    header: RawStructHeader,
    reserved: U16,
    segment: U16,
    base: U64,
    limit: U64,
}

/// ATSR and SATC share this layout.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawFlagsSegment {
    header: RawStructHeader,
    flags: u8,
    reserved: u8,
    segment: U16,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawRhsa {
    header: RawStructHeader,
    reserved: U32,
    register_base: U64,
    proximity_domain: U32,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawAndd {
    header: RawStructHeader,
    reserved: [u8; 3],
    device_number: u8,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawScope {
    ty: u8,
    length: u8,
    flags: u8,
    reserved: u8,
    enumeration_id: u8,
    start_bus: u8,
}

const _: () = {
    assert!(size_of::<RawStructHeader>() == 4);
    assert!(size_of::<RawDrhd>() == 16);
    assert!(size_of::<RawRmrr>() == 24);
    assert!(size_of::<RawFlagsSegment>() == 8);
    assert!(size_of::<RawRhsa>() == 20);
    assert!(size_of::<RawAndd>() == 8);
    assert!(size_of::<RawScope>() == 6);
};

const TYPE_DRHD: u16 = 0;
const TYPE_RMRR: u16 = 1;
const TYPE_ATSR: u16 = 2;
const TYPE_RHSA: u16 = 3;
const TYPE_ANDD: u16 = 4;
const TYPE_SATC: u16 = 5;

/// Smallest valid length of a structure of type `ty`.
fn min_len(ty: u16) -> usize {
    match ty {
        TYPE_DRHD => size_of::<RawDrhd>(),
        TYPE_RMRR => size_of::<RawRmrr>(),
        TYPE_ATSR | TYPE_SATC => size_of::<RawFlagsSegment>(),
        TYPE_RHSA => size_of::<RawRhsa>(),
        TYPE_ANDD => size_of::<RawAndd>(),
        _ => size_of::<RawStructHeader>(),
    }
}

/// Read a `T` from the start of `bytes`, whose length the caller checked.
fn read<T: FromBytes>(bytes: &[u8], offset: usize) -> Result<T, DmarError> {
    T::read_from_prefix(bytes)
        .map(|(v, _)| v)
        .map_err(|_| DmarError::StructureTruncated { offset })
}

/// Parse the device scopes filling `bytes`, which start at table offset
/// `offset`.
fn parse_scopes(bytes: &[u8], offset: usize) -> Result<Vec<DeviceScope>, DmarError> {
    let mut scopes = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let at = offset + pos;
        let rest = &bytes[pos..];
        let length = *rest
            .get(1)
            .ok_or(DmarError::ScopeTruncated { offset: at })?;
        let len = usize::from(length);
        if len < size_of::<RawScope>() + 2 || (len - size_of::<RawScope>()) % 2 != 0 {
            return Err(DmarError::ScopeLength { offset: at, length });
        }
        let entry = rest
            .get(..len)
            .ok_or(DmarError::ScopeOverrun { offset: at, length })?;
        let (raw, path_bytes) = RawScope::read_from_prefix(entry)
            .map_err(|_| DmarError::ScopeTruncated { offset: at })?;
        let path = path_bytes
            .chunks_exact(2)
            .map(|p| {
                if p[0] < 32 && p[1] < 8 {
                    Ok(PathEntry {
                        dev: p[0],
                        func: p[1],
                    })
                } else {
                    Err(DmarError::BadScopePath { offset: at })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        scopes.push(DeviceScope {
            kind: ScopeKind::from_raw(raw.ty),
            flags: raw.flags,
            enumeration_id: raw.enumeration_id,
            start_bus: raw.start_bus,
            path,
        });
        pos += len;
    }
    Ok(scopes)
}

impl Dmar {
    /// Parse a DMAR table from its bytes (exactly the table, or a buffer
    /// that starts with it): signature, length, checksum, then every
    /// remapping structure. Structures of unknown type are skipped by their
    /// length and their types recorded in [`Dmar::skipped`].
    pub fn parse(bytes: &[u8]) -> Result<Self, DmarError> {
        let (header, _) =
            RawDmarHeader::read_from_prefix(bytes).map_err(|_| DmarError::TableTooShort {
                length: bytes.len(),
            })?;
        if header.sdt.signature != *b"DMAR" {
            return Err(DmarError::BadSignature {
                found: header.sdt.signature,
            });
        }
        let length = header.sdt.length.get();
        if (length as usize) < DMAR_HEADER_LEN {
            return Err(DmarError::TableTooShort {
                length: length as usize,
            });
        }
        let table = bytes
            .get(..length as usize)
            .ok_or(DmarError::LengthMismatch {
                length,
                available: bytes.len(),
            })?;
        if !checksum_ok(table) {
            return Err(DmarError::BadChecksum);
        }
        if header.host_address_width > 63 {
            return Err(DmarError::BadHostAddressWidth {
                field: header.host_address_width,
            });
        }
        let mut dmar = Dmar {
            host_address_width: header.host_address_width + 1,
            flags: DmarFlags::from_bits_retain(header.flags),
            drhds: Vec::new(),
            rmrrs: Vec::new(),
            atsrs: Vec::new(),
            rhsas: Vec::new(),
            andds: Vec::new(),
            satcs: Vec::new(),
            skipped: Vec::new(),
        };

        let mut offset = DMAR_HEADER_LEN;
        while offset < table.len() {
            let rest = &table[offset..];
            let head: RawStructHeader = read(rest, offset)?;
            let (ty, length) = (head.ty.get(), head.length.get());
            let len = usize::from(length);
            if len < min_len(ty) {
                return Err(DmarError::StructureLength { offset, ty, length });
            }
            let body = rest
                .get(..len)
                .ok_or(DmarError::StructureOverrun { offset, ty, length })?;
            dmar.parse_structure(ty, body, offset)?;
            offset += len;
        }
        Ok(dmar)
    }

    /// Parse one structure whose type is `ty` and whose bytes (header
    /// included, length already checked against its type's fixed part) are
    /// `body`, found at table offset `offset`.
    fn parse_structure(&mut self, ty: u16, body: &[u8], offset: usize) -> Result<(), DmarError> {
        match ty {
            TYPE_DRHD => {
                let raw: RawDrhd = read(body, offset)?;
                let register_base = raw.register_base.get();
                if register_base == 0 || register_base % 4096 != 0 {
                    return Err(DmarError::BadRegisterBase {
                        offset,
                        base: register_base,
                    });
                }
                let drhd = Drhd {
                    flags: DrhdFlags::from_bits_retain(raw.flags),
                    size: raw.size,
                    segment: raw.segment.get(),
                    register_base,
                    scopes: parse_scopes(
                        &body[size_of::<RawDrhd>()..],
                        offset + size_of::<RawDrhd>(),
                    )?,
                };
                if drhd.include_pci_all()
                    && self
                        .drhds
                        .iter()
                        .any(|d| d.include_pci_all() && d.segment == drhd.segment)
                {
                    return Err(DmarError::DuplicateIncludeAll {
                        segment: drhd.segment,
                    });
                }
                self.drhds.push(drhd);
            }
            TYPE_RMRR => {
                let raw: RawRmrr = read(body, offset)?;
                let (base, limit) = (raw.base.get(), raw.limit.get());
                if base > limit {
                    return Err(DmarError::BadRmrrRange {
                        offset,
                        base,
                        limit,
                    });
                }
                self.rmrrs.push(Rmrr {
                    segment: raw.segment.get(),
                    base,
                    limit,
                    scopes: parse_scopes(
                        &body[size_of::<RawRmrr>()..],
                        offset + size_of::<RawRmrr>(),
                    )?,
                });
            }
            TYPE_ATSR | TYPE_SATC => {
                let raw: RawFlagsSegment = read(body, offset)?;
                let scopes = parse_scopes(
                    &body[size_of::<RawFlagsSegment>()..],
                    offset + size_of::<RawFlagsSegment>(),
                )?;
                let segment = raw.segment.get();
                if ty == TYPE_ATSR {
                    self.atsrs.push(Atsr {
                        flags: AtsrFlags::from_bits_retain(raw.flags),
                        segment,
                        scopes,
                    });
                } else {
                    self.satcs.push(Satc {
                        flags: SatcFlags::from_bits_retain(raw.flags),
                        segment,
                        scopes,
                    });
                }
            }
            TYPE_RHSA => {
                let raw: RawRhsa = read(body, offset)?;
                self.rhsas.push(Rhsa {
                    register_base: raw.register_base.get(),
                    proximity_domain: raw.proximity_domain.get(),
                });
            }
            TYPE_ANDD => {
                let raw: RawAndd = read(body, offset)?;
                let name = &body[size_of::<RawAndd>()..];
                let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
                self.andds.push(Andd {
                    device_number: raw.device_number,
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
            _ => self.skipped.push(ty),
        }
        Ok(())
    }
}
