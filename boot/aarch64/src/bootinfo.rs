//! What the loader handed over: the device tree (command line, RAM,
//! reservations, devices), in owned form.

use sluice_boot::cmdline_option;
use alloc::string::String;
use alloc::vec::Vec;

use crate::dt::Devices;

/// Where the DTB address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtbSource {
    /// x0 at entry (arm64 boot protocol: `Image` via QEMU or U-Boot `booti`).
    Register,
    /// x0 was zero (QEMU `-kernel` with an ELF): the start of QEMU virt's
    /// RAM, where QEMU puts it.
    QemuElfFallback,
}

/// What the boot loader handed over, owned.
#[derive(Clone, Debug)]
pub struct BootInfo {
    /// The kernel command line (`/chosen bootargs`, QEMU `-append`).
    pub cmdline: String,
    /// Physical address of the DTB.
    pub dtb_pa: u64,
    /// Its size in bytes (kept out of the frame allocator).
    pub dtb_len: u64,
    /// How [`dtb_pa`](Self::dtb_pa) was found.
    pub dtb_source: DtbSource,
    /// RAM from the device tree's memory nodes: `(base, len)`, sorted.
    pub ram: Vec<(u64, u64)>,
    /// Reserved ranges (`/memreserve/`, `/reserved-memory`): `(base, len)`.
    pub reserved: Vec<(u64, u64)>,
    /// What went to the frame allocator: `(base, len)`.
    pub free_ram: Vec<(u64, u64)>,
    /// SMMUs, PCIe hosts, GIC, UARTs.
    pub devices: Devices,
}

impl BootInfo {
    /// The value of `key=value` on the command line (the last one wins);
    /// `Some("")` for a bare `key`.
    #[must_use]
    pub fn option(&self, key: &str) -> Option<&str> {
        cmdline_option(&self.cmdline, key)
    }
}

/// A fixed-capacity list (no heap yet when the device tree is first read).
#[derive(Clone, Copy, Debug)]
pub struct Fixed<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
    /// Items that did not fit.
    pub dropped: usize,
}

impl<T: Copy + Default, const N: usize> Fixed<T, N> {
    /// An empty list.
    #[must_use]
    pub fn new() -> Self {
        Self { items: [T::default(); N], len: 0, dropped: 0 }
    }

    /// Append `item`, or count it as dropped when full.
    pub fn push(&mut self, item: T) {
        if self.len < N {
            self.items[self.len] = item;
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// The items.
    #[must_use]
    pub fn as_slice(&self) -> &[T] {
        &self.items[..self.len]
    }
}

impl<T: Copy + Default, const N: usize> Default for Fixed<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Usable RAM: `ram` entries (`(base, len)`, rounded inwards to 4 KiB)
/// minus every range in `holes` (`(start, end)`), as `(start, end)` sorted.
#[must_use]
pub fn usable_ram(ram: &[(u64, u64)], holes: &[(u64, u64)]) -> Fixed<(u64, u64), 128> {
    let mut out: Fixed<(u64, u64), 128> = Fixed::new();
    for &(base, len) in ram {
        let start = base.next_multiple_of(4096);
        let end = base.saturating_add(len) & !4095;
        if start < end {
            out.push((start, end));
        }
    }
    for &(hs, he) in holes {
        let hs = hs & !4095;
        let he = he.checked_next_multiple_of(4096).unwrap_or(u64::MAX);
        let mut next: Fixed<(u64, u64), 128> = Fixed::new();
        next.dropped = out.dropped;
        for &(s, e) in out.as_slice() {
            if he <= s || hs >= e {
                next.push((s, e));
                continue;
            }
            if s < hs {
                next.push((s, hs));
            }
            if he < e {
                next.push((he, e));
            }
        }
        out = next;
    }
    out.items[..out.len].sort_unstable();
    out
}
