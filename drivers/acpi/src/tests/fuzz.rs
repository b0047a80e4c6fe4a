//! Property tests: mutated and truncated tables never make the parsers
//! panic or loop, and whatever parses keeps the parser's guarantees.

use proptest::prelude::*;
use std::string::ToString;
use std::vec::Vec;

use super::dmar::qemu_q35_dmar;
use super::*;
use crate::{Bdf, BridgeBuses, Dmar, Rsdp, ScopeKind, parse_mcfg};

/// A table with every structure type, scopes of every kind, nested paths.
fn rich_dmar() -> Vec<u8> {
    DmarBuilder::new(48, 3)
        .drhd(
            0,
            2,
            0,
            0xfed9_1000,
            &[
                scope(ENDPOINT, 0, 0, &[(2, 0)]),
                scope(ENDPOINT, 0, 0, &[(1, 0), (0, 0)]),
            ],
        )
        .drhd(
            0,
            0,
            0,
            0xfed9_2000,
            &[
                scope(BRIDGE, 0, 0, &[(0x1c, 0)]),
                scope(BRIDGE, 0, 0, &[(1, 0), (0, 0)]),
            ],
        )
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
        .rmrr(
            0,
            0x7c00_0000,
            0x7c7f_ffff,
            &[
                scope(ENDPOINT, 0, 0, &[(0x14, 0)]),
                scope(BRIDGE, 0, 0, &[(0x1c, 0)]),
            ],
        )
        .atsr(1, 0, &[])
        .rhsa(0xfed9_1000, 0)
        .andd(1, "\\_SB.DEV0")
        .satc(0, 0, &[scope(ENDPOINT, 0, 0, &[(3, 0), (0, 1)])])
        .structure(0x42, &[9; 5])
        .build()
}

#[derive(Clone, Debug)]
enum Mutation {
    /// XOR a byte.
    Flip(usize, u8),
    /// Overwrite a little-endian u16 (hits length and type fields).
    Set16(usize, u16),
    /// Cut the buffer short.
    Truncate(usize),
    /// Cut the buffer short and make the header length agree.
    TruncateTable(usize),
    /// Insert a byte.
    Insert(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), prop_oneof![0..=64u16, any::<u16>()])
            .prop_map(|(i, v)| Mutation::Set16(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::TruncateTable),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
    ]
}

fn apply(table: &mut Vec<u8>, m: &Mutation) {
    let len = table.len();
    match *m {
        Mutation::Flip(i, x) if len > 0 => table[i % len] ^= x,
        Mutation::Flip(..) => {}
        Mutation::Set16(i, v) if len >= 2 => {
            let i = i % (len - 1);
            table[i..i + 2].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::Set16(..) => {}
        Mutation::Truncate(n) => table.truncate(n % (len + 1)),
        Mutation::TruncateTable(n) => {
            table.truncate(n % (len + 1));
            if table.len() >= 8 {
                let l = table.len() as u32;
                table[4..8].copy_from_slice(&l.to_le_bytes());
            }
        }
        Mutation::Insert(i, v) => table.insert(i % (len + 1), v),
    }
}

/// An arbitrary but deterministic topology: every function is a bridge
/// with some bus range (sometimes a broken one).
fn arbitrary_bridges(seed: u8) -> impl Fn(u16, Bdf) -> Option<BridgeBuses> {
    move |segment, b| {
        let h = b.bus ^ b.dev.wrapping_mul(7) ^ b.func.wrapping_mul(31) ^ seed ^ segment as u8;
        (h % 5 != 0).then_some(BridgeBuses {
            secondary: b.bus.wrapping_add(h % 7),
            subordinate: h,
        })
    }
}

/// What a successful parse guarantees, whatever the input.
fn check_invariants(dmar: &Dmar, seed: u8) {
    assert!((1..=64).contains(&dmar.host_address_width));
    let mut all_alls = Vec::new();
    for d in &dmar.drhds {
        assert!(d.register_base != 0 && d.register_base % 4096 == 0);
        if d.include_pci_all() {
            assert!(
                !all_alls.contains(&d.segment),
                "duplicate INCLUDE_PCI_ALL accepted"
            );
            all_alls.push(d.segment);
        }
    }
    let scopes = dmar
        .drhds
        .iter()
        .flat_map(|d| &d.scopes)
        .chain(dmar.rmrrs.iter().flat_map(|r| &r.scopes))
        .chain(dmar.atsrs.iter().flat_map(|a| &a.scopes))
        .chain(dmar.satcs.iter().flat_map(|s| &s.scopes));
    for s in scopes {
        assert!(!s.path.is_empty());
        assert!(s.path.iter().all(|p| p.dev < 32 && p.func < 8));
        if let ScopeKind::Other(t) = s.kind {
            assert!(!(1..=5).contains(&t));
        }
    }
    for r in &dmar.rmrrs {
        assert!(r.base <= r.limit);
    }
    // The lookups terminate and stay in range on any topology.
    let bridges = arbitrary_bridges(seed);
    for segment in [0u16, 1] {
        for b in [
            Bdf::new(0, 2, 0),
            Bdf::new(seed, seed >> 3, seed),
            Bdf::new(4, 0, 0),
        ] {
            if let Some(i) = dmar.unit_for(segment, b, &bridges) {
                assert!(i < dmar.drhds.len());
                assert_eq!(dmar.drhds[i].segment, segment);
            }
            for (base, limit) in dmar.rmrrs_for(segment, b, &bridges) {
                assert!(base <= limit);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn mutated_dmar_never_panics(
        rich in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
        fix in any::<bool>(),
        seed in any::<u8>(),
    ) {
        let mut table = if rich { rich_dmar() } else { qemu_q35_dmar(true) };
        for m in &mutations {
            apply(&mut table, m);
        }
        // Half the time repair the checksum so the structure walk is reached.
        if fix && table.len() > 9 {
            let len = table.get(4..8).map_or(0, |l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
            let end = len.clamp(10, table.len());
            fix_checksum(&mut table[..end], 9);
        }
        match Dmar::parse(&table) {
            Ok(dmar) => check_invariants(&dmar, seed),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn random_structures_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), seed in any::<u8>()) {
        // A valid header followed by arbitrary bytes, checksum fixed.
        let mut table = DmarBuilder::new(39, 0).build();
        table.extend_from_slice(&body);
        let l = table.len() as u32;
        table[4..8].copy_from_slice(&l.to_le_bytes());
        fix_checksum(&mut table, 9);
        if let Ok(dmar) = Dmar::parse(&table) {
            check_invariants(&dmar, seed);
        }
    }

    #[test]
    fn mutated_mcfg_and_rsdp_never_panic(
        mutations in proptest::collection::vec(mutation(), 1..4),
        fix in any::<bool>(),
    ) {
        let mut m = sdt(b"MCFG", 1, &[0; 8]);
        m.extend_from_slice(&[0u8; 32]);
        let l = m.len() as u32;
        m[4..8].copy_from_slice(&l.to_le_bytes());
        let mut r = Vec::from(*b"RSD PTR ");
        r.extend_from_slice(&[0; 28]);
        r[15] = 2;
        r[20] = 36;
        for mu in &mutations {
            apply(&mut m, mu);
            apply(&mut r, mu);
        }
        if fix {
            let n = m.len().min(l as usize);
            if n > 9 {
                fix_checksum(&mut m[..n], 9);
            }
            if r.len() >= 20 {
                fix_checksum(&mut r[..20], 8);
            }
        }
        if let Ok(regions) = parse_mcfg(&m) {
            for e in regions {
                prop_assert!(e.bus_start <= e.bus_end);
                prop_assert!(e.config_address(e.bus_end, 31, 7).is_some());
            }
        }
        let _ = Rsdp::parse(&r);
    }
}
