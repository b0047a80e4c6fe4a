//! BAR assignment into an MMIO window.

use sluice_pci::fake::FakeConfigSpace;
use sluice_pci::{AssignError, AssignPolicy, Bdf, MIN_BAR_SPAN, PciFunction, PciSegment, config};

const MIB: u64 = 1 << 20;
/// aarch64 `virt`'s 32-bit PCIe MMIO window.
const LOW: std::ops::Range<u64> = 0x1000_0000..0x3eff_0000;
/// aarch64 `virt`'s 64-bit PCIe MMIO window.
const HIGH: std::ops::Range<u64> = 0x80_0000_0000..0x100_0000_0000;

fn bdf(bus: u8, dev: u8, func: u8) -> Bdf {
    Bdf::new(bus, dev, func)
}

/// Like `virt` booted with -kernel: nothing assigned.
fn unassigned() -> FakeConfigSpace {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(bdf(0, 0, 0), 0x1b36, 0x0008);
    cfg.add_endpoint(bdf(0, 1, 0), 0x1234, 0x11e8).mem32_bar(0, 1 << 20, false);
    cfg.add_endpoint(bdf(0, 2, 0), 0x1234, 0x11e8).mem32_bar(0, 1 << 20, false);
    cfg.add_endpoint(bdf(0, 3, 0), 0x1af4, 0x1041)
        .mem32_bar(1, 4096, false)
        .io_bar(0, 32)
        .mem64_bar(4, 16 << 10, true)
        .mem32_bar(3, 256, false);
    cfg
}

/// Every memory BAR of `functions` is in `window`, aligned to its span,
/// and no two spans overlap.
fn check_layout(functions: &[PciFunction], window: &std::ops::Range<u64>) {
    let mut spans = Vec::new();
    for f in functions {
        for bar in f.bars.iter().filter(|b| b.is_memory() && b.is_assigned()) {
            let span = bar.size.max(MIN_BAR_SPAN);
            assert_eq!(bar.address % span, 0, "{} BAR{} at {:#x} misaligned", f.bdf, bar.slot, bar.address);
            if !bar.is_64bit {
                assert!(bar.address + span <= 1 << 32, "32-bit BAR above 4 GiB");
            }
            spans.push((bar.address, bar.address + span, f.bdf, bar.slot));
        }
    }
    for &(start, end, bdf, slot) in &spans {
        assert!(window.start <= start && end <= window.end, "{bdf} BAR{slot} {start:#x}..{end:#x} outside window");
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlap: {pair:?}");
    }
}

#[test]
fn places_unassigned_bars_aligned_32_bit_first_largest_first() {
    let pci = PciSegment::new(unassigned(), 0, 0, 0);
    let mut functions = pci.enumerate();
    let report = pci.assign_bars(&mut functions, &[LOW], AssignPolicy::UnassignedOnly).unwrap();
    let placed: Vec<_> = report.placed.iter().map(|p| (p.bdf, p.slot, p.address, p.size)).collect();
    assert_eq!(
        placed,
        [
            (bdf(0, 1, 0), 0, 0x1000_0000, MIB),
            (bdf(0, 2, 0), 0, 0x1010_0000, MIB),
            (bdf(0, 3, 0), 1, 0x1020_0000, 4096),
            (bdf(0, 3, 0), 3, 0x1020_1000, 256),
            (bdf(0, 3, 0), 4, 0x1020_4000, 16 << 10),
        ]
    );
    assert!(report.behind_bridge.is_empty());
    check_layout(&functions, &LOW);
    // The hardware holds what `functions` says, as a fresh walk shows.
    assert_eq!(pci.enumerate(), functions);
    // The I/O BAR and the command registers are left alone.
    assert_eq!(functions[3].bar(0).unwrap().address, 0);
    assert!(pci.access().writes().iter().all(|w| w.offset != config::COMMAND_STATUS));
}

#[test]
fn leaves_assigned_bars_alone_and_avoids_them() {
    let mut cfg = unassigned();
    cfg.add_endpoint(bdf(0, 4, 0), 0x8086, 0x10d3).mem32_bar(0, 1 << 20, false).bar_address(0, 0x1000_0000).command(0x6);
    let pci = PciSegment::new(cfg, 0, 0, 0);
    let mut functions = pci.enumerate();
    pci.access().clear_writes();
    let report = pci.assign_bars(&mut functions, &[LOW], AssignPolicy::UnassignedOnly).unwrap();
    assert_eq!(report.placed.len(), 5);
    assert!(report.placed.iter().all(|p| p.bdf != bdf(0, 4, 0)));
    assert!(pci.access().writes().iter().all(|w| w.bdf != bdf(0, 4, 0)), "assigned device touched");
    assert_eq!(pci.enumerate()[4].bar(0).unwrap().address, 0x1000_0000);
    check_layout(&functions, &LOW);
}

#[test]
fn policy_all_moves_assigned_bars_with_decoding_off() {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(bdf(0, 4, 0), 0x8086, 0x10d3).mem32_bar(0, 1 << 20, false).bar_address(0, 0xfe00_0000).command(0x6);
    let pci = PciSegment::new(cfg, 0, 0, 0);
    let mut functions = pci.enumerate();
    pci.access().clear_writes();
    let report = pci.assign_bars(&mut functions, &[LOW], AssignPolicy::All).unwrap();
    assert_eq!(report.placed[0].address, 0x1000_0000);
    assert_eq!(pci.access().peek(bdf(0, 4, 0), config::bar_offset(0)), 0x1000_0000);
    let writes: Vec<_> = pci.access().writes().iter().map(|w| (w.offset, w.value)).collect();
    assert_eq!(writes, [(0x04, 0x4), (0x10, 0x1000_0000), (0x04, 0x6)]);
}

#[test]
fn sixty_four_bit_bars_go_high_and_32_bit_bars_cannot() {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(bdf(0, 1, 0), 0x1234, 1).mem64_bar(0, 8 << 30, true);
    let pci = PciSegment::new(cfg, 0, 0, 0);
    let mut functions = pci.enumerate();
    let report = pci.assign_bars(&mut functions, &[HIGH], AssignPolicy::UnassignedOnly).unwrap();
    assert_eq!(report.placed[0].address, 0x80_0000_0000);
    assert_eq!(pci.access().peek(bdf(0, 1, 0), config::bar_offset(1)), 0x80);
    assert_eq!(pci.enumerate(), functions);

    let pci = PciSegment::new(unassigned(), 0, 0, 0);
    let mut functions = pci.enumerate();
    pci.access().clear_writes();
    let err = pci.assign_bars(&mut functions, &[HIGH], AssignPolicy::UnassignedOnly).unwrap_err();
    assert_eq!(err, AssignError::NoSpace { bdf: bdf(0, 1, 0), slot: 0, size: MIB });
    assert!(pci.access().writes().is_empty(), "nothing may be written when a BAR does not fit");
    assert_eq!(pci.enumerate(), functions);
}

#[test]
fn window_straddling_4_gib_keeps_32_bit_bars_low() {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(bdf(0, 1, 0), 0x1234, 1).mem32_bar(0, 1 << 20, false);
    cfg.add_endpoint(bdf(0, 2, 0), 0x1234, 2).mem64_bar(0, 1 << 20, false);
    cfg.add_endpoint(bdf(0, 3, 0), 0x1234, 3).mem32_bar(0, 1 << 20, false);
    let window = 0xffe0_0000..0x1_0100_0000;
    let pci = PciSegment::new(cfg, 0, 0, 0);
    let mut functions = pci.enumerate();
    let report = pci.assign_bars(&mut functions, std::slice::from_ref(&window), AssignPolicy::UnassignedOnly).unwrap();
    let addresses: Vec<_> = report.placed.iter().map(|p| (p.bdf, p.address)).collect();
    // 32-bit BARs go first: they have the tighter limit.
    assert_eq!(addresses, [(bdf(0, 1, 0), 0xffe0_0000), (bdf(0, 3, 0), 0xfff0_0000), (bdf(0, 2, 0), 0x1_0000_0000)]);
    check_layout(&functions, &window);
}

#[test]
fn a_full_window_is_an_error_and_writes_nothing() {
    let pci = PciSegment::new(unassigned(), 0, 0, 0);
    let mut functions = pci.enumerate();
    pci.access().clear_writes();
    let small = 0x1000_0000..0x1018_0000;
    let err = pci.assign_bars(&mut functions, &[small], AssignPolicy::UnassignedOnly).unwrap_err();
    assert_eq!(err, AssignError::NoSpace { bdf: bdf(0, 2, 0), slot: 0, size: MIB });
    assert!(pci.access().writes().is_empty());
    assert_eq!(
        pci.assign_bars(&mut functions, &[LOW, 5..5], AssignPolicy::UnassignedOnly),
        Err(AssignError::EmptyWindow { start: 5, end: 5 })
    );
    assert_eq!(pci.assign_bars(&mut functions, &[], AssignPolicy::UnassignedOnly), Err(AssignError::NoWindow));
}

#[test]
fn never_places_a_bar_at_address_zero() {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(bdf(0, 1, 0), 0x1234, 1).mem32_bar(0, 4096, false);
    let pci = PciSegment::new(cfg, 0, 0, 0);
    let mut functions = pci.enumerate();
    let from_zero = 0..0x10_0000;
    let report = pci.assign_bars(&mut functions, &[from_zero], AssignPolicy::UnassignedOnly).unwrap();
    assert_eq!(report.placed[0].address, 0x1000);
}

#[test]
fn bars_behind_bridges_are_reported_not_placed() {
    let mut cfg = unassigned();
    cfg.add_bridge(bdf(0, 5, 0), 0x1b36, 0x000c, 1, 1);
    cfg.add_endpoint(bdf(1, 0, 0), 0x1234, 0x11e8).mem32_bar(0, 1 << 20, false);
    let pci = PciSegment::new(cfg, 0, 0, 1);
    let mut functions = pci.enumerate();
    pci.access().clear_writes();
    let report = pci.assign_bars(&mut functions, &[LOW], AssignPolicy::All).unwrap();
    assert_eq!(report.behind_bridge, [(bdf(1, 0, 0), 0)]);
    assert!(pci.access().writes().iter().all(|w| w.bdf.bus() == 0));
}

#[test]
fn a_bar_that_ignores_writes_is_reported() {
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(bdf(0, 1, 0), 0x1234, 1).mem32_bar(0, 1 << 20, false);
    let mut functions = PciSegment::new(&cfg, 0, 0, 0).enumerate();
    // The BAR turns read-only after it was sized.
    cfg.add_endpoint(bdf(0, 1, 0), 0x1234, 1).set_reg(config::bar_offset(0), 0, 0);
    let pci = PciSegment::new(&cfg, 0, 0, 0);
    let err = pci.assign_bars(&mut functions, &[LOW], AssignPolicy::UnassignedOnly).unwrap_err();
    assert_eq!(err, AssignError::ReadBack { bdf: bdf(0, 1, 0), slot: 0, wrote: 0x1000_0000, read: 0 });
    assert_eq!(err.to_string(), "PCI 00:01.0 BAR0: wrote 0x10000000, read back 0x0");
}

#[test]
fn each_bar_takes_the_first_window_it_fits() {
    let mut cfg = unassigned();
    cfg.add_endpoint(bdf(0, 4, 0), 0x1234, 1).mem64_bar(0, 8 << 30, true);
    let pci = PciSegment::new(cfg, 0, 0, 0);
    let mut functions = pci.enumerate();
    // virt's two windows, 64-bit first: 64-bit BARs go high, the 32-bit
    // ones cannot and fall through to the low window.
    let report = pci.assign_bars(&mut functions, &[HIGH, LOW], AssignPolicy::UnassignedOnly).unwrap();
    for p in &report.placed {
        let bar = functions.iter().find(|f| f.bdf == p.bdf).unwrap().bar(p.slot).unwrap();
        let window = if bar.is_64bit { HIGH } else { LOW };
        assert!(window.contains(&p.address), "{:?}", p);
    }
    assert_eq!(report.placed.len(), 6);
    // With only the low window, the 8 GiB BAR cannot fit.
    let pci = PciSegment::new(unassigned(), 0, 0, 0);
    let mut functions = pci.enumerate();
    let report = pci.assign_bars(&mut functions, &[LOW, HIGH], AssignPolicy::UnassignedOnly).unwrap();
    assert!(report.placed.iter().all(|p| LOW.contains(&p.address)), "low window first when listed first");
}

#[test]
fn error_messages() {
    assert_eq!(AssignError::EmptyWindow { start: 5, end: 5 }.to_string(), "MMIO window 0x5..0x5 is empty");
    assert_eq!(
        AssignError::NoSpace { bdf: bdf(0, 2, 0), slot: 4, size: MIB }.to_string(),
        "PCI 00:02.0 BAR4: no room for 0x100000 bytes in the MMIO windows"
    );
    assert_eq!(AssignError::NoWindow.to_string(), "no MMIO window given");
}

/// xorshift64*: deterministic pseudo-random numbers for the layout test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_layouts_are_aligned_disjoint_and_written() {
    let mut placed_total = 0;
    let mut no_space = 0;
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        // Every third layout gets a cramped window.
        let window = 0x1000_0000..if seed % 3 == 0 { 0x1400_0000 } else { 0x2000_0000 };
        let mut cfg = FakeConfigSpace::new(0);
        let mut preassigned = 0x1000_0000u64;
        for dev in 0..rng.below(12) as u8 + 1 {
            let f = cfg.add_endpoint(bdf(0, dev, 0), 0x1234, u16::from(dev));
            let mut slot = 0;
            while slot < 6 {
                let size = 16u64 << rng.below(21);
                match rng.below(5) {
                    0 => slot += 1,
                    1 if slot < 5 => {
                        f.mem64_bar(slot, size, rng.below(2) == 0);
                        slot += 2;
                    }
                    2 => {
                        f.io_bar(slot, 4 << rng.below(6));
                        slot += 1;
                    }
                    3 if size >= MIN_BAR_SPAN && preassigned.next_multiple_of(size) + size <= window.end => {
                        // Firmware-assigned, packed from the window start
                        // upwards at its natural alignment.
                        let at = preassigned.next_multiple_of(size);
                        f.mem32_bar(slot, size as u32, false).bar_address(slot, at);
                        preassigned = at + size;
                        slot += 1;
                    }
                    _ => {
                        f.mem32_bar(slot, size as u32, rng.below(2) == 0);
                        slot += 1;
                    }
                }
            }
        }
        let pci = PciSegment::new(cfg, 0, 0, 0);
        let mut functions = pci.enumerate();
        let before = functions.clone();
        pci.access().clear_writes();
        match pci.assign_bars(&mut functions, std::slice::from_ref(&window), AssignPolicy::UnassignedOnly) {
            Ok(report) => {
                check_layout(&functions, &window);
                assert_eq!(pci.enumerate(), functions, "seed {seed}");
                let unassigned = before.iter().flat_map(|f| &f.bars).filter(|b| b.is_memory() && !b.is_assigned()).count();
                assert_eq!(report.placed.len(), unassigned);
                for (old, new) in before.iter().zip(&functions) {
                    for (a, b) in old.bars.iter().zip(&new.bars) {
                        if a.is_assigned() || a.io {
                            assert_eq!(a, b, "seed {seed}: kept BAR moved");
                        }
                    }
                }
                placed_total += report.placed.len();
            }
            Err(AssignError::NoSpace { .. }) => {
                assert!(pci.access().writes().is_empty());
                no_space += 1;
            }
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    assert!(placed_total > 1000 && (10..100).contains(&no_space), "placed {placed_total}, no space {no_space} times");
}
