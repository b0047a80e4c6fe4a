//! Enumeration, BAR sizing and command/bridge operations against the fake
//! configuration space.

use pci_types::{EndpointHeader, PciHeader};
use sluice_pci::fake::FakeConfigSpace;
use sluice_pci::{Bdf, BridgeBuses, CommandRegister, ConfigRegionAccess, HeaderType, PciError, PciSegment, config, find};

const MIB: u32 = 1 << 20;

fn bdf(bus: u8, dev: u8, func: u8) -> Bdf {
    Bdf::new(bus, dev, func)
}

/// A q35-like root bus with a multi-function device, a single-function
/// device that answers on function 1 too, and two levels of bridges.
fn topology() -> FakeConfigSpace {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(bdf(0, 0, 0), 0x8086, 0x29c0).class(0x06, 0x00, 0x00);
    cfg.add_endpoint(bdf(0, 1, 0), 0x1234, 0x11e8).class(0x00, 0xff, 0).revision(0x10).mem32_bar(0, MIB, false).bar_address(0, 0xfea0_0000);
    cfg.add_endpoint(bdf(0, 2, 0), 0x8086, 0x2918).class(0x06, 0x01, 0).multifunction();
    cfg.add_endpoint(bdf(0, 2, 3), 0x8086, 0x2930).class(0x0c, 0x05, 0);
    cfg.add_endpoint(bdf(0, 3, 0), 0x1af4, 0x1000);
    // No multi-function bit on 00:03.0: this function must not be probed.
    cfg.add_endpoint(bdf(0, 3, 1), 0xdead, 0xbeef);
    cfg.add_bridge(bdf(0, 4, 0), 0x1b36, 0x000c, 1, 3);
    cfg.add_endpoint(bdf(1, 0, 0), 0x1234, 0x11e8).mem32_bar(0, MIB, false).bar_address(0, 0xfe80_0000);
    cfg.add_bridge(bdf(1, 1, 0), 0x1b36, 0x000e, 2, 2);
    cfg.add_endpoint(bdf(2, 0, 0), 0x1b36, 0x0010);
    cfg.add_bridge(bdf(1, 2, 0), 0x1b36, 0x000e, 3, 3);
    cfg.add_endpoint(bdf(3, 5, 0), 0x1b36, 0x0011);
    // A bridge firmware never numbered: not followed.
    cfg.add_bridge(bdf(0, 5, 0), 0x1b36, 0x000c, 0, 0);
    cfg.add_endpoint(bdf(0, 0x1f, 0), 0x8086, 0x2918);
    // Behind no bridge: unreachable.
    cfg.add_endpoint(bdf(7, 0, 0), 0x1234, 0x5678);
    cfg
}

fn bdfs(functions: &[sluice_pci::PciFunction]) -> Vec<Bdf> {
    functions.iter().map(|f| f.bdf).collect()
}

#[test]
fn walks_bridges_depth_first_in_bus_order() {
    let pci = PciSegment::new(topology(), 0, 0, 255);
    let found = pci.enumerate();
    assert_eq!(
        bdfs(&found),
        [
            bdf(0, 0, 0),
            bdf(0, 1, 0),
            bdf(0, 2, 0),
            bdf(0, 2, 3),
            bdf(0, 3, 0),
            bdf(0, 4, 0),
            bdf(1, 0, 0),
            bdf(1, 1, 0),
            bdf(2, 0, 0),
            bdf(1, 2, 0),
            bdf(3, 5, 0),
            bdf(0, 5, 0),
            bdf(0, 0x1f, 0),
        ]
    );
}

#[test]
fn records_identity_class_and_header() {
    let pci = PciSegment::new(topology(), 0, 0, 255);
    let found = pci.enumerate();
    let edu = &found[1];
    assert_eq!((edu.segment, edu.vendor_id, edu.device_id, edu.revision), (0, 0x1234, 0x11e8, 0x10));
    assert_eq!((edu.class, edu.subclass, edu.prog_if), (0x00, 0xff, 0));
    assert_eq!(edu.header_type, HeaderType::Endpoint);
    assert!(!edu.multifunction && edu.bridge.is_none() && !edu.is_bridge());
    assert_eq!(edu.address(), bdf(0, 1, 0).address(0));

    let mf = &found[2];
    assert!(mf.multifunction);
    assert_eq!((mf.class, mf.subclass), (0x06, 0x01));

    let bridge = &found[5];
    assert!(bridge.is_bridge());
    assert_eq!(bridge.header_type, HeaderType::PciPciBridge);
    assert_eq!(bridge.bridge, Some(BridgeBuses { primary: 0, secondary: 1, subordinate: 3 }));
    assert_eq!((bridge.class, bridge.subclass), (0x06, 0x04));
}

#[test]
fn absent_functions_and_unreachable_buses_are_skipped() {
    let pci = PciSegment::new(topology(), 0, 0, 255);
    let found = pci.enumerate();
    assert!(found.iter().all(|f| f.vendor_id != 0xffff));
    assert!(!found.iter().any(|f| f.bdf == bdf(0, 3, 1)), "function 1 of a single-function device");
    assert!(!found.iter().any(|f| f.bdf.bus() == 7), "bus behind no bridge");
    assert!(pci.is_present(bdf(7, 0, 0)), "present, just not reachable");
    assert!(!pci.is_present(bdf(0, 6, 0)));
}

#[test]
fn stays_within_the_segment_bus_range() {
    let pci = PciSegment::new(topology(), 0, 0, 2);
    let found = pci.enumerate();
    assert!(found.iter().any(|f| f.bdf == bdf(2, 0, 0)));
    assert!(!found.iter().any(|f| f.bdf.bus() == 3), "bus 3 is outside 0..=2");
    assert_eq!(pci.set_bus_master(bdf(3, 5, 0), true), Err(PciError::BusOutOfRange(bdf(3, 5, 0))));
    assert_eq!(pci.read_config(bdf(3, 5, 0), 0), u32::MAX);
}

#[test]
fn starts_at_the_first_bus_of_the_segment() {
    let mut cfg = FakeConfigSpace::new(2);
    cfg.add_endpoint(bdf(0x80, 0, 0), 0x1234, 0x11e8);
    cfg.add_bridge(bdf(0x80, 1, 0), 0x1b36, 0x000c, 0x81, 0x81);
    cfg.add_endpoint(bdf(0x81, 0, 0), 0x1234, 0x11e9);
    let pci = PciSegment::new(cfg, 2, 0x80, 0x81);
    let found = pci.enumerate();
    assert_eq!(bdfs(&found), [bdf(0x80, 0, 0), bdf(0x80, 1, 0), bdf(0x81, 0, 0)]);
    assert!(found.iter().all(|f| f.segment == 2));
}

#[test]
fn misprogrammed_bridges_neither_loop_nor_duplicate() {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_bridge(bdf(0, 1, 0), 0x1b36, 0x000c, 1, 1);
    cfg.add_endpoint(bdf(1, 0, 0), 0x1234, 0x11e8);
    // Points back at its own bus.
    cfg.add_bridge(bdf(1, 1, 0), 0x1b36, 0x000c, 1, 1);
    // Points at bus 0.
    cfg.add_bridge(bdf(1, 2, 0), 0x1b36, 0x000c, 0, 0);
    // A second bridge claiming bus 1.
    cfg.add_bridge(bdf(0, 2, 0), 0x1b36, 0x000c, 1, 1);
    let pci = PciSegment::new(cfg, 0, 0, 255);
    let found = pci.enumerate();
    assert_eq!(bdfs(&found), [bdf(0, 1, 0), bdf(1, 0, 0), bdf(1, 1, 0), bdf(1, 2, 0), bdf(0, 2, 0)]);
}

#[test]
fn all_eight_functions_of_a_multifunction_device() {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(bdf(0, 0x1f, 0), 0x8086, 1).multifunction();
    for func in 1..8 {
        cfg.add_endpoint(bdf(0, 0x1f, func), 0x8086, u16::from(func) + 1);
    }
    let found = PciSegment::new(cfg, 0, 0, 0).enumerate();
    assert_eq!(found.len(), 8);
    assert_eq!(found.iter().map(|f| f.device_id).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7, 8]);
}

fn bar_device() -> FakeConfigSpace {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(bdf(0, 3, 0), 0x8086, 0x10d3)
        .mem32_bar(0, 16 << 10, false)
        .bar_address(0, 0xfebf_0000)
        .io_bar(1, 32)
        .bar_address(1, 0xc040)
        .mem64_bar(2, 8 << 30, true)
        .bar_address(2, 0x80_0000_0000)
        .mem64_bar(4, 16 << 10, false)
        .command(0x0407);
    cfg
}

#[test]
fn sizes_32_bit_64_bit_and_io_bars() {
    let pci = PciSegment::new(bar_device(), 0, 0, 0);
    let found = pci.enumerate();
    let f = &found[0];
    assert_eq!(f.bars.len(), 4);
    let bar0 = f.bar(0).unwrap();
    assert_eq!((bar0.address, bar0.size, bar0.is_64bit, bar0.prefetchable, bar0.io), (0xfebf_0000, 16 << 10, false, false, false));
    let bar1 = f.bar(1).unwrap();
    assert_eq!((bar1.address, bar1.size, bar1.io), (0xc040, 32, true));
    let bar2 = f.bar(2).unwrap();
    assert_eq!((bar2.address, bar2.size, bar2.is_64bit, bar2.prefetchable), (0x80_0000_0000, 8 << 30, true, true));
    assert!(f.bar(3).is_none(), "upper half of BAR2");
    let bar4 = f.bar(4).unwrap();
    assert_eq!((bar4.address, bar4.size, bar4.is_64bit, bar4.prefetchable), (0, 16 << 10, true, false));
    assert!(!bar4.is_assigned() && bar0.is_assigned());
}

#[test]
fn sizing_restores_bars_and_turns_decoding_off_meanwhile() {
    let cfg = bar_device();
    let before: Vec<u32> = (0..0x40).step_by(4).map(|off| cfg.peek(bdf(0, 3, 0), off)).collect();
    let pci = PciSegment::new(cfg, 0, 0, 0);
    let _ = pci.enumerate();
    let cfg = pci.access();
    let after: Vec<u32> = (0..0x40).step_by(4).map(|off| cfg.peek(bdf(0, 3, 0), off)).collect();
    assert_eq!(before, after);

    let writes = cfg.writes();
    let first_bar_write = writes.iter().position(|w| (0x10..0x28).contains(&w.offset)).unwrap();
    let decode_off = writes.iter().position(|w| w.offset == config::COMMAND_STATUS && w.value & 0x3 == 0).unwrap();
    let decode_on = writes.iter().rposition(|w| w.offset == config::COMMAND_STATUS && w.value & 0x3 == 0x3).unwrap();
    let last_bar_write = writes.iter().rposition(|w| (0x10..0x28).contains(&w.offset)).unwrap();
    assert!(decode_off < first_bar_write && last_bar_write < decode_on, "{writes:?}");
    assert_eq!(writes[decode_off].value, 0x0404, "bus mastering untouched");
}

#[test]
fn sizing_agrees_with_pci_types_for_endpoint_memory_bars() {
    let pci = PciSegment::new(bar_device(), 0, 0, 0);
    let found = pci.enumerate();
    let cfg = pci.access();
    let header = EndpointHeader::from_header(PciHeader::new(bdf(0, 3, 0).address(0)), cfg).unwrap();
    for slot in [0, 2, 4] {
        let (address, size) = header.bar(slot, cfg).unwrap().unwrap_mem();
        let ours = found[0].bar(slot).unwrap();
        assert_eq!((address as u64, size as u64), (ours.address, ours.size), "BAR{slot}");
    }
}

#[test]
fn bridge_bars_are_sized_and_unusable_bars_skipped() {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_bridge(bdf(0, 1, 0), 0x1b36, 0x000c, 1, 1).mem32_bar(0, 4096, false);
    // Reserved memory type 0b11 (pci_types' `bar` panics on it), then a
    // 64-bit BAR in the last slot, which has no upper half.
    cfg.add_endpoint(bdf(0, 2, 0), 0x1234, 1).set_reg(config::bar_offset(0), 0b110, 0xffff_fff0).mem32_bar(1, 256, false).set_reg(
        config::bar_offset(5),
        config::BAR_MEM_TYPE_64,
        0xffff_fff0,
    );
    let found = PciSegment::new(cfg, 0, 0, 255).enumerate();
    assert_eq!(found[0].bars.len(), 1);
    assert_eq!(found[0].bar(0).unwrap().size, 4096);
    assert_eq!(found[1].bars.iter().map(|b| (b.slot, b.size)).collect::<Vec<_>>(), [(1, 256)]);
}

#[test]
fn bus_master_and_memory_space_toggle_only_their_bit() {
    let mut cfg = topology();
    // I/O enable + INTx disable set; a latched "received master abort".
    cfg.add_endpoint(bdf(0, 6, 0), 0x1234, 0x11e8).command(0x0401).status(0x2010);
    let pci = PciSegment::new(cfg, 0, 0, 255);
    let f = bdf(0, 6, 0);
    pci.set_bus_master(f, true).unwrap();
    assert_eq!(pci.command(f).unwrap().bits(), 0x0405);
    pci.set_memory_space(f, true).unwrap();
    assert_eq!(pci.command(f).unwrap().bits(), 0x0407);
    assert!(pci.command(f).unwrap().contains(CommandRegister::BUS_MASTER_ENABLE));
    pci.set_bus_master(f, false).unwrap();
    assert_eq!(pci.command(f).unwrap().bits(), 0x0403);
    pci.set_memory_space(f, false).unwrap();
    assert_eq!(pci.command(f).unwrap().bits(), 0x0401);
    assert_eq!(pci.read_config(f, config::COMMAND_STATUS) >> 16, 0x2010, "status error bits must survive");
}

#[test]
fn pci_types_update_command_clears_status_bits() {
    // Why set_bus_master does not use pci_types' update_command: it writes
    // the status half back as read, clearing write-one-to-clear bits.
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(bdf(0, 6, 0), 0x1234, 0x11e8).status(0x2010);
    let mut header = PciHeader::new(bdf(0, 6, 0).address(0));
    header.update_command(&cfg, |c| c | CommandRegister::BUS_MASTER_ENABLE);
    assert_eq!(cfg.peek(bdf(0, 6, 0), config::COMMAND_STATUS), 0x0010_0004);
}

#[test]
fn command_operations_on_absent_functions_fail() {
    let pci = PciSegment::new(topology(), 0, 0, 3);
    assert_eq!(pci.set_bus_master(bdf(0, 9, 0), true), Err(PciError::NoFunction(bdf(0, 9, 0))));
    assert_eq!(pci.set_memory_space(bdf(2, 0, 1), true), Err(PciError::NoFunction(bdf(2, 0, 1))));
    assert_eq!(pci.command(bdf(9, 0, 0)), Err(PciError::BusOutOfRange(bdf(9, 0, 0))));
    assert!(pci.access().writes().is_empty());
}

#[test]
fn secondary_bus_of_bridges() {
    let pci = PciSegment::new(topology(), 0, 0, 255);
    assert_eq!(pci.secondary_bus(bdf(0, 4, 0)), Ok(1));
    assert_eq!(pci.secondary_bus(bdf(1, 1, 0)), Ok(2));
    assert_eq!(pci.secondary_bus(bdf(1, 2, 0)), Ok(3));
    assert_eq!(pci.bridge_buses(bdf(0, 4, 0)), Ok(BridgeBuses { primary: 0, secondary: 1, subordinate: 3 }));
    assert_eq!(pci.secondary_bus(bdf(0, 1, 0)), Err(PciError::NotABridge(bdf(0, 1, 0))));
    assert_eq!(pci.secondary_bus(bdf(0, 9, 0)), Err(PciError::NoFunction(bdf(0, 9, 0))));
}

#[test]
fn resolves_dmar_device_scope_paths() {
    let pci = PciSegment::new(topology(), 0, 0, 255);
    assert_eq!(pci.resolve_path(0, &[(1, 0)]), Ok(bdf(0, 1, 0)));
    assert_eq!(pci.resolve_path(0, &[(4, 0), (1, 0), (0, 0)]), Ok(bdf(2, 0, 0)));
    assert_eq!(pci.resolve_path(0, &[(4, 0), (2, 0), (5, 0)]), Ok(bdf(3, 5, 0)));
    // The last entry need not be present (hot-plug slots).
    assert_eq!(pci.resolve_path(0, &[(4, 0), (0x1f, 7)]), Ok(bdf(1, 0x1f, 7)));
    assert_eq!(pci.resolve_path(0, &[]), Err(PciError::EmptyPath));
    assert_eq!(pci.resolve_path(0, &[(1, 0), (0, 0)]), Err(PciError::NotABridge(bdf(0, 1, 0))));
    assert_eq!(pci.resolve_path(0, &[(6, 0), (0, 0)]), Err(PciError::NoFunction(bdf(0, 6, 0))));
    assert_eq!(pci.resolve_path(0, &[(32, 0)]), Err(PciError::BadPathEntry { dev: 32, func: 0 }));
    assert_eq!(pci.resolve_path(0, &[(4, 8), (0, 0)]), Err(PciError::BadPathEntry { dev: 4, func: 8 }));
}

#[test]
fn find_by_vendor_and_device() {
    let found = PciSegment::new(topology(), 0, 0, 255).enumerate();
    let edus: Vec<Bdf> = find(&found, 0x1234, 0x11e8).map(|f| f.bdf).collect();
    assert_eq!(edus, [bdf(0, 1, 0), bdf(1, 0, 0)]);
    assert_eq!(find(&found, 0x1234, 0x0001).count(), 0);
}

#[test]
fn error_messages() {
    let cases = [
        (PciError::BusOutOfRange(bdf(9, 0, 0)), "PCI 09:00.0: bus outside the segment's bus range"),
        (PciError::NoFunction(bdf(0, 2, 1)), "PCI 00:02.1: no function present"),
        (PciError::NotABridge(bdf(0, 1, 0)), "PCI 00:01.0: not a PCI-PCI bridge"),
        (PciError::EmptyPath, "PCI device-scope path is empty"),
        (PciError::BadPathEntry { dev: 32, func: 0 }, "PCI device-scope path entry 0x20.0x0 out of range"),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
}

#[test]
#[should_panic(expected = "bad config offset")]
fn misaligned_config_offsets_panic() {
    let pci = PciSegment::new(topology(), 0, 0, 255);
    let _ = pci.read_config(bdf(0, 1, 0), 2);
}

#[test]
fn raw_access_through_the_trait_object_is_bounded() {
    // FakeConfigSpace is itself a ConfigRegionAccess; absent reads all-ones.
    let cfg = topology();
    // SAFETY: the fake accepts any aligned in-range offset.
    let id = unsafe { cfg.read(bdf(0, 9, 0).address(0), 0) };
    assert_eq!(id, u32::MAX);
}
