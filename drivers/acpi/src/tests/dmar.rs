//! DMAR parsing, device-to-unit mapping and reserved regions.

use std::string::ToString;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::{
    AtsrFlags, DeviceScope, Dmar, DmarError, DmarFlags, DrhdFlags, PathEntry, SatcFlags, ScopeKind,
};

/// A platform with three units on segment 0 and one on segment 1:
///
/// - unit 0 (0xfed91000): endpoints 00:02.0 and, through bridge 00:1c.0
///   (secondary bus 2), 02:00.0 — a path of length 2;
/// - unit 1 (0xfed92000, 2 pages): the sub-hierarchy below bridge 00:01.0
///   (buses 3..=5, with a nested bridge 03:00.0 -> 4..=5);
/// - unit 2 (0xfed90000): INCLUDE_PCI_ALL for segment 0, with an I/O APIC
///   and an HPET scope;
/// - unit 3 (0xfed93000): INCLUDE_PCI_ALL for segment 1.
///
/// Three RMRRs, an ATSR, an RHSA, an ANDD, a SATC, and two structures of
/// types this parser does not know (6 and 0x7f) that must be skipped.
fn platform() -> DmarBuilder {
    DmarBuilder::new(46, 0b101)
        .drhd(
            0,
            0,
            0,
            0xfed9_1000,
            &[
                scope(ENDPOINT, 0, 0, &[(2, 0)]),
                scope(ENDPOINT, 0, 0, &[(0x1c, 0), (0, 0)]),
            ],
        )
        .structure(0x7f, &[1, 2, 3, 4, 5, 6])
        .drhd(0, 1, 0, 0xfed9_2000, &[scope(BRIDGE, 0, 0, &[(1, 0)])])
        .drhd(
            1,
            0,
            0,
            0xfed9_0000,
            &[
                scope(IOAPIC, 2, 0xf0, &[(0x1f, 0)]),
                scope(HPET, 0, 0, &[(0x1f, 7)]),
            ],
        )
        .drhd(1, 0, 1, 0xfed9_3000, &[])
        .rmrr(
            0,
            0x7c00_0000,
            0x7c7f_ffff,
            &[
                scope(ENDPOINT, 0, 0, &[(0x14, 0)]),
                scope(ENDPOINT, 0, 0, &[(0x1c, 0), (0, 0)]),
            ],
        )
        .rmrr(
            0,
            0x7d00_0000,
            0x7d0f_ffff,
            &[scope(BRIDGE, 0, 0, &[(1, 0)])],
        )
        .rmrr(
            1,
            0x7e00_0000,
            0x7e00_0fff,
            &[scope(ENDPOINT, 0, 0, &[(2, 0)])],
        )
        .atsr(0, 0, &[scope(BRIDGE, 0, 0, &[(1, 0)])])
        .rhsa(0xfed9_1000, 1)
        .andd(1, "\\_SB.PCI0.SDMA")
        .satc(1, 0, &[scope(ENDPOINT, 0, 0, &[(2, 0)])])
        .structure(6, &[0; 4])
}

fn platform_topology() -> Topology {
    Topology::default()
        .bridge(0, bdf(0, 0x1c, 0), 2, 2)
        .bridge(0, bdf(0, 1, 0), 3, 5)
        .bridge(0, bdf(3, 0, 0), 4, 5)
        .bridge(0, bdf(0, 0x1d, 0), 6, 6)
}

fn pci(kind: ScopeKind, start_bus: u8, path: &[(u8, u8)]) -> DeviceScope {
    DeviceScope {
        kind,
        flags: 0,
        enumeration_id: 0,
        start_bus,
        path: path
            .iter()
            .map(|&(dev, func)| PathEntry { dev, func })
            .collect(),
    }
}

#[test]
fn parses_every_field_of_every_structure() {
    let dmar = Dmar::parse(&platform().build()).unwrap();
    assert_eq!(dmar.host_address_width, 46);
    assert_eq!(
        dmar.flags,
        DmarFlags::INTR_REMAP | DmarFlags::DMA_CTRL_PLATFORM_OPT_IN
    );
    assert!(!dmar.flags.contains(DmarFlags::X2APIC_OPT_OUT));

    assert_eq!(dmar.drhds.len(), 4);
    let d0 = &dmar.drhds[0];
    assert_eq!(
        (d0.flags, d0.size, d0.segment, d0.register_base),
        (DrhdFlags::default(), 0, 0, 0xfed9_1000)
    );
    assert!(!d0.include_pci_all());
    assert_eq!(d0.register_size(), 4096);
    assert_eq!(
        d0.scopes,
        vec![
            pci(ScopeKind::PciEndpoint, 0, &[(2, 0)]),
            pci(ScopeKind::PciEndpoint, 0, &[(0x1c, 0), (0, 0)])
        ]
    );
    let d1 = &dmar.drhds[1];
    assert_eq!((d1.size, d1.segment, d1.register_base), (1, 0, 0xfed9_2000));
    assert_eq!(d1.register_size(), 8192);
    assert_eq!(
        d1.scopes,
        vec![pci(ScopeKind::PciSubHierarchy, 0, &[(1, 0)])]
    );
    let d2 = &dmar.drhds[2];
    assert!(d2.include_pci_all());
    assert_eq!((d2.segment, d2.register_base), (0, 0xfed9_0000));
    assert_eq!(
        d2.scopes,
        vec![
            DeviceScope {
                kind: ScopeKind::IoApic,
                flags: 0,
                enumeration_id: 2,
                start_bus: 0xf0,
                path: vec![PathEntry { dev: 0x1f, func: 0 }]
            },
            DeviceScope {
                kind: ScopeKind::Hpet,
                flags: 0,
                enumeration_id: 0,
                start_bus: 0,
                path: vec![PathEntry { dev: 0x1f, func: 7 }]
            },
        ]
    );
    let d3 = &dmar.drhds[3];
    assert!(d3.include_pci_all());
    assert_eq!(
        (d3.segment, d3.register_base, d3.scopes.len()),
        (1, 0xfed9_3000, 0)
    );

    assert_eq!(dmar.rmrrs.len(), 3);
    assert_eq!(
        (
            dmar.rmrrs[0].segment,
            dmar.rmrrs[0].base,
            dmar.rmrrs[0].limit
        ),
        (0, 0x7c00_0000, 0x7c7f_ffff)
    );
    assert_eq!(
        dmar.rmrrs[0].scopes,
        vec![
            pci(ScopeKind::PciEndpoint, 0, &[(0x14, 0)]),
            pci(ScopeKind::PciEndpoint, 0, &[(0x1c, 0), (0, 0)])
        ]
    );
    assert_eq!(
        (dmar.rmrrs[1].base, dmar.rmrrs[1].limit),
        (0x7d00_0000, 0x7d0f_ffff)
    );
    assert_eq!(
        dmar.rmrrs[1].scopes,
        vec![pci(ScopeKind::PciSubHierarchy, 0, &[(1, 0)])]
    );
    assert_eq!(
        (
            dmar.rmrrs[2].segment,
            dmar.rmrrs[2].base,
            dmar.rmrrs[2].limit
        ),
        (1, 0x7e00_0000, 0x7e00_0fff)
    );

    assert_eq!(dmar.atsrs.len(), 1);
    assert!(!dmar.atsrs[0].flags.contains(AtsrFlags::ALL_PORTS));
    assert_eq!(dmar.atsrs[0].segment, 0);
    assert_eq!(
        dmar.atsrs[0].scopes,
        vec![pci(ScopeKind::PciSubHierarchy, 0, &[(1, 0)])]
    );

    assert_eq!(dmar.rhsas.len(), 1);
    assert_eq!(
        (dmar.rhsas[0].register_base, dmar.rhsas[0].proximity_domain),
        (0xfed9_1000, 1)
    );
    assert_eq!(dmar.andds.len(), 1);
    assert_eq!(
        (dmar.andds[0].device_number, dmar.andds[0].name.as_str()),
        (1, "\\_SB.PCI0.SDMA")
    );
    assert_eq!(dmar.satcs.len(), 1);
    assert_eq!(dmar.satcs[0].flags, SatcFlags::ATC_REQUIRED);
    assert_eq!(
        dmar.satcs[0].scopes,
        vec![pci(ScopeKind::PciEndpoint, 0, &[(2, 0)])]
    );

    assert_eq!(dmar.skipped, vec![0x7f, 6]);
}

#[test]
fn scope_kinds_and_flag_bits_round_trip() {
    let table = DmarBuilder::new(39, 0xff)
        .drhd(
            0xff,
            0x13,
            0,
            0xfed9_0000,
            &[
                scope(NAMESPACE, 1, 0, &[(0x15, 1)]),
                scope(9, 0, 0, &[(0, 0)]),
                {
                    let mut s = scope(ENDPOINT, 0, 0, &[(2, 0)]);
                    s[2] = 0x80; // scope flags byte
                    s
                },
            ],
        )
        .build();
    let dmar = Dmar::parse(&table).unwrap();
    // Reserved bits are kept, named ones readable.
    assert_eq!(dmar.flags.bits(), 0xff);
    assert!(dmar.flags.contains(DmarFlags::X2APIC_OPT_OUT));
    let d = &dmar.drhds[0];
    assert_eq!(d.flags.bits(), 0xff);
    assert!(d.include_pci_all());
    assert_eq!(d.register_size(), 4096 << 3, "only size bits 3:0 count");
    let kinds: Vec<_> = d
        .scopes
        .iter()
        .map(|s| (s.kind, s.enumeration_id, s.flags))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ScopeKind::AcpiNamespace, 1, 0),
            (ScopeKind::Other(9), 0, 0),
            (ScopeKind::PciEndpoint, 0, 0x80)
        ]
    );
    let text = std::format!("{:?}", dmar.flags);
    assert!(
        text.contains("INTR_REMAP") && text.contains("X2APIC_OPT_OUT"),
        "{text}"
    );
}

#[test]
fn unit_for_each_kind_of_scope() {
    let dmar = Dmar::parse(&platform().build()).unwrap();
    let topo = platform_topology();
    let pci = topo.lookup();
    let unit = |segment, b| dmar.unit_for(segment, b, &pci);

    // Unit 0: explicit endpoints, one behind bridge 00:1c.0.
    assert_eq!(unit(0, bdf(0, 2, 0)), Some(0));
    assert_eq!(unit(0, bdf(2, 0, 0)), Some(0), "path of length 2");
    // The bridge on that path is not itself in unit 0's scope.
    assert_eq!(unit(0, bdf(0, 0x1c, 0)), Some(2));
    assert_eq!(unit(0, bdf(2, 0, 1)), Some(2), "only function 0 is listed");
    // Unit 1: the bridge and everything below it, nested bridges included.
    assert_eq!(unit(0, bdf(0, 1, 0)), Some(1));
    assert_eq!(unit(0, bdf(3, 0, 0)), Some(1));
    assert_eq!(unit(0, bdf(4, 0, 0)), Some(1));
    assert_eq!(unit(0, bdf(5, 0x1f, 7)), Some(1));
    // Unit 2: the rest of segment 0, including buses beyond every bridge.
    assert_eq!(unit(0, bdf(0, 0x1f, 0)), Some(2));
    assert_eq!(unit(0, bdf(6, 0, 0)), Some(2));
    assert_eq!(
        unit(0, bdf(0, 1, 1)),
        Some(2),
        "another function of the bridge's device"
    );
    assert_eq!(
        unit(0, bdf(0xf0, 0x1f, 0)),
        Some(2),
        "I/O APIC scopes cover no PCI device"
    );
    // Unit 3: segment 1, whatever the bus numbers.
    assert_eq!(unit(1, bdf(0, 2, 0)), Some(3));
    assert_eq!(unit(1, bdf(4, 0, 0)), Some(3));
    // No unit for segment 2.
    assert_eq!(unit(2, bdf(0, 0, 0)), None);
}

#[test]
fn unresolvable_paths_fall_back_to_include_all() {
    let dmar = Dmar::parse(&platform().build()).unwrap();
    // PCI not enumerated yet: no bridge answers.
    let none = |_: u16, _: Bdf| None;
    assert_eq!(
        dmar.unit_for(0, bdf(0, 2, 0), &none),
        Some(0),
        "a path of length 1 needs no bridge"
    );
    assert_eq!(dmar.unit_for(0, bdf(2, 0, 0), &none), Some(2));
    assert_eq!(
        dmar.unit_for(0, bdf(0, 1, 0), &none),
        Some(1),
        "the bridge itself still matches"
    );
    assert_eq!(dmar.unit_for(0, bdf(4, 0, 0), &none), Some(2));
    // A bridge whose secondary bus is not above its own bus is ignored.
    let broken = Topology::default()
        .bridge(0, bdf(0, 0x1c, 0), 0, 0)
        .bridge(0, bdf(0, 1, 0), 3, 2);
    let broken = broken.lookup();
    assert_eq!(dmar.unit_for(0, bdf(0, 0, 0), &broken), Some(2));
    assert_eq!(dmar.unit_for(0, bdf(3, 0, 0), &broken), Some(2));
    // The same device resolves once the topology is sane.
    assert_eq!(
        dmar.unit_for(0, bdf(3, 0, 0), &platform_topology().lookup()),
        Some(1)
    );
}

#[test]
fn resolve_follows_secondary_buses() {
    let topo = Topology::default()
        .bridge(0, bdf(0, 1, 0), 3, 9)
        .bridge(0, bdf(3, 0, 0), 4, 9)
        .bridge(0, bdf(4, 2, 0), 7, 7);
    let s = pci(ScopeKind::PciEndpoint, 0, &[(1, 0), (0, 0), (2, 0), (0, 3)]);
    assert_eq!(s.resolve(0, &topo.lookup()), Some(bdf(7, 0, 3)));
    assert_eq!(
        s.resolve(1, &topo.lookup()),
        None,
        "the bridges are on segment 0"
    );
    let s = pci(ScopeKind::PciEndpoint, 0x40, &[(1, 0)]);
    assert_eq!(
        s.resolve(0, &topo.lookup()),
        Some(bdf(0x40, 1, 0)),
        "start bus is honoured"
    );
}

#[test]
fn explicit_scopes_win_wherever_include_all_is_listed() {
    // INCLUDE_PCI_ALL listed first (against the spec's ordering rule), a
    // wide bridge, a narrow nested bridge, and an endpoint inside both.
    let table = DmarBuilder::new(39, 0)
        .drhd(1, 0, 0, 0xfed9_0000, &[])
        .drhd(0, 0, 0, 0xfed9_1000, &[scope(BRIDGE, 0, 0, &[(1, 0)])])
        .drhd(
            0,
            0,
            0,
            0xfed9_2000,
            &[scope(BRIDGE, 0, 0, &[(1, 0), (0, 0)])],
        )
        .drhd(
            0,
            0,
            0,
            0xfed9_3000,
            &[scope(ENDPOINT, 0, 0, &[(1, 0), (0, 0), (0, 0)])],
        )
        .build();
    let dmar = Dmar::parse(&table).unwrap();
    let topo = Topology::default()
        .bridge(0, bdf(0, 1, 0), 3, 8)
        .bridge(0, bdf(3, 0, 0), 4, 5);
    let pci = topo.lookup();
    assert_eq!(
        dmar.unit_for(0, bdf(4, 0, 0), &pci),
        Some(3),
        "an exact scope beats both bridges"
    );
    assert_eq!(
        dmar.unit_for(0, bdf(5, 0, 0), &pci),
        Some(2),
        "the narrower bridge wins"
    );
    assert_eq!(
        dmar.unit_for(0, bdf(3, 0, 0), &pci),
        Some(2),
        "the bridge named exactly wins"
    );
    assert_eq!(dmar.unit_for(0, bdf(3, 1, 0), &pci), Some(1));
    assert_eq!(dmar.unit_for(0, bdf(8, 0, 0), &pci), Some(1));
    assert_eq!(dmar.unit_for(0, bdf(9, 0, 0), &pci), Some(0));
}

#[test]
fn rmrrs_for_devices_in_their_scopes() {
    let dmar = Dmar::parse(&platform().build()).unwrap();
    let topo = platform_topology();
    let pci = topo.lookup();
    let usb = (0x7c00_0000, 0x7c7f_ffff);
    let bridged = (0x7d00_0000, 0x7d0f_ffff);
    assert_eq!(dmar.rmrrs_for(0, bdf(0, 0x14, 0), &pci), vec![usb]);
    assert_eq!(
        dmar.rmrrs_for(0, bdf(2, 0, 0), &pci),
        vec![usb],
        "path of length 2"
    );
    assert_eq!(dmar.rmrrs_for(0, bdf(0, 1, 0), &pci), vec![bridged]);
    assert_eq!(
        dmar.rmrrs_for(0, bdf(4, 0, 0), &pci),
        vec![bridged],
        "below the bridge"
    );
    assert_eq!(dmar.rmrrs_for(0, bdf(6, 0, 0), &pci), vec![]);
    assert_eq!(
        dmar.rmrrs_for(0, bdf(0, 2, 0), &pci),
        vec![],
        "segment 1's RMRR is not segment 0's"
    );
    assert_eq!(
        dmar.rmrrs_for(1, bdf(0, 2, 0), &pci),
        vec![(0x7e00_0000, 0x7e00_0fff)]
    );

    // One device in two RMRRs gets both, in table order.
    let table = DmarBuilder::new(39, 0)
        .drhd(1, 0, 0, 0xfed9_0000, &[])
        .rmrr(0, 0x2000, 0x2fff, &[scope(ENDPOINT, 0, 0, &[(3, 0)])])
        .rmrr(
            0,
            0x1000,
            0x1fff,
            &[
                scope(ENDPOINT, 0, 0, &[(4, 0)]),
                scope(ENDPOINT, 0, 0, &[(3, 0)]),
            ],
        )
        .build();
    let dmar = Dmar::parse(&table).unwrap();
    assert_eq!(
        dmar.rmrrs_for(0, bdf(0, 3, 0), &pci),
        vec![(0x2000, 0x2fff), (0x1000, 0x1fff)]
    );
    assert_eq!(
        dmar.rmrrs_for(0, bdf(0, 4, 0), &pci),
        vec![(0x1000, 0x1fff)]
    );
}

/// What QEMU's q35 with `-device intel-iommu` builds (hw/i386/acpi-build.c):
/// one INCLUDE_PCI_ALL unit at 0xfed90000 whose only scope is the I/O APIC
/// (bus 0xff, devfn 0), no RMRR; with device-iotlb, an ATSR with ALL_PORTS.
pub(crate) fn qemu_q35_dmar(device_iotlb: bool) -> Vec<u8> {
    let mut b =
        DmarBuilder::new(39, 1).drhd(1, 0, 0, 0xfed9_0000, &[scope(IOAPIC, 0, 0xff, &[(0, 0)])]);
    if device_iotlb {
        b = b.atsr(1, 0, &[]);
    }
    b.build()
}

#[test]
fn qemu_q35_layout() {
    let dmar = Dmar::parse(&qemu_q35_dmar(false)).unwrap();
    assert_eq!(dmar.host_address_width, 39);
    assert_eq!(dmar.flags, DmarFlags::INTR_REMAP);
    assert_eq!(dmar.drhds.len(), 1);
    assert_eq!(dmar.drhds[0].register_base, 0xfed9_0000);
    assert!(dmar.drhds[0].include_pci_all());
    assert_eq!(dmar.drhds[0].scopes[0].kind, ScopeKind::IoApic);
    assert_eq!(dmar.drhds[0].scopes[0].start_bus, 0xff);
    assert!(dmar.rmrrs.is_empty() && dmar.atsrs.is_empty() && dmar.skipped.is_empty());
    let none = |_: u16, _: Bdf| None;
    for b in [
        bdf(0, 0, 0),
        bdf(0, 3, 0),
        bdf(0x20, 0x1f, 7),
        bdf(0xff, 0, 0),
    ] {
        assert_eq!(dmar.unit_for(0, b, &none), Some(0), "{b}");
        assert!(dmar.rmrrs_for(0, b, &none).is_empty());
    }
    assert_eq!(dmar.unit_for(1, bdf(0, 3, 0), &none), None);

    let dmar = Dmar::parse(&qemu_q35_dmar(true)).unwrap();
    assert_eq!(dmar.atsrs.len(), 1);
    assert!(dmar.atsrs[0].flags.contains(AtsrFlags::ALL_PORTS));
    assert!(dmar.atsrs[0].scopes.is_empty());
}

// ---- errors ----

fn err(table: &[u8]) -> DmarError {
    let e = Dmar::parse(table).unwrap_err();
    assert!(!e.to_string().is_empty());
    e
}

#[test]
fn rejects_bad_header() {
    let good = qemu_q35_dmar(false);
    // Checksum.
    let mut t = good.clone();
    t[40] ^= 0x10;
    assert_eq!(err(&t), DmarError::BadChecksum);
    // Signature.
    let mut t = good.clone();
    t[0] = b'X';
    fix_checksum(&mut t, 9);
    assert_eq!(err(&t), DmarError::BadSignature { found: *b"XMAR" });
    // Fewer bytes than the header.
    assert_eq!(err(&good[..47]), DmarError::TableTooShort { length: 47 });
    // Length field below the header.
    let mut t = good.clone();
    t[4..8].copy_from_slice(&40u32.to_le_bytes());
    fix_checksum(&mut t, 9);
    assert_eq!(err(&t), DmarError::TableTooShort { length: 40 });
    // Length field beyond the bytes given (the table was cut short).
    assert_eq!(
        err(&good[..good.len() - 1]),
        DmarError::LengthMismatch {
            length: good.len() as u32,
            available: good.len() - 1
        }
    );
    // Host address width field beyond 64 bits.
    let mut t = good.clone();
    t[36] = 64;
    fix_checksum(&mut t, 9);
    assert_eq!(err(&t), DmarError::BadHostAddressWidth { field: 64 });
    // Extra bytes after the table are not part of it.
    let mut t = good.clone();
    t.extend_from_slice(&[0xee; 7]);
    assert!(Dmar::parse(&t).is_ok());
}

#[test]
fn rejects_bad_structure_lengths() {
    let b = DmarBuilder::new(39, 0)
        .drhd(1, 0, 0, 0xfed9_0000, &[scope(IOAPIC, 0, 0xff, &[(0, 0)])])
        .rmrr(0, 0x1000, 0x1fff, &[scope(ENDPOINT, 0, 0, &[(3, 0)])]);
    let good = b.build();
    let (drhd, rmrr) = (b.offsets[0], b.offsets[1]);
    assert!(Dmar::parse(&good).is_ok());

    // Zero-length structure: an error, not an endless loop.
    let mut t = good.clone();
    poke_u16(&mut t, rmrr + 2, 0);
    assert_eq!(
        err(&t),
        DmarError::StructureLength {
            offset: rmrr,
            ty: 1,
            length: 0
        }
    );
    // Shorter than its type's fixed part (an RMRR needs 24 bytes).
    let mut t = good.clone();
    poke_u16(&mut t, rmrr + 2, 20);
    assert_eq!(
        err(&t),
        DmarError::StructureLength {
            offset: rmrr,
            ty: 1,
            length: 20
        }
    );
    // Running past the end of the table.
    let mut t = good.clone();
    poke_u16(&mut t, rmrr + 2, 34);
    assert_eq!(
        err(&t),
        DmarError::StructureOverrun {
            offset: rmrr,
            ty: 1,
            length: 34
        }
    );
    // The table length cuts the last structure short.
    let mut t = good.clone();
    t.truncate(t.len() - 3);
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    fix_checksum(&mut t, 9);
    assert_eq!(
        err(&t),
        DmarError::StructureOverrun {
            offset: rmrr,
            ty: 1,
            length: 32
        }
    );
    // Fewer than 4 bytes left after the last structure.
    let mut t = good.clone();
    t.extend_from_slice(&[0, 0]);
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    fix_checksum(&mut t, 9);
    assert_eq!(
        err(&t),
        DmarError::StructureTruncated { offset: good.len() }
    );
    // A DRHD one byte too long leaves one byte of scope: truncated scope.
    let t = DmarBuilder::new(39, 0)
        .drhd(1, 0, 0, 0xfed9_0000, &[vec![3]])
        .build();
    assert_eq!(err(&t), DmarError::ScopeTruncated { offset: drhd + 16 });
    // Unknown types are skipped by length, but their length is checked too.
    let b = DmarBuilder::new(39, 0)
        .structure(0x99, &[])
        .structure(0x99, &[0; 8]);
    assert_eq!(Dmar::parse(&b.build()).unwrap().skipped, vec![0x99, 0x99]);
    let mut t = b.build();
    poke_u16(&mut t, b.offsets[1] + 2, 3);
    assert_eq!(
        err(&t),
        DmarError::StructureLength {
            offset: b.offsets[1],
            ty: 0x99,
            length: 3
        }
    );
}

#[test]
fn rejects_bad_scopes() {
    let b = DmarBuilder::new(39, 0).drhd(
        0,
        0,
        0,
        0xfed9_1000,
        &[
            scope(ENDPOINT, 0, 0, &[(2, 0)]),
            scope(ENDPOINT, 0, 0, &[(3, 0)]),
        ],
    );
    let good = b.build();
    let first = b.offsets[0] + 16;
    let second = first + 8;
    assert_eq!(Dmar::parse(&good).unwrap().drhds[0].scopes.len(), 2);

    // A scope whose length overruns its parent structure.
    let mut t = good.clone();
    t[second + 1] = 10;
    fix_checksum(&mut t, 9);
    assert_eq!(
        err(&t),
        DmarError::ScopeOverrun {
            offset: second,
            length: 10
        }
    );
    // ... even when the table has bytes beyond the structure.
    let b2 = DmarBuilder::new(39, 0)
        .drhd(0, 0, 0, 0xfed9_1000, &[scope(ENDPOINT, 0, 0, &[(2, 0)])])
        .drhd(1, 0, 0, 0xfed9_0000, &[]);
    let mut t = b2.build();
    t[b2.offsets[0] + 16 + 1] = 16;
    fix_checksum(&mut t, 9);
    assert_eq!(
        err(&t),
        DmarError::ScopeOverrun {
            offset: b2.offsets[0] + 16,
            length: 16
        }
    );
    // Zero, too short (no path entry) and half-entry lengths.
    for bad in [0u8, 6, 7, 9] {
        let mut t = good.clone();
        t[first + 1] = bad;
        fix_checksum(&mut t, 9);
        assert_eq!(
            err(&t),
            DmarError::ScopeLength {
                offset: first,
                length: bad
            },
            "length {bad}"
        );
    }
    // Device or function out of range.
    let mut t = good.clone();
    t[second + 6] = 32;
    fix_checksum(&mut t, 9);
    assert_eq!(err(&t), DmarError::BadScopePath { offset: second });
    let mut t = good.clone();
    t[second + 7] = 8;
    fix_checksum(&mut t, 9);
    assert_eq!(err(&t), DmarError::BadScopePath { offset: second });
}

#[test]
fn rejects_bad_values() {
    let b = DmarBuilder::new(39, 0).drhd(0, 0, 0, 0, &[]);
    assert_eq!(
        err(&b.build()),
        DmarError::BadRegisterBase {
            offset: 48,
            base: 0
        }
    );
    let b = DmarBuilder::new(39, 0).drhd(0, 0, 0, 0xfed9_0800, &[]);
    assert_eq!(
        err(&b.build()),
        DmarError::BadRegisterBase {
            offset: 48,
            base: 0xfed9_0800
        }
    );
    let b = DmarBuilder::new(39, 0)
        .drhd(1, 0, 0, 0xfed9_0000, &[])
        .rmrr(0, 0x2000, 0x1fff, &[]);
    assert_eq!(
        err(&b.build()),
        DmarError::BadRmrrRange {
            offset: b.offsets[1],
            base: 0x2000,
            limit: 0x1fff
        }
    );
    // A one-byte RMRR (base == limit) is a range, not an error.
    let b = DmarBuilder::new(39, 0).rmrr(0, 0x2000, 0x2000, &[]);
    assert_eq!(Dmar::parse(&b.build()).unwrap().rmrrs[0].limit, 0x2000);
    // Two INCLUDE_PCI_ALL units for one segment; one per segment is fine.
    let b = DmarBuilder::new(39, 0)
        .drhd(1, 0, 0, 0xfed9_0000, &[])
        .drhd(1, 0, 0, 0xfed9_1000, &[]);
    assert_eq!(
        err(&b.build()),
        DmarError::DuplicateIncludeAll { segment: 0 }
    );
    let b = DmarBuilder::new(39, 0)
        .drhd(1, 0, 0, 0xfed9_0000, &[])
        .drhd(1, 0, 1, 0xfed9_1000, &[]);
    assert_eq!(Dmar::parse(&b.build()).unwrap().drhds.len(), 2);
}

#[test]
fn bdf_requester_ids() {
    let b = bdf(0x3a, 0x1f, 7);
    assert_eq!(b.rid(), 0x3aff);
    assert_eq!(Bdf::from_rid(0x3aff), b);
    assert_eq!(Bdf::from_rid(0x0010), bdf(0, 2, 0));
    assert_eq!(
        Bdf::new(1, 0x3f, 0xf),
        bdf(1, 0x1f, 7),
        "dev and func are masked"
    );
    assert_eq!(b.to_string(), "3a:1f.7");
}
