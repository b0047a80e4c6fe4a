//! What the loader told us: PVH `hvm_start_info` (QEMU `-kernel`) or the
//! Multiboot2 information structure (GRUB).
//!
//! Parsing happens in two steps: [`RawBoot::parse`] runs before the heap
//! exists and keeps fixed-size arrays; [`BootInfo`] is the owned, allocated
//! form handed to the rest of the hypervisor.

use sluice_boot::cmdline_option;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::entry::MULTIBOOT2_BOOT_MAGIC;
use crate::platform::phys_bytes;

/// `hvm_start_info.magic`.
pub const PVH_START_MAGIC: u32 = 0x336e_c578;

/// Memory-map entry type for usable RAM (E820 and Multiboot2 agree).
pub const MEM_RAM: u32 = 1;

/// Which loader started us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Xen/QEMU PVH direct boot (`hvm_start_info` in ebx).
    Pvh,
    /// Multiboot2 (GRUB): information structure in ebx.
    Multiboot2,
}

/// One firmware memory-map entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// E820 type: 1 RAM, 2 reserved, 3 ACPI reclaimable, 4 ACPI NVS, 5 bad.
    pub kind: u32,
}

impl MemRegion {
    /// A name for the type.
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            1 => "RAM",
            2 => "reserved",
            3 => "ACPI reclaimable",
            4 => "ACPI NVS",
            5 => "bad",
            _ => "other",
        }
    }
}

/// What the boot loader handed over, owned.
#[derive(Clone, Debug)]
pub struct BootInfo {
    /// The loader's protocol.
    pub protocol: BootProtocol,
    /// The kernel command line (`-append` in QEMU).
    pub cmdline: String,
    /// Physical address of the ACPI RSDP (for Multiboot2: the copy inside
    /// the information structure, which stays reserved).
    pub rsdp_pa: Option<u64>,
    /// Usable RAM as the firmware reports it: `(base, len)`, sorted.
    pub ram: Vec<(u64, u64)>,
    /// The firmware memory map, all types, as reported.
    pub memory_map: Vec<MemRegion>,
    /// Boot modules: `(base, len)`; their memory is kept out of the frame
    /// allocator.
    pub modules: Vec<(u64, u64)>,
    /// What went to the frame allocator: `(base, len)`.
    pub free_ram: Vec<(u64, u64)>,
}

impl BootInfo {
    /// The value of `key=value` on the command line (the last one wins);
    /// `Some("")` for a bare `key`.
    #[must_use]
    pub fn option(&self, key: &str) -> Option<&str> {
        cmdline_option(&self.cmdline, key)
    }
}

/// A fixed-capacity list (no heap yet when the boot info is read).
#[derive(Clone, Copy, Debug)]
pub struct Fixed<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
    /// Items that did not fit.
    pub dropped: usize,
}

impl<T: Copy + Default, const N: usize> Fixed<T, N> {
    fn new() -> Self {
        Self { items: [T::default(); N], len: 0, dropped: 0 }
    }

    fn push(&mut self, item: T) {
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

/// Why the boot information could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// Neither Multiboot2's eax nor a PVH start-info magic.
    UnknownLoader { eax: u32, magic_at_ebx: u32 },
    /// PVH start info older than version 1 (no memory map).
    PvhWithoutMemmap,
    /// No memory map at all.
    NoMemoryMap,
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownLoader { eax, magic_at_ebx } => {
                write!(f, "unknown loader: eax {eax:#x}, word at ebx {magic_at_ebx:#x} (want Multiboot2 or PVH)")
            }
            Self::PvhWithoutMemmap => f.write_str("PVH start info version 0 has no memory map"),
            Self::NoMemoryMap => f.write_str("the loader passed no memory map"),
        }
    }
}

/// The boot information read in place, before the heap exists.
#[derive(Debug)]
pub struct RawBoot {
    /// The loader's protocol.
    pub protocol: BootProtocol,
    /// The firmware memory map.
    pub regions: Fixed<MemRegion, 128>,
    /// Command line bytes (no NUL), in the loader's memory.
    pub cmdline: &'static [u8],
    /// RSDP physical address.
    pub rsdp_pa: Option<u64>,
    /// Modules: `(base, len)`.
    pub modules: Fixed<(u64, u64), 16>,
    /// Loader structures to keep out of the frame allocator: `(start, end)`.
    pub loader_ranges: Fixed<(u64, u64), 48>,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct HvmModlistEntry {
    paddr: u64,
    size: u64,
    cmdline_paddr: u64,
    reserved: u64,
}

fn read<T: FromBytes>(bytes: &[u8], offset: usize) -> Option<T> {
    T::read_from_prefix(bytes.get(offset..)?).ok().map(|(v, _)| v)
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    read::<[u8; 4]>(bytes, offset).map(u32::from_le_bytes)
}

/// A NUL-terminated string at `pa` (at most 4 KiB, read page by page so as
/// not to run into whatever follows it).
fn c_string(pa: u64) -> &'static [u8] {
    const MAX: u64 = 4096;
    let mut len = 0u64;
    while len < MAX {
        let at = pa + len;
        let chunk = (4096 - at % 4096).min(MAX - len);
        let bytes = phys_bytes(at, chunk as usize);
        if let Some(nul) = bytes.iter().position(|&b| b == 0) {
            return phys_bytes(pa, (len + nul as u64) as usize);
        }
        len += chunk;
    }
    phys_bytes(pa, MAX as usize)
}

impl RawBoot {
    /// Read the loader's structures: `eax` and `ebx` as the loader left
    /// them.
    pub fn parse(eax: u32, ebx: u64) -> Result<Self, BootInfoError> {
        if eax == MULTIBOOT2_BOOT_MAGIC {
            return Self::parse_multiboot2(ebx);
        }
        let magic = u32_at(phys_bytes(ebx, 4), 0).unwrap_or(0);
        if magic == PVH_START_MAGIC {
            return Self::parse_pvh(ebx);
        }
        Err(BootInfoError::UnknownLoader { eax, magic_at_ebx: magic })
    }

    fn empty(protocol: BootProtocol) -> Self {
        Self {
            protocol,
            regions: Fixed::new(),
            cmdline: &[],
            rsdp_pa: None,
            modules: Fixed::new(),
            loader_ranges: Fixed::new(),
        }
    }

    fn parse_pvh(pa: u64) -> Result<Self, BootInfoError> {
        let size = size_of::<HvmStartInfo>();
        let info: HvmStartInfo = read(phys_bytes(pa, size), 0).ok_or(BootInfoError::NoMemoryMap)?;
        let mut raw = Self::empty(BootProtocol::Pvh);
        raw.loader_ranges.push((pa, pa + size as u64));
        if info.version < 1 || info.memmap_paddr == 0 {
            return Err(BootInfoError::PvhWithoutMemmap);
        }
        let entry = size_of::<HvmMemmapEntry>();
        let map = phys_bytes(info.memmap_paddr, entry * info.memmap_entries as usize);
        raw.loader_ranges.push((info.memmap_paddr, info.memmap_paddr + map.len() as u64));
        for i in 0..info.memmap_entries as usize {
            if let Some(e) = read::<HvmMemmapEntry>(map, i * entry) {
                raw.regions.push(MemRegion { base: e.addr, len: e.size, kind: e.kind });
            }
        }
        if info.cmdline_paddr != 0 {
            raw.cmdline = c_string(info.cmdline_paddr);
            raw.loader_ranges.push((info.cmdline_paddr, info.cmdline_paddr + raw.cmdline.len() as u64 + 1));
        }
        raw.rsdp_pa = (info.rsdp_paddr != 0).then_some(info.rsdp_paddr);
        if info.nr_modules != 0 && info.modlist_paddr != 0 {
            let entry = size_of::<HvmModlistEntry>();
            let list = phys_bytes(info.modlist_paddr, entry * info.nr_modules as usize);
            raw.loader_ranges.push((info.modlist_paddr, info.modlist_paddr + list.len() as u64));
            for i in 0..info.nr_modules as usize {
                if let Some(m) = read::<HvmModlistEntry>(list, i * entry) {
                    raw.modules.push((m.paddr, m.size));
                    raw.loader_ranges.push((m.paddr, m.paddr + m.size));
                    if m.cmdline_paddr != 0 {
                        let s = c_string(m.cmdline_paddr);
                        raw.loader_ranges.push((m.cmdline_paddr, m.cmdline_paddr + s.len() as u64 + 1));
                    }
                }
            }
        }
        Ok(raw)
    }

    fn parse_multiboot2(pa: u64) -> Result<Self, BootInfoError> {
        let total = u32_at(phys_bytes(pa, 8), 0).unwrap_or(8).max(8) as usize;
        let mbi = phys_bytes(pa, total);
        let mut raw = Self::empty(BootProtocol::Multiboot2);
        raw.loader_ranges.push((pa, pa + total as u64));
        let mut rsdp_old = None;
        let mut rsdp_new = None;
        let mut off = 8usize;
        while off + 8 <= total {
            let (Some(kind), Some(size)) = (u32_at(mbi, off), u32_at(mbi, off + 4)) else { break };
            let size = size as usize;
            if kind == 0 || size < 8 || off + size > total {
                break;
            }
            let tag = &mbi[off..off + size];
            match kind {
                1 => {
                    let s = &tag[8..];
                    raw.cmdline = &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())];
                }
                3 => {
                    if let (Some(start), Some(end)) = (u32_at(tag, 8), u32_at(tag, 12)) {
                        let (start, end) = (u64::from(start), u64::from(end));
                        raw.modules.push((start, end.saturating_sub(start)));
                        raw.loader_ranges.push((start, end));
                    }
                }
                6 => {
                    let entry_size = u32_at(tag, 8).unwrap_or(0) as usize;
                    if entry_size >= 20 {
                        let mut e = 16;
                        while e + entry_size <= size {
                            let base = read::<[u8; 8]>(tag, e).map(u64::from_le_bytes).unwrap_or(0);
                            let len = read::<[u8; 8]>(tag, e + 8).map(u64::from_le_bytes).unwrap_or(0);
                            let kind = u32_at(tag, e + 16).unwrap_or(0);
                            raw.regions.push(MemRegion { base, len, kind });
                            e += entry_size;
                        }
                    }
                }
                14 => rsdp_old = Some(pa + off as u64 + 8),
                15 => rsdp_new = Some(pa + off as u64 + 8),
                _ => {}
            }
            off = (off + size).next_multiple_of(8);
        }
        raw.rsdp_pa = rsdp_new.or(rsdp_old);
        if raw.regions.as_slice().is_empty() {
            return Err(BootInfoError::NoMemoryMap);
        }
        Ok(raw)
    }

    /// The owned form, once the heap works. `free_ram` is what was given to
    /// the frame allocator.
    #[must_use]
    pub fn boot_info(&self, free_ram: &[(u64, u64)]) -> BootInfo {
        let mut ram: Vec<(u64, u64)> =
            self.regions.as_slice().iter().filter(|r| r.kind == MEM_RAM && r.len != 0).map(|r| (r.base, r.len)).collect();
        ram.sort_unstable();
        BootInfo {
            protocol: self.protocol,
            cmdline: String::from_utf8_lossy(self.cmdline).into_owned(),
            rsdp_pa: self.rsdp_pa,
            ram,
            memory_map: self.regions.as_slice().to_vec(),
            modules: self.modules.as_slice().to_vec(),
            free_ram: free_ram.to_vec(),
        }
    }

    /// The command line, when it is UTF-8.
    #[must_use]
    pub fn cmdline_str(&self) -> &'static str {
        core::str::from_utf8(self.cmdline).unwrap_or("")
    }
}

/// Usable RAM: RAM entries (rounded inwards to 4 KiB) minus every range in
/// `holes` (`(start, end)`), as `(start, end)` sorted.
#[must_use]
pub fn usable_ram(regions: &[MemRegion], holes: &[(u64, u64)]) -> Fixed<(u64, u64), 128> {
    let mut out: Fixed<(u64, u64), 128> = Fixed::new();
    for r in regions.iter().filter(|r| r.kind == MEM_RAM) {
        let start = r.base.next_multiple_of(4096);
        let end = r.base.saturating_add(r.len) & !4095;
        if start < end {
            out.push((start, end));
        }
    }
    // Non-RAM entries overlapping RAM entries win: treat them as holes too.
    let reserved = regions.iter().filter(|r| r.kind != MEM_RAM).map(|r| (r.base, r.base.saturating_add(r.len)));
    for (hs, he) in holes.iter().copied().chain(reserved) {
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
