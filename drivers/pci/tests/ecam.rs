//! The ECAM accessor over a RAM buffer standing in for the mapped window.

use sluice_pci::{BYTES_PER_BUS, Bdf, ConfigRegionAccess, Ecam, PciSegment};

#[derive(Clone)]
#[repr(C, align(4096))]
struct Page([u32; 1024]);

/// A page-aligned RAM window for buses `bus_start..=bus_end`, all-ones
/// (no function anywhere).
struct Window {
    pages: Vec<Page>,
}

impl Window {
    fn new(bus_start: u8, bus_end: u8) -> Self {
        let len = Ecam::window_len(bus_start, bus_end);
        Self { pages: vec![Page([u32::MAX; 1024]); len / 4096] }
    }

    /// Run `f` with an Ecam over this window; the window is mutably
    /// borrowed for as long as the Ecam exists.
    fn with_ecam<T>(&mut self, segment: u16, bus_start: u8, bus_end: u8, f: impl FnOnce(&Ecam) -> T) -> T {
        let base = self.pages.as_mut_ptr().expose_provenance();
        // SAFETY: the window is RAM owned by `self`, page aligned and
        // window_len(bus_start, bus_end) long (when built with the same
        // buses), and nothing else touches it while `f` runs.
        let ecam = unsafe { Ecam::new(base, segment, bus_start, bus_end) };
        f(&ecam)
    }

    fn dword(&self, byte_offset: usize) -> u32 {
        self.pages[byte_offset / 4096].0[byte_offset % 4096 / 4]
    }

    fn set_dword(&mut self, byte_offset: usize, value: u32) {
        self.pages[byte_offset / 4096].0[byte_offset % 4096 / 4] = value;
    }
}

#[test]
fn window_len_and_mcfg_window() {
    assert_eq!(Ecam::window_len(0, 255), 256 * BYTES_PER_BUS);
    assert_eq!(Ecam::window_len(2, 3), 2 << 20);
    assert_eq!(Ecam::mcfg_window(0xb000_0000, 0, 255), (0xb000_0000, 256 << 20));
    assert_eq!(Ecam::mcfg_window(0xb000_0000, 2, 3), (0xb020_0000, 2 << 20));
}

#[test]
fn registers_sit_at_bus_dev_fn_offset() {
    let mut window = Window::new(2, 3);
    let cases = [(2, 0, 0, 0x000, 0usize), (2, 1, 2, 0x10, 0x0a010), (3, 31, 7, 0xffc, 0x1f_fffc), (3, 4, 5, 0x100, 0x12_5100)];
    window.with_ecam(1, 2, 3, |ecam| {
        assert_eq!((ecam.segment(), ecam.bus_start(), ecam.bus_end()), (1, 2, 3));
        for (i, &(bus, dev, func, offset, _)) in cases.iter().enumerate() {
            // SAFETY: the address lies inside the window (bus 2..=3).
            unsafe { ecam.write(Bdf::new(bus, dev, func).address(1), offset, 0x1000 + i as u32) };
        }
        for (i, &(bus, dev, func, offset, _)) in cases.iter().enumerate() {
            // SAFETY: as above.
            let read = unsafe { ecam.read(Bdf::new(bus, dev, func).address(1), offset) };
            assert_eq!(read, 0x1000 + i as u32);
        }
    });
    for (i, &(bus, dev, func, offset, byte)) in cases.iter().enumerate() {
        assert_eq!(window.dword(byte), 0x1000 + i as u32, "{bus}:{dev}.{func}+{offset:#x}");
    }
}

#[test]
fn addresses_outside_the_window_read_all_ones_and_drop_writes() {
    let mut window = Window::new(2, 3);
    window.set_dword(0, 0x11e8_1234);
    let outside = [
        (Bdf::new(1, 0, 0).address(1), 0),    // below bus_start
        (Bdf::new(4, 0, 0).address(1), 0),    // above bus_end
        (Bdf::new(2, 0, 0).address(0), 0),    // other segment
        (Bdf::new(2, 0, 0).address(1), 2),    // misaligned
        (Bdf::new(2, 0, 0).address(1), 4096), // past the function
    ];
    window.with_ecam(1, 2, 3, |ecam| {
        for (address, offset) in outside {
            // SAFETY: Ecam checks every address against its window.
            unsafe { ecam.write(address, offset, 0) };
            // SAFETY: as above.
            assert_eq!(unsafe { ecam.read(address, offset) }, u32::MAX, "{address:?}+{offset}");
        }
        // SAFETY: inside the window.
        assert_eq!(unsafe { ecam.read(Bdf::new(2, 0, 0).address(1), 0) }, 0x11e8_1234);
    });
    assert!(window.pages.iter().skip(1).all(|p| p.0.iter().all(|&d| d == u32::MAX)));
    assert_eq!(window.dword(0), 0x11e8_1234);
}

#[test]
fn enumerates_through_ecam() {
    let mut window = Window::new(0, 1);
    // 00:02.0, an endpoint with no BARs (BAR registers read zero).
    let f = 2 << 15;
    for off in (0..0x40).step_by(4) {
        window.set_dword(f + off, 0);
    }
    window.set_dword(f, 0x11e8_1234);
    let found = window.with_ecam(0, 0, 1, |ecam| {
        let pci = PciSegment::new(ecam, 0, 0, 1);
        pci.set_bus_master(Bdf::new(0, 2, 0), true).unwrap();
        pci.enumerate()
    });
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].bdf, found[0].vendor_id, found[0].device_id), (Bdf::new(0, 2, 0), 0x1234, 0x11e8));
    // RAM "BARs" are fully writable; sizing must still leave them as found.
    assert_eq!(window.dword(f + 4), 0x4);
    assert!((0x10..0x28).step_by(4).all(|off| window.dword(f + off) == 0));
}

#[test]
#[should_panic(expected = "is empty")]
fn inverted_bus_range_panics() {
    let mut window = Window::new(0, 0);
    window.with_ecam(0, 1, 0, |_| ());
}
