//! Host tests. Tables are written byte by byte by the builders below, from
//! the specifications' layouts, independently of the parser's structs.

mod discovery;
mod dmar;
mod fuzz;

use std::collections::BTreeMap;
use std::vec::Vec;

use crate::{Bdf, BridgeBuses, PhysRead, PhysReadError};

/// Little-endian byte writer.
#[derive(Default)]
pub(crate) struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// Make the bytes of `table` sum to zero by adjusting its checksum byte.
pub(crate) fn fix_checksum(table: &mut [u8], checksum_at: usize) {
    table[checksum_at] = 0;
    let sum = table.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    table[checksum_at] = sum.wrapping_neg();
}

/// A system description table: 36-byte header (length and checksum filled
/// in) followed by `body`.
pub(crate) fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut b = Bytes::default();
    b.raw(signature)
        .u32(36 + body.len() as u32)
        .u8(revision)
        .u8(0) // checksum, fixed below
        .raw(b"SLUICE")
        .raw(b"TESTTABL")
        .u32(1)
        .raw(b"SLCT")
        .u32(0x2024_0101)
        .raw(body);
    let mut t = b.0;
    assert_eq!(&t[..4], signature);
    fix_checksum(&mut t, 9);
    t
}

/// A device scope entry: type, length, flags, reserved, enumeration id,
/// start bus, then (device, function) pairs.
pub(crate) fn scope(ty: u8, enumeration_id: u8, start_bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
    let mut b = Bytes::default();
    b.u8(ty)
        .u8(6 + 2 * path.len() as u8)
        .u8(0)
        .u8(0)
        .u8(enumeration_id)
        .u8(start_bus);
    for &(d, f) in path {
        b.u8(d).u8(f);
    }
    b.0
}

pub(crate) const ENDPOINT: u8 = 1;
pub(crate) const BRIDGE: u8 = 2;
pub(crate) const IOAPIC: u8 = 3;
pub(crate) const HPET: u8 = 4;
pub(crate) const NAMESPACE: u8 = 5;

/// Writes a DMAR table structure by structure.
pub(crate) struct DmarBuilder {
    haw_field: u8,
    flags: u8,
    structures: Vec<u8>,
    /// Table offset of each structure added, in order.
    pub offsets: Vec<usize>,
}

impl DmarBuilder {
    /// A DMAR whose host address width is `haw_bits` (the field holds
    /// `haw_bits - 1`).
    pub fn new(haw_bits: u8, flags: u8) -> Self {
        Self {
            haw_field: haw_bits - 1,
            flags,
            structures: Vec::new(),
            offsets: Vec::new(),
        }
    }

    /// A structure of type `ty` whose length covers 4 + `payload.len()`.
    pub fn structure(mut self, ty: u16, payload: &[u8]) -> Self {
        self.offsets.push(48 + self.structures.len());
        let mut b = Bytes::default();
        b.u16(ty).u16(4 + payload.len() as u16).raw(payload);
        self.structures.extend_from_slice(&b.0);
        self
    }

    pub fn drhd(self, flags: u8, size: u8, segment: u16, base: u64, scopes: &[Vec<u8>]) -> Self {
        let mut b = Bytes::default();
        b.u8(flags)
            .u8(size)
            .u16(segment)
            .u64(base)
            .raw(&scopes.concat());
        self.structure(0, &b.0)
    }

    pub fn rmrr(self, segment: u16, base: u64, limit: u64, scopes: &[Vec<u8>]) -> Self {
        let mut b = Bytes::default();
        b.u16(0)
            .u16(segment)
            .u64(base)
            .u64(limit)
            .raw(&scopes.concat());
        self.structure(1, &b.0)
    }

    pub fn atsr(self, flags: u8, segment: u16, scopes: &[Vec<u8>]) -> Self {
        let mut b = Bytes::default();
        b.u8(flags).u8(0).u16(segment).raw(&scopes.concat());
        self.structure(2, &b.0)
    }

    pub fn rhsa(self, base: u64, domain: u32) -> Self {
        let mut b = Bytes::default();
        b.u32(0).u64(base).u32(domain);
        self.structure(3, &b.0)
    }

    pub fn andd(self, number: u8, name: &str) -> Self {
        let mut b = Bytes::default();
        b.u8(0).u8(0).u8(0).u8(number).raw(name.as_bytes()).u8(0);
        self.structure(4, &b.0)
    }

    pub fn satc(self, flags: u8, segment: u16, scopes: &[Vec<u8>]) -> Self {
        let mut b = Bytes::default();
        b.u8(flags).u8(0).u16(segment).raw(&scopes.concat());
        self.structure(5, &b.0)
    }

    /// The table: header (length, checksum filled in) and structures.
    pub fn build(&self) -> Vec<u8> {
        let mut body = Bytes::default();
        body.u8(self.haw_field)
            .u8(self.flags)
            .raw(&[0; 10])
            .raw(&self.structures);
        sdt(b"DMAR", 1, &body.0)
    }
}

/// Overwrite the little-endian u16 at `at` and fix the checksum.
pub(crate) fn poke_u16(table: &mut [u8], at: usize, v: u16) {
    table[at..at + 2].copy_from_slice(&v.to_le_bytes());
    fix_checksum(table, 9);
}

/// A PCI topology: bridges and their bus ranges, per segment.
#[derive(Default)]
pub(crate) struct Topology(BTreeMap<(u16, Bdf), BridgeBuses>);

impl Topology {
    pub fn bridge(mut self, segment: u16, at: Bdf, secondary: u8, subordinate: u8) -> Self {
        self.0.insert(
            (segment, at),
            BridgeBuses {
                secondary,
                subordinate,
            },
        );
        self
    }

    /// The callback `unit_for` and `rmrrs_for` take.
    pub fn lookup(&self) -> impl Fn(u16, Bdf) -> Option<BridgeBuses> + '_ {
        |segment, bdf| self.0.get(&(segment, bdf)).copied()
    }
}

pub(crate) fn bdf(bus: u8, dev: u8, func: u8) -> Bdf {
    Bdf::new(bus, dev, func)
}

/// Sparse fake physical memory: disjoint regions, each a byte vector.
#[derive(Default)]
pub(crate) struct FakeMem(Vec<(u64, Vec<u8>)>);

impl FakeMem {
    pub fn put(&mut self, pa: u64, bytes: &[u8]) -> &mut Self {
        self.0.push((pa, bytes.to_vec()));
        self
    }
}

impl PhysRead for FakeMem {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        let err = PhysReadError { pa, len: buf.len() };
        let end = pa.checked_add(buf.len() as u64).ok_or(err)?;
        let (base, bytes) = self
            .0
            .iter()
            .find(|(base, bytes)| *base <= pa && end <= base + bytes.len() as u64)
            .ok_or(err)?;
        let start = (pa - base) as usize;
        buf.copy_from_slice(&bytes[start..start + buf.len()]);
        Ok(())
    }
}
