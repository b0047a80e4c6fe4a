//! Enumeration: walk the buses as firmware numbered them and record every
//! function with its BARs.

use alloc::vec;
use alloc::vec::Vec;

use pci_types::{CommandRegister, ConfigRegionAccess, HeaderType, PciAddress};

use crate::Bdf;
use crate::config;
use crate::segment::{BridgeBuses, PciSegment};

/// One implemented base address register, sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index (0..6; a 64-bit BAR also uses `slot + 1`).
    pub slot: u8,
    /// Bus address the BAR decodes (0: not assigned).
    pub address: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// A 64-bit memory BAR.
    pub is_64bit: bool,
    /// A prefetchable memory BAR.
    pub prefetchable: bool,
    /// An I/O space BAR.
    pub io: bool,
}

impl BarInfo {
    /// Whether firmware (or [`PciSegment::assign_bars`]) gave the BAR an
    /// address.
    #[must_use]
    pub fn is_assigned(&self) -> bool {
        self.address != 0
    }

    /// Whether this is a memory (not I/O) BAR.
    #[must_use]
    pub fn is_memory(&self) -> bool {
        !self.io
    }
}

/// One PCI function found by [`PciSegment::enumerate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// PCI segment (ACPI segment group).
    pub segment: u16,
    /// Bus, device, function.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Revision id.
    pub revision: u8,
    /// Base class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Header layout (bits 6:0 of the header type register).
    pub header_type: HeaderType,
    /// Bit 7 of the header type register (meaningful on function 0).
    pub multifunction: bool,
    /// The implemented BARs, by slot.
    pub bars: Vec<BarInfo>,
    /// Bus numbers, for a PCI-PCI bridge.
    pub bridge: Option<BridgeBuses>,
}

impl PciFunction {
    /// The BAR in `slot`, if implemented.
    #[must_use]
    pub fn bar(&self, slot: u8) -> Option<&BarInfo> {
        self.bars.iter().find(|b| b.slot == slot)
    }

    /// Whether this is a PCI-PCI bridge.
    #[must_use]
    pub fn is_bridge(&self) -> bool {
        self.header_type == HeaderType::PciPciBridge
    }

    /// The pci_types address of this function.
    #[must_use]
    pub fn address(&self) -> PciAddress {
        self.bdf.address(self.segment)
    }
}

/// The functions with the given vendor and device id.
pub fn find(functions: &[PciFunction], vendor_id: u16, device_id: u16) -> impl Iterator<Item = &PciFunction> {
    functions.iter().filter(move |f| f.vendor_id == vendor_id && f.device_id == device_id)
}

/// Where the depth-first walk stands on one bus: the next device/function
/// index (`dev * 8 + func`) to probe.
struct BusCursor {
    bus: u8,
    next: u16,
}

const FUNCTIONS_PER_BUS: u16 = 32 * 8;

impl<A: ConfigRegionAccess> PciSegment<A> {
    /// Find every function of the segment.
    ///
    /// The walk starts at the first bus of the segment and descends,
    /// depth first, through each PCI-PCI bridge into the secondary bus
    /// firmware assigned it. Bus numbers are not assigned here: a bridge
    /// whose secondary bus is 0, not above its own bus, outside the
    /// segment or already visited is not followed. Functions 1..8 are
    /// probed only when function 0 has the multi-function bit; a vendor id
    /// of 0xffff means no function.
    ///
    /// BARs are sized by the usual all-ones write with the function's
    /// memory and I/O decoding turned off meanwhile; the BARs and the
    /// command register are restored afterwards.
    pub fn enumerate(&self) -> Vec<PciFunction> {
        let mut found = Vec::new();
        let mut visited = [false; 256];
        let first_bus = *self.buses().start();
        visited[usize::from(first_bus)] = true;
        let mut stack = vec![BusCursor { bus: first_bus, next: 0 }];
        while let Some(cursor) = stack.last_mut() {
            if cursor.next >= FUNCTIONS_PER_BUS {
                stack.pop();
                continue;
            }
            let bus = cursor.bus;
            let (dev, func) = ((cursor.next / 8) as u8, (cursor.next % 8) as u8);
            let bdf = Bdf::new(bus, dev, func);
            let next_device = (u16::from(dev) + 1) * 8;
            if !self.is_present(bdf) {
                // No function 0: no device. Other holes are legal.
                cursor.next = if func == 0 { next_device } else { cursor.next + 1 };
                continue;
            }
            let function = self.probe(bdf);
            cursor.next = if func == 0 && !function.multifunction { next_device } else { cursor.next + 1 };
            let child = function
                .bridge
                .map(|b| b.secondary)
                .filter(|&secondary| secondary > bus && self.buses().contains(&secondary) && !visited[usize::from(secondary)]);
            found.push(function);
            if let Some(secondary) = child {
                visited[usize::from(secondary)] = true;
                stack.push(BusCursor { bus: secondary, next: 0 });
            }
        }
        found
    }

    /// Read one present function's identity, BARs and bridge buses.
    fn probe(&self, bdf: Bdf) -> PciFunction {
        let header = self.pci_header(bdf);
        let (vendor_id, device_id) = header.id(&self.access);
        let (revision, class, subclass, prog_if) = header.revision_and_class(&self.access);
        let header_type = header.header_type(&self.access);
        let multifunction = header.has_multiple_functions(&self.access);
        let bar_count = match header_type {
            HeaderType::Endpoint => config::ENDPOINT_BARS,
            HeaderType::PciPciBridge => config::BRIDGE_BARS,
            _ => 0,
        };
        let bars = self.size_bars(bdf, bar_count);
        let bridge = self.bridge_buses(bdf).ok();
        PciFunction {
            segment: self.segment(),
            bdf,
            vendor_id,
            device_id,
            revision,
            class,
            subclass,
            prog_if,
            header_type,
            multifunction,
            bars,
            bridge,
        }
    }

    /// Run `f` with `bdf`'s memory and I/O decoding off, then restore the
    /// command register.
    pub(crate) fn with_decoding_off<T>(&self, bdf: Bdf, f: impl FnOnce() -> T) -> T {
        let command = self.pci_header(bdf).command(&self.access);
        let decode = CommandRegister::MEMORY_ENABLE | CommandRegister::IO_ENABLE;
        let was_decoding = command.intersects(decode);
        if was_decoding {
            // The function is present (we read its command register); the
            // bus is in range, so the write cannot fail.
            let _ = self.write_command(bdf, command - decode);
        }
        let result = f();
        if was_decoding {
            let _ = self.write_command(bdf, command);
        }
        result
    }

    /// Size the first `count` BARs of `bdf`.
    ///
    /// Sizing is done here rather than with pci_types'
    /// `EndpointHeader::bar`, which handles endpoints only (bridges have
    /// BARs too), does not size I/O BARs, panics on the reserved memory
    /// type and leaves decoding on while the BAR holds all-ones.
    fn size_bars(&self, bdf: Bdf, count: u8) -> Vec<BarInfo> {
        if count == 0 {
            return Vec::new();
        }
        self.with_decoding_off(bdf, || {
            let mut bars = Vec::new();
            let mut slot = 0;
            while slot < count {
                let (bar, used) = self.size_bar(bdf, slot, count);
                bars.extend(bar);
                slot += used;
            }
            bars
        })
    }

    /// Write all-ones to a 32-bit BAR, read the size mask back, restore the
    /// original value.
    fn probe_mask(&self, bdf: Bdf, offset: u16) -> u32 {
        let original = self.read_config(bdf, offset);
        let _ = self.write_config(bdf, offset, u32::MAX);
        let mask = self.read_config(bdf, offset);
        let _ = self.write_config(bdf, offset, original);
        mask
    }

    /// Size the BAR in `slot`: returns it (None if unimplemented or
    /// unusable) and how many slots it takes.
    fn size_bar(&self, bdf: Bdf, slot: u8, count: u8) -> (Option<BarInfo>, u8) {
        let offset = config::bar_offset(slot);
        let value = self.read_config(bdf, offset);
        let info = |address: u64, mask: u64, is_64bit, prefetchable, io| {
            // The size is the lowest writable address bit.
            (mask != 0).then(|| BarInfo { slot, address, size: mask & mask.wrapping_neg(), is_64bit, prefetchable, io })
        };
        if value & config::BAR_IO != 0 {
            let mut mask = self.probe_mask(bdf, offset) & !config::BAR_IO_FLAGS;
            if mask != 0 && mask & 0xffff_0000 == 0 {
                // A 16-bit I/O decoder: the upper half reads as zero.
                mask |= 0xffff_0000;
            }
            return (info(u64::from(value & !config::BAR_IO_FLAGS), u64::from(mask), false, false, true), 1);
        }
        let prefetchable = value & config::BAR_PREFETCHABLE != 0;
        let low_address = value & !config::BAR_MEM_FLAGS;
        match value & config::BAR_MEM_TYPE_MASK {
            config::BAR_MEM_TYPE_32 | config::BAR_MEM_TYPE_1M => {
                let mask = self.probe_mask(bdf, offset) & !config::BAR_MEM_FLAGS;
                (info(u64::from(low_address), u64::from(mask), false, prefetchable, false), 1)
            }
            config::BAR_MEM_TYPE_64 if slot + 1 < count => {
                let high = self.read_config(bdf, offset + 4);
                let _ = self.write_config(bdf, offset, u32::MAX);
                let _ = self.write_config(bdf, offset + 4, u32::MAX);
                let mask_low = self.read_config(bdf, offset) & !config::BAR_MEM_FLAGS;
                let mask_high = self.read_config(bdf, offset + 4);
                let _ = self.write_config(bdf, offset, value);
                let _ = self.write_config(bdf, offset + 4, high);
                let address = u64::from(high) << 32 | u64::from(low_address);
                let mask = u64::from(mask_high) << 32 | u64::from(mask_low);
                (info(address, mask, true, prefetchable, false), 2)
            }
            // A 64-bit BAR in the last slot, or the reserved type: unusable.
            _ => (None, 1),
        }
    }
}
