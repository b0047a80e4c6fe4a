//! A configuration space made of RAM, for host tests: functions and
//! bridges with BARs that size like hardware (write all-ones, read back the
//! size mask), read-only fields that stay read-only, and a write-one-to-
//! clear status register. Absent functions read all-ones.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::RefCell;

use pci_types::{ConfigRegionAccess, PciAddress};

use crate::Bdf;
use crate::config;

const DWORDS: usize = 1024;
/// Dwords of the header whose writable bits are described by a mask;
/// the device-specific area above them is plain read/write RAM.
const HEADER_DWORDS: usize = 16;

/// Writable bits of the command register this fake implements.
const COMMAND_WRITABLE: u32 = 0x07ff;

/// One configuration write seen by the fake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigWrite {
    /// The function written.
    pub bdf: Bdf,
    /// Register offset.
    pub offset: u16,
    /// Value written.
    pub value: u32,
}

/// One fake function: its registers and which header bits are writable.
#[derive(Clone, Debug)]
pub struct FakeFunction {
    regs: Vec<u32>,
    writable: [u32; HEADER_DWORDS],
}

impl FakeFunction {
    fn new(vendor_id: u16, device_id: u16, header_type: u8) -> Self {
        let mut regs = alloc::vec![0; DWORDS];
        regs[0] = u32::from(device_id) << 16 | u32::from(vendor_id);
        regs[3] = u32::from(header_type) << 16;
        let mut writable = [0; HEADER_DWORDS];
        writable[1] = COMMAND_WRITABLE;
        // Cache line size and latency timer.
        writable[3] = 0xffff;
        // Interrupt line.
        writable[15] = 0xff;
        Self { regs, writable }
    }

    /// Set the class code, subclass and programming interface.
    pub fn class(&mut self, class: u8, subclass: u8, prog_if: u8) -> &mut Self {
        self.regs[2] = (self.regs[2] & 0xff) | u32::from(class) << 24 | u32::from(subclass) << 16 | u32::from(prog_if) << 8;
        self
    }

    /// Set the revision id.
    pub fn revision(&mut self, revision: u8) -> &mut Self {
        self.regs[2] = (self.regs[2] & !0xff) | u32::from(revision);
        self
    }

    /// Set the multi-function bit (bit 7 of the header type).
    pub fn multifunction(&mut self) -> &mut Self {
        self.regs[3] |= 0x80 << 16;
        self
    }

    /// Set the command register's reset value.
    pub fn command(&mut self, command: u16) -> &mut Self {
        self.regs[1] = (self.regs[1] & 0xffff_0000) | u32::from(command);
        self
    }

    /// Set the status register (e.g. error bits a test expects to survive).
    pub fn status(&mut self, status: u16) -> &mut Self {
        self.regs[1] = (self.regs[1] & 0xffff) | u32::from(status) << 16;
        self
    }

    fn bar_index(slot: u8) -> usize {
        usize::from(config::bar_offset(slot) / 4)
    }

    /// A 32-bit memory BAR of `size` bytes (a power of two, at least 16).
    pub fn mem32_bar(&mut self, slot: u8, size: u32, prefetchable: bool) -> &mut Self {
        assert!(size.is_power_of_two() && size >= 16, "bad BAR size {size:#x}");
        let i = Self::bar_index(slot);
        self.regs[i] = if prefetchable { config::BAR_PREFETCHABLE } else { 0 };
        self.writable[i] = !(size - 1);
        self
    }

    /// A 64-bit memory BAR of `size` bytes in `slot` and `slot + 1`.
    pub fn mem64_bar(&mut self, slot: u8, size: u64, prefetchable: bool) -> &mut Self {
        assert!(size.is_power_of_two() && size >= 16, "bad BAR size {size:#x}");
        let i = Self::bar_index(slot);
        let mask = !(size - 1);
        self.regs[i] = config::BAR_MEM_TYPE_64 | if prefetchable { config::BAR_PREFETCHABLE } else { 0 };
        self.regs[i + 1] = 0;
        self.writable[i] = mask as u32 & !config::BAR_MEM_FLAGS;
        self.writable[i + 1] = (mask >> 32) as u32;
        self
    }

    /// An I/O BAR of `size` bytes (a power of two, at least 4).
    pub fn io_bar(&mut self, slot: u8, size: u32) -> &mut Self {
        assert!(size.is_power_of_two() && size >= 4, "bad BAR size {size:#x}");
        let i = Self::bar_index(slot);
        self.regs[i] = config::BAR_IO;
        self.writable[i] = !(size - 1) & !config::BAR_IO_FLAGS;
        self
    }

    /// Give the BAR in `slot` an address, as firmware would.
    pub fn bar_address(&mut self, slot: u8, address: u64) -> &mut Self {
        let i = Self::bar_index(slot);
        let flags = if self.regs[i] & config::BAR_IO != 0 { config::BAR_IO_FLAGS } else { config::BAR_MEM_FLAGS };
        let is_64bit = self.regs[i] & (config::BAR_IO | config::BAR_MEM_TYPE_MASK) == config::BAR_MEM_TYPE_64;
        self.regs[i] = (self.regs[i] & flags) | (address as u32 & self.writable[i]);
        if is_64bit {
            self.regs[i + 1] = (address >> 32) as u32 & self.writable[i + 1];
        }
        self
    }

    /// Set any register and, for a header register (below 0x40), which of
    /// its bits are writable (command and status keep their own rules).
    pub fn set_reg(&mut self, offset: u16, value: u32, writable: u32) -> &mut Self {
        let i = usize::from(offset / 4);
        self.regs[i] = value;
        if i < HEADER_DWORDS {
            self.writable[i] = writable;
        }
        self
    }

    fn read(&self, offset: u16) -> u32 {
        self.regs[usize::from(offset / 4)]
    }

    fn write(&mut self, offset: u16, value: u32) {
        let i = usize::from(offset / 4);
        if i == 1 {
            // Command bits are plain read/write; status error bits clear
            // when written with one.
            let command = (self.regs[1] & !COMMAND_WRITABLE) | (value & COMMAND_WRITABLE);
            let cleared = (value >> 16) & u32::from(config::STATUS_W1C);
            self.regs[1] = (command & 0xffff) | (self.regs[1] & 0xffff_0000 & !(cleared << 16));
        } else if i < HEADER_DWORDS {
            let w = self.writable[i];
            self.regs[i] = (self.regs[i] & !w) | (value & w);
        } else {
            self.regs[i] = value;
        }
    }
}

/// A RAM-backed configuration space of one segment.
#[derive(Debug)]
pub struct FakeConfigSpace {
    segment: u16,
    functions: RefCell<BTreeMap<Bdf, FakeFunction>>,
    writes: RefCell<Vec<ConfigWrite>>,
}

impl FakeConfigSpace {
    /// An empty segment: every function reads all-ones.
    #[must_use]
    pub fn new(segment: u16) -> Self {
        Self { segment, functions: RefCell::new(BTreeMap::new()), writes: RefCell::new(Vec::new()) }
    }

    /// Add an endpoint (type 0 header) with no BARs.
    pub fn add_endpoint(&mut self, bdf: Bdf, vendor_id: u16, device_id: u16) -> &mut FakeFunction {
        self.insert(bdf, FakeFunction::new(vendor_id, device_id, 0))
    }

    /// Add a PCI-PCI bridge (type 1 header) on `bdf`'s bus leading to
    /// `secondary..=subordinate`, with writable bus numbers and memory
    /// window registers.
    pub fn add_bridge(&mut self, bdf: Bdf, vendor_id: u16, device_id: u16, secondary: u8, subordinate: u8) -> &mut FakeFunction {
        let mut f = FakeFunction::new(vendor_id, device_id, 1);
        f.class(0x06, 0x04, 0);
        let buses = usize::from(config::BRIDGE_BUSES / 4);
        f.regs[buses] = u32::from(subordinate) << 16 | u32::from(secondary) << 8 | u32::from(bdf.bus());
        f.writable[buses] = 0xffff_ffff;
        f.writable[usize::from(config::BRIDGE_MEMORY / 4)] = 0xfff0_fff0;
        self.insert(bdf, f)
    }

    fn insert(&mut self, bdf: Bdf, f: FakeFunction) -> &mut FakeFunction {
        let functions = self.functions.get_mut();
        functions.insert(bdf, f);
        functions.get_mut(&bdf).expect("just inserted")
    }

    /// Remove a function (hot unplug).
    pub fn remove(&mut self, bdf: Bdf) {
        self.functions.get_mut().remove(&bdf);
    }

    /// A register's value without the side effects of an access (all-ones
    /// for an absent function).
    #[must_use]
    pub fn peek(&self, bdf: Bdf, offset: u16) -> u32 {
        self.functions.borrow().get(&bdf).map_or(u32::MAX, |f| f.read(offset))
    }

    /// Every write so far, oldest first.
    #[must_use]
    pub fn writes(&self) -> Vec<ConfigWrite> {
        self.writes.borrow().clone()
    }

    /// Forget the recorded writes.
    pub fn clear_writes(&self) {
        self.writes.borrow_mut().clear();
    }

    fn check(&self, address: PciAddress, offset: u16) -> Bdf {
        assert_eq!(address.segment(), self.segment, "access to another segment");
        assert!(offset % 4 == 0 && offset < 4096, "bad config offset {offset:#x}");
        Bdf::from_address(address)
    }
}

impl ConfigRegionAccess for FakeConfigSpace {
    unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
        let bdf = self.check(address, offset);
        self.peek(bdf, offset)
    }

    unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
        let bdf = self.check(address, offset);
        if let Some(f) = self.functions.borrow_mut().get_mut(&bdf) {
            f.write(offset, value);
            self.writes.borrow_mut().push(ConfigWrite { bdf, offset, value });
        }
    }
}
