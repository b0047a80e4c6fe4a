//! RSDP, RSDT/XSDT and MCFG over fake physical memory.

use std::string::ToString;
use std::vec;
use std::vec::Vec;

use super::dmar::qemu_q35_dmar;
use super::*;
use crate::{
    AcpiError, AcpiTables, EcamRegion, PhysSlice, RootKind, Rsdp, TableEntry,
    find_rsdp_in_bios_areas, parse_mcfg,
};

/// An ACPI 1.0 RSDP (20 bytes).
fn rsdp_v0(rsdt: u32) -> Vec<u8> {
    let mut b = Bytes::default();
    b.raw(b"RSD PTR ").u8(0).raw(b"SLUICE").u8(0).u32(rsdt);
    let mut r = b.0;
    fix_checksum(&mut r, 8);
    r
}

/// An ACPI 2.0 RSDP (36 bytes), both checksums valid.
fn rsdp_v2(rsdt: u32, xsdt: u64) -> Vec<u8> {
    let mut b = Bytes::default();
    b.raw(b"RSD PTR ")
        .u8(0)
        .raw(b"SLUICE")
        .u8(2)
        .u32(rsdt)
        .u32(36)
        .u64(xsdt)
        .u8(0)
        .raw(&[0; 3]);
    let mut r = b.0;
    fix_checksum(&mut r[..20], 8);
    fix_checksum(&mut r, 32);
    r
}

fn rsdt(entries: &[u32]) -> Vec<u8> {
    let mut b = Bytes::default();
    for &e in entries {
        b.u32(e);
    }
    sdt(b"RSDT", 1, &b.0)
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut b = Bytes::default();
    for &e in entries {
        b.u64(e);
    }
    sdt(b"XSDT", 1, &b.0)
}

/// An MCFG with `(base, segment, bus_start, bus_end)` entries, plus
/// `trailing` stray bytes.
fn mcfg(entries: &[(u64, u16, u8, u8)], trailing: usize) -> Vec<u8> {
    let mut b = Bytes::default();
    b.u64(0);
    for &(base, segment, start, end) in entries {
        b.u64(base).u16(segment).u8(start).u8(end).u32(0);
    }
    b.raw(&vec![0u8; trailing]);
    sdt(b"MCFG", 1, &b.0)
}

const QEMU_ECAM: EcamRegion = EcamRegion {
    base: 0xb000_0000,
    segment: 0,
    bus_start: 0,
    bus_end: 0xff,
};

/// QEMU q35 under SeaBIOS: RSDP v0 in the BIOS area, RSDT with FACP, a null
/// entry, MCFG and DMAR.
fn seabios_like() -> FakeMem {
    let mut m = FakeMem::default();
    let mut bios = vec![0u8; 0x20000];
    // A decoy with the signature but a bad checksum comes first.
    let mut decoy = rsdp_v0(0x7fe_0000);
    decoy[8] ^= 1;
    bios[0x1000..0x1014].copy_from_slice(&decoy);
    bios[0x15a40..0x15a54].copy_from_slice(&rsdp_v0(0x7fe_1000));
    m.put(0xe0000, &bios)
        .put(0x400, &[0; 0x100]) // BDA, EBDA pointer 0
        .put(0x7fe_1000, &rsdt(&[0x7fe_2000, 0, 0x7fe_3000, 0x7fe_4000]))
        .put(0x7fe_2000, &sdt(b"FACP", 1, &[0; 80]))
        .put(0x7fe_3000, &mcfg(&[(0xb000_0000, 0, 0, 0xff)], 0))
        .put(0x7fe_4000, &qemu_q35_dmar(false));
    m
}

#[test]
fn rsdp_v0_rsdt_mcfg_dmar() {
    let m = seabios_like();
    let pa = find_rsdp_in_bios_areas(&m).unwrap();
    assert_eq!(pa, 0xf5a40, "the decoy with a bad checksum is passed over");
    let rsdp = Rsdp::read(&m, pa).unwrap();
    assert_eq!(
        rsdp,
        Rsdp {
            revision: 0,
            oem_id: *b"SLUICE",
            rsdt_address: 0x7fe_1000,
            xsdt_address: None
        }
    );
    let tables = AcpiTables::from_rsdp_address(&m, pa).unwrap();
    assert_eq!(tables.root(), (0x7fe_1000, RootKind::Rsdt));
    assert_eq!(tables.rsdp(), &rsdp);
    let sigs: Vec<_> = tables
        .entries()
        .iter()
        .map(|e| (e.signature, e.address))
        .collect();
    assert_eq!(
        sigs,
        vec![
            (*b"FACP", 0x7fe_2000),
            (*b"MCFG", 0x7fe_3000),
            (*b"DMAR", 0x7fe_4000)
        ],
        "null skipped"
    );
    assert_eq!(
        tables.find(*b"FACP"),
        Some(&TableEntry {
            signature: *b"FACP",
            address: 0x7fe_2000,
            length: 116
        })
    );
    assert_eq!(tables.mcfg(&m).unwrap(), vec![QEMU_ECAM]);
    let dmar = tables.dmar(&m).unwrap();
    assert_eq!(dmar.drhds.len(), 1);
    assert_eq!(dmar.drhds[0].register_base, 0xfed9_0000);
    assert!(dmar.drhds[0].include_pci_all());
    assert!(dmar.rmrrs.is_empty());
    assert_eq!(
        tables.read_table(&m, *b"APIC"),
        Err(AcpiError::NotFound {
            signature: *b"APIC"
        })
    );
}

/// UEFI-like: RSDP v2 whose RSDT lists only FACP and whose XSDT, above
/// 4 GiB, lists an MCFG (two segments) and the DMAR, also above 4 GiB.
fn uefi_like() -> FakeMem {
    let mut m = FakeMem::default();
    m.put(0x7f7_e014, &rsdp_v2(0x7fe_1000, 0x1_2345_0000))
        .put(0x7fe_1000, &rsdt(&[0x7fe_2000]))
        .put(0x7fe_2000, &sdt(b"FACP", 6, &[0; 240]))
        .put(
            0x1_2345_0000,
            &xsdt(&[0x7fe_2000, 0x1_0000_1000, 0x1_0000_2000]),
        )
        .put(
            0x1_0000_1000,
            &mcfg(
                &[(0xb000_0000, 0, 0, 0xff), (0xc000_0000, 1, 0x10, 0x1f)],
                8,
            ),
        )
        .put(0x1_0000_2000, &qemu_q35_dmar(true));
    m
}

#[test]
fn rsdp_v2_xsdt_with_64_bit_entries() {
    let m = uefi_like();
    let rsdp = Rsdp::read(&m, 0x7f7_e014).unwrap();
    assert_eq!(rsdp.revision, 2);
    assert_eq!(rsdp.xsdt_address, Some(0x1_2345_0000));
    let tables = AcpiTables::from_rsdp(&m, rsdp).unwrap();
    assert_eq!(tables.root(), (0x1_2345_0000, RootKind::Xsdt));
    assert_eq!(tables.entries().len(), 3);
    assert_eq!(tables.find(*b"MCFG").unwrap().address, 0x1_0000_1000);
    // Two entries; the 8 stray bytes after them are not a third.
    let ecam = tables.mcfg(&m).unwrap();
    assert_eq!(
        ecam,
        vec![
            QEMU_ECAM,
            EcamRegion {
                base: 0xc000_0000,
                segment: 1,
                bus_start: 0x10,
                bus_end: 0x1f
            }
        ]
    );
    assert_eq!(tables.dmar(&m).unwrap().atsrs.len(), 1);

    // ECAM addressing: base is bus 0's, even for a window starting at bus 0x10.
    assert_eq!(ecam[0].config_address(0, 0, 0), Some(0xb000_0000));
    assert_eq!(
        ecam[0].config_address(1, 2, 3),
        Some(0xb000_0000 + (1 << 20) + (2 << 15) + (3 << 12))
    );
    assert_eq!(ecam[0].config_address(0, 32, 0), None);
    assert_eq!(ecam[0].config_address(0, 0, 8), None);
    assert_eq!(ecam[0].window(), (0xb000_0000, 256 << 20));
    assert_eq!(ecam[1].config_address(0x10, 0, 0), Some(0xc100_0000));
    assert_eq!(ecam[1].config_address(0x0f, 0, 0), None);
    assert_eq!(ecam[1].config_address(0x20, 0, 0), None);
    assert_eq!(ecam[1].window(), (0xc100_0000, 16 << 20));
}

#[test]
fn rsdp_v2_without_xsdt_uses_rsdt() {
    let mut m = FakeMem::default();
    m.put(0x1000, &rsdp_v2(0x2000, 0))
        .put(0x2000, &rsdt(&[0x3000]))
        .put(0x3000, &mcfg(&[], 0));
    let tables = AcpiTables::from_rsdp_address(&m, 0x1000).unwrap();
    assert_eq!(tables.root(), (0x2000, RootKind::Rsdt));
    assert_eq!(tables.mcfg(&m).unwrap(), vec![]);
}

#[test]
fn rsdp_parse_from_copies() {
    // Multiboot2 hands over copies of the RSDP, not addresses.
    let v2 = rsdp_v2(0x2000, 0x3000);
    assert_eq!(
        Rsdp::parse(&v2).unwrap(),
        Rsdp {
            revision: 2,
            oem_id: *b"SLUICE",
            rsdt_address: 0x2000,
            xsdt_address: Some(0x3000)
        }
    );
    assert_eq!(Rsdp::parse(&rsdp_v0(0x2000)).unwrap().rsdt_address, 0x2000);
    assert_eq!(
        Rsdp::parse(&v2[..19]),
        Err(AcpiError::RsdpTooShort { length: 19 })
    );
    assert_eq!(
        Rsdp::parse(&v2[..30]),
        Err(AcpiError::RsdpTooShort { length: 30 })
    );
    // PhysSlice works as memory too.
    let mem = PhysSlice::new(0x40_0000, &v2);
    assert_eq!(
        Rsdp::read(&mem, 0x40_0000).unwrap().xsdt_address,
        Some(0x3000)
    );
}

#[test]
fn rsdp_errors() {
    let mut bad = rsdp_v0(0x2000);
    bad[0] = b'X';
    assert_eq!(Rsdp::parse(&bad), Err(AcpiError::BadRsdpSignature));
    let mut bad = rsdp_v0(0x2000);
    bad[16] ^= 4;
    assert_eq!(Rsdp::parse(&bad), Err(AcpiError::BadRsdpChecksum));
    // First checksum fine, extended checksum wrong.
    let mut bad = rsdp_v2(0x2000, 0x3000);
    bad[24] ^= 4;
    assert_eq!(Rsdp::parse(&bad), Err(AcpiError::BadRsdpChecksum));
    // Length field below 36.
    let mut bad = rsdp_v2(0x2000, 0x3000);
    bad[20] = 20;
    fix_checksum(&mut bad, 32);
    assert_eq!(
        Rsdp::parse(&bad),
        Err(AcpiError::BadRsdpLength { length: 20 })
    );
    let mem = PhysSlice::new(0x1000, &bad);
    assert_eq!(
        Rsdp::read(&mem, 0x1000),
        Err(AcpiError::BadRsdpLength { length: 20 })
    );
    // Unreadable memory.
    let mem = PhysSlice::new(0x1000, &[]);
    assert!(matches!(Rsdp::read(&mem, 0x1000), Err(AcpiError::Read(_))));
    // Nothing in the BIOS areas.
    let mut m = FakeMem::default();
    m.put(0xe0000, &[0; 0x20000]);
    assert_eq!(find_rsdp_in_bios_areas(&m), Err(AcpiError::RsdpNotFound));
    assert_eq!(
        find_rsdp_in_bios_areas(&FakeMem::default()),
        Err(AcpiError::RsdpNotFound)
    );
}

#[test]
fn rsdp_in_the_ebda_is_found_first() {
    let mut m = seabios_like();
    let mut ebda = vec![0u8; 1024];
    ebda[0x30..0x30 + 36].copy_from_slice(&rsdp_v2(0x7fe_1000, 0));
    let mut bda = vec![0u8; 0x100];
    bda[0x0e..0x10].copy_from_slice(&(0x9fc0u16).to_le_bytes());
    m.0.retain(|(pa, _)| *pa != 0x400);
    m.put(0x400, &bda).put(0x9fc00, &ebda);
    assert_eq!(find_rsdp_in_bios_areas(&m), Ok(0x9fc30));
}

#[test]
fn root_and_table_errors() {
    // A corrupted XSDT.
    let mut m = uefi_like();
    let xsdt_at = m.0.iter().position(|(pa, _)| *pa == 0x1_2345_0000).unwrap();
    m.0[xsdt_at].1[40] ^= 1;
    assert_eq!(
        AcpiTables::from_rsdp_address(&m, 0x7f7_e014).unwrap_err(),
        AcpiError::BadChecksum {
            signature: *b"XSDT"
        }
    );
    // The RSDT pointer leads to something else.
    let mut m = FakeMem::default();
    m.put(0x1000, &rsdp_v0(0x2000)).put(0x2000, &xsdt(&[]));
    assert_eq!(
        AcpiTables::from_rsdp_address(&m, 0x1000).unwrap_err(),
        AcpiError::BadSignature {
            expected: *b"RSDT",
            found: *b"XSDT"
        }
    );
    // Root length below the header, and absurdly long.
    for (len, want) in [
        (
            20u32,
            AcpiError::TableTooShort {
                signature: *b"RSDT",
                length: 20,
            },
        ),
        (
            u32::MAX,
            AcpiError::TableTooLong {
                signature: *b"RSDT",
                length: u32::MAX,
            },
        ),
    ] {
        let mut r = rsdt(&[]);
        r[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut r, 9);
        let mut m = FakeMem::default();
        m.put(0x1000, &rsdp_v0(0x2000)).put(0x2000, &r);
        assert_eq!(AcpiTables::from_rsdp_address(&m, 0x1000).unwrap_err(), want);
    }
    // An entry pointing at unreadable memory.
    let mut m = FakeMem::default();
    m.put(0x1000, &rsdp_v0(0x2000))
        .put(0x2000, &rsdt(&[0x9000]));
    assert_eq!(
        AcpiTables::from_rsdp_address(&m, 0x1000).unwrap_err(),
        AcpiError::Read(PhysReadError {
            pa: 0x9000,
            len: 36
        })
    );
    // A listed table with a bad checksum, and a truncated one.
    let mut m = seabios_like();
    let dmar_at = m.0.iter().position(|(pa, _)| *pa == 0x7fe_4000).unwrap();
    m.0[dmar_at].1[50] ^= 1;
    let tables = AcpiTables::from_rsdp_address(&m, 0xf5a40).unwrap();
    assert_eq!(
        tables.dmar(&m).unwrap_err(),
        AcpiError::BadChecksum {
            signature: *b"DMAR"
        }
    );
    m.0[dmar_at].1.pop();
    assert!(matches!(tables.dmar(&m), Err(AcpiError::Read(_))));
    // A DMAR whose checksum is fine but whose contents are not.
    let mut bad = qemu_q35_dmar(false);
    bad[48 + 2] = 0; // DRHD length 0
    fix_checksum(&mut bad, 9);
    m.0[dmar_at].1 = bad;
    assert_eq!(
        tables.dmar(&m).unwrap_err(),
        AcpiError::Dmar(crate::DmarError::StructureLength {
            offset: 48,
            ty: 0,
            length: 0
        })
    );
    assert!(
        tables
            .dmar(&m)
            .unwrap_err()
            .to_string()
            .starts_with("DMAR: ")
    );
}

#[test]
fn mcfg_errors() {
    let mut t = mcfg(&[(0xb000_0000, 0, 0x20, 0x10)], 0);
    assert_eq!(parse_mcfg(&t), Err(AcpiError::BadMcfgEntry { index: 0 }));
    t = mcfg(
        &[(0xb000_0000, 0, 0, 0xff), (u64::MAX - 0xfffff, 0, 0, 0)],
        0,
    );
    assert_eq!(
        parse_mcfg(&t),
        Err(AcpiError::BadMcfgEntry { index: 1 }),
        "window wraps"
    );
    t = mcfg(&[(0xb000_0000, 0, 0, 0xff)], 0);
    t[50] ^= 1;
    assert_eq!(
        parse_mcfg(&t),
        Err(AcpiError::BadChecksum {
            signature: *b"MCFG"
        })
    );
    let good = mcfg(&[(0xb000_0000, 0, 0, 0xff)], 0);
    assert_eq!(
        parse_mcfg(&good[..good.len() - 1]),
        Err(AcpiError::TableTooLong {
            signature: *b"MCFG",
            length: good.len() as u32
        })
    );
    let short = sdt(b"MCFG", 1, &[0; 4]);
    assert_eq!(
        parse_mcfg(&short),
        Err(AcpiError::TableTooShort {
            signature: *b"MCFG",
            length: 40
        })
    );
    assert!(matches!(
        parse_mcfg(&sdt(b"MCFH", 1, &[0; 8])),
        Err(AcpiError::BadSignature { .. })
    ));
}
