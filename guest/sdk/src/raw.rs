//! Raw partition memory and raw hypercalls, for programs that test the
//! hypervisor's error paths (the ABI suite, `guest/programs/src/bin/abi-suite.rs`).
//!
//! Such a program builds command structs byte by byte at addresses of its
//! choosing (the last bytes of RAM, straddling its ends, unaligned),
//! points them at MMIO or outside RAM, and issues hypercalls with any
//! first-register value. [`hypercall`](crate::hypercall()) can do all of
//! that but is `unsafe`: the hypervisor may write into whatever RAM the
//! struct names, including memory the program uses.
//!
//! [`RawRam`] makes it safe: the program claims (once) a range of its free
//! RAM, which nothing else in the program uses, plus the first page of RAM
//! (unused by the start-up contract, [`layout`]). Bytes there are read and
//! written only through [`RawRam::read`] / [`RawRam::write`], and
//! [`RawRam::hypercall`] refuses a call when any byte of RAM the
//! hypervisor could write for it — the struct's write-back and the output
//! array it names, as ABI.md defines them — lies outside the claimed
//! ranges. Bytes that are not RAM at all (MMIO, unmapped, past the end)
//! are harmless: the hypervisor answers EFAULT.

use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};

use sluice_abi::{command, layout, nr};

/// The value of the first hypercall register for command `nr`: x86_64
/// `rax = nr`; aarch64 `x0 = 0xC600_0000 | nr` (SMCCC vendor hypervisor
/// service).
#[must_use]
pub const fn command_register(nr: u32) -> u64 {
    if cfg!(target_arch = "aarch64") { sluice_abi::SMCCC_BASE | nr as u64 } else { nr as u64 }
}

/// The command number the hypervisor reads from a first-register value,
/// as ABI.md's calling convention decodes it: x86_64 the whole of `rax`
/// (so any bit above 31 makes it no command); aarch64 the SMCCC function
/// id in `w0` (the upper half of `x0` is ignored), `None` outside
/// `0xC600_00xx`.
#[must_use]
pub fn decode_register(reg0: u64) -> Option<u32> {
    if cfg!(target_arch = "aarch64") {
        let id = reg0 as u32;
        (u64::from(id & !0xff) == sluice_abi::SMCCC_BASE).then_some(id & 0xff)
    } else {
        u32::try_from(reg0).ok()
    }
}

/// The output array a command names: (offset of the count, offset of the
/// pointer, bytes per element). The count is a `u32`, the pointer a `u64`.
const fn output_array(nr: u32) -> Option<(usize, usize, u64)> {
    match nr {
        nr::IOAS_IOVA_RANGES => Some((8, 16, 16)),
        nr::GET_HW_INFO => Some((12, 16, 1)),
        nr::DEVICE_LIST => Some((4, 8, 24)),
        nr::DEVICE_RESV_IOVA_RANGES => Some((8, 16, 24)),
        nr::FAULT_READ => Some((8, 16, 24)),
        _ => None,
    }
}

/// `[start, start + len)`, clipped at `u64::MAX`.
fn span(start: u64, len: u64) -> Range<u64> {
    start..start.saturating_add(len)
}

/// Whether every byte of `r` that lies in `ram` lies in one of `claimed`.
fn ram_part_claimed(r: &Range<u64>, ram: &Range<u64>, claimed: &[Range<u64>]) -> bool {
    let (start, end) = (r.start.max(ram.start), r.end.min(ram.end));
    if start >= end {
        return true;
    }
    // The claimed ranges are disjoint and not adjacent, so the RAM part
    // must fit in one of them.
    claimed.iter().any(|c| c.start <= start && end <= c.end)
}

/// Whether hypercall `reg0` with its struct at `gpa` can only write RAM
/// inside `claimed` (or none). `read` reads claimed bytes (it is only
/// asked for bytes inside `claimed`).
///
/// What the hypervisor may write, per ABI.md: nothing for an unknown
/// command or when the `size` word is not entirely RAM (EFAULT); else
/// the struct's first `min(size, known size)` bytes (write-back) and the
/// command's output array, `count * element` bytes at its pointer, as the
/// struct it copied in says (zero-extended when `size` is short).
pub fn writes_stay_in(reg0: u64, gpa: u64, ram: &Range<u64>, claimed: &[Range<u64>], read: impl Fn(u64, &mut [u8])) -> bool {
    let Some(info) = decode_register(reg0).and_then(command) else { return true };
    let word = span(gpa, 4);
    if word.end - word.start < 4 || !(ram.start <= word.start && word.end <= ram.end) {
        // The size word is not all RAM: EFAULT before anything else.
        return true;
    }
    if !ram_part_claimed(&word, ram, claimed) {
        return false;
    }
    let mut size = [0u8; 4];
    read(gpa, &mut size);
    let size = u32::from_le_bytes(size);
    let known = u64::from(size.min(info.size));
    let body = span(gpa, known);
    if !ram_part_claimed(&body, ram, claimed) {
        return false;
    }
    let Some((count_at, ptr_at, elem)) = output_array(info.nr) else { return true };
    // The struct as the hypervisor copies it: the known bytes, the rest
    // zero; fields the claimed RAM does not hold are never read (the
    // hypervisor would fault on them and write nothing).
    let mut bytes = [0u8; 64];
    let in_ram = (body.end.min(ram.end)).saturating_sub(gpa) as usize;
    let n = in_ram.min(known as usize).min(bytes.len());
    if n < known as usize {
        return true;
    }
    read(gpa, &mut bytes[..n]);
    let count = u32::from_le_bytes(bytes[count_at..count_at + 4].try_into().unwrap_or([0; 4]));
    let ptr = u64::from_le_bytes(bytes[ptr_at..ptr_at + 8].try_into().unwrap_or([0; 8]));
    ram_part_claimed(&span(ptr, u64::from(count).saturating_mul(elem)), ram, claimed)
}

static CLAIMED: AtomicBool = AtomicBool::new(false);

/// A range of the program's free RAM, and the unused first page of RAM,
/// handed over to byte-level access and raw hypercalls (see the module
/// docs). At most one exists per program.
#[derive(Debug)]
pub struct RawRam {
    ram: Range<u64>,
    claimed: [Range<u64>; 2],
}

impl RawRam {
    /// Claim `work` (page aligned, inside [`free_ram`](crate::free_ram))
    /// and `[RAM_BASE, START_INFO_GPA)`. `None` on the host, when `work`
    /// is not free RAM, or when it was claimed before.
    #[must_use]
    pub fn claim(work: Range<u64>) -> Option<Self> {
        let info = crate::start_info()?;
        #[cfg(target_os = "none")]
        let free = crate::free_ram();
        #[cfg(not(target_os = "none"))]
        let free = 0..0;
        let ok = work.start < work.end && work.start % 4096 == 0 && work.end % 4096 == 0 && free.start <= work.start && work.end <= free.end;
        let first = info.ram_base..layout::START_INFO_GPA;
        if !ok || first.end >= work.start || CLAIMED.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Self { ram: info.ram_base..info.ram_end(), claimed: [first, work] })
    }

    /// The partition's RAM.
    #[must_use]
    pub fn ram(&self) -> Range<u64> {
        self.ram.clone()
    }

    /// The claimed ranges: the first page of RAM and the work range.
    #[must_use]
    pub fn claimed(&self) -> &[Range<u64>; 2] {
        &self.claimed
    }

    /// Whether `[gpa, gpa + len)` lies inside one claimed range.
    #[must_use]
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        let r = span(gpa, len);
        r.end - r.start == len && self.claimed.iter().any(|c| c.start <= r.start && r.end <= c.end)
    }

    /// Read `buf.len()` bytes at `gpa`; `false` (nothing read) unless
    /// they lie inside one claimed range.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        if !self.contains(gpa, buf.len() as u64) {
            return false;
        }
        let src = core::ptr::with_exposed_provenance::<u8>(gpa as usize);
        // SAFETY: the bytes lie in a claimed range: partition RAM (identity
        // mapped) that no Rust object of the program uses (free RAM past
        // the image, or the first page the start-up contract leaves
        // unused), and only this one `RawRam` reaches it. `buf` is a
        // separate Rust object, so the ranges do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Write `data` at `gpa`; `false` (nothing written) unless it lies
    /// inside one claimed range.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> bool {
        if !self.contains(gpa, data.len() as u64) {
            return false;
        }
        let dst = core::ptr::with_exposed_provenance_mut::<u8>(gpa as usize);
        // SAFETY: as in `read`; `&mut self` makes this the only access.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        true
    }

    /// Set `len` bytes at `gpa` to `byte`; `false` (nothing written)
    /// unless they lie inside one claimed range.
    pub fn fill(&mut self, gpa: u64, len: u64, byte: u8) -> bool {
        if !self.contains(gpa, len) {
            return false;
        }
        let dst = core::ptr::with_exposed_provenance_mut::<u8>(gpa as usize);
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_bytes(dst, byte, len as usize) };
        true
    }

    /// Issue a hypercall with `reg0` in the first register (`rax` / `x0`,
    /// unchanged: see [`command_register`]) and `gpa` in the second;
    /// returns what the hypervisor returned (0, `-errno`, or on aarch64
    /// SMCCC NOT_SUPPORTED, -1). `None`, without calling, when the
    /// hypervisor could write RAM outside the claimed ranges
    /// ([`writes_stay_in`]).
    pub fn hypercall(&mut self, reg0: u64, gpa: u64) -> Option<i64> {
        let ok = writes_stay_in(reg0, gpa, &self.ram, &self.claimed, |at, buf| {
            let _ = self.read(at, buf);
        });
        if !ok {
            return None;
        }
        // SAFETY: every byte of RAM the hypervisor may write for this call
        // lies in a claimed range (checked just above), which no Rust
        // object uses; bytes that are not RAM are never written (EFAULT).
        Some(unsafe { crate::hypercall::raw_hypercall(reg0, gpa) })
    }
}

/// Whether a 4-byte store at `gpa` could touch anything of the program:
/// its RAM, or a register BAR of one of its devices (the [`crate::edu`]
/// driver's).
fn is_programs(gpa: u64, ram: &Range<u64>, bars: impl Iterator<Item = Range<u64>>) -> bool {
    let end = gpa.saturating_add(4);
    let hits = |r: &Range<u64>| gpa < r.end && r.start < end;
    hits(ram) || bars.into_iter().any(|b| hits(&b))
}

/// Store `value` (32 bits, volatile) at `gpa`, an address that is neither
/// the partition's RAM nor one of its devices' BARs: for programs that
/// test that the hypervisor stops a partition touching what is not its
/// own. Under Sluice such a store does not return (the partition is
/// stopped with a report). `false`, storing nothing, for a misaligned
/// address, one that is the program's (RAM, BARs), or before the start
/// info is known (the host). x86_64: the partition's page tables map
/// 0..4 GiB; above, the store faults inside the partition instead.
#[must_use]
pub fn store_outside(gpa: u64, value: u32) -> bool {
    let Some(info) = crate::start_info() else { return false };
    let bars = info.devices().iter().map(|d| d.bar0_gpa..d.bar0_gpa.saturating_add(d.bar0_size));
    if gpa % 4 != 0 || is_programs(gpa, &(info.ram_base..info.ram_end()), bars) {
        return false;
    }
    let p = core::ptr::with_exposed_provenance_mut::<u32>(gpa as usize);
    // SAFETY: an aligned address that is neither the partition's RAM (so
    // no Rust object of the program) nor a BAR of its devices (so no
    // driver's registers); the hypervisor maps nothing else, so the store
    // reaches nothing the program owns.
    unsafe { p.write_volatile(value) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: Range<u64> = 0x4000_0000..0x4080_0000;

    fn claimed() -> [Range<u64>; 2] {
        [0x4000_0000..0x4000_1000, 0x4040_0000..0x4080_0000]
    }

    /// Memory where the struct at `at` is `bytes` and all else zero.
    fn mem(at: u64, bytes: &[u8]) -> impl Fn(u64, &mut [u8]) + '_ {
        move |gpa, buf| {
            for (i, b) in buf.iter_mut().enumerate() {
                let a = gpa + i as u64;
                *b = if a >= at && a < at + bytes.len() as u64 { bytes[(a - at) as usize] } else { 0 };
            }
        }
    }

    fn ranges(size: u32, num: u32, ptr: u64) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&size.to_le_bytes());
        b[8..12].copy_from_slice(&num.to_le_bytes());
        b[16..24].copy_from_slice(&ptr.to_le_bytes());
        b
    }

    fn ok(reg0: u64, gpa: u64, bytes: &[u8]) -> bool {
        writes_stay_in(reg0, gpa, &RAM, &claimed(), mem(gpa, bytes))
    }

    #[test]
    fn structs_and_arrays_in_claimed_ram_pass() {
        let r = command_register(nr::IOAS_IOVA_RANGES);
        assert!(ok(r, 0x4040_0000, &ranges(32, 4, 0x4040_1000)));
        // The array ends exactly at the end of RAM.
        assert!(ok(r, 0x4040_0000, &ranges(32, 1, 0x407f_fff0)));
        // Straddling the start or end of RAM: only the RAM part counts.
        assert!(ok(r, 0x4040_0000, &ranges(32, 2, 0x3fff_fff8)));
        assert!(ok(r, 0x4040_0000, &ranges(32, 2, 0x407f_fff8)));
        // MMIO, outside RAM, wrapping.
        assert!(ok(r, 0x4040_0000, &ranges(32, 16, 0xfe90_0000)));
        assert!(ok(r, 0x4040_0000, &ranges(32, 16, u64::MAX - 8)));
        // The struct's size word is not all RAM: nothing is written.
        assert!(ok(r, 0x3fff_fffe, &[]));
        assert!(ok(r, 0xfe90_0000, &[]));
        assert!(ok(r, u64::MAX - 1, &[]));
    }

    #[test]
    fn writes_into_unclaimed_ram_are_refused() {
        let r = command_register(nr::IOAS_IOVA_RANGES);
        // The array in the program's image or stack.
        assert!(!ok(r, 0x4040_0000, &ranges(32, 1, 0x4020_0000)));
        // A huge count reaches from claimed RAM into... claimed RAM only up
        // to the end; from the first page it reaches the start info.
        assert!(!ok(r, 0x4040_0000, &ranges(32, 0x1000, 0x4000_0000)));
        // The struct itself in unclaimed RAM.
        assert!(!ok(r, 0x4030_0000, &ranges(32, 0, 0)));
        // A struct in claimed RAM whose write-back runs into unclaimed RAM.
        assert!(!ok(r, 0x4000_0ff8, &ranges(32, 0, 0)));
        // A count of 0 names no array.
        assert!(ok(r, 0x4040_0000, &ranges(32, 0, 0x4020_0000)));
        // A short size zero-extends the array fields away.
        assert!(ok(r, 0x4040_0000, &ranges(8, 1, 0x4020_0000)));
    }

    #[test]
    fn stores_outside_stay_off_ram_and_bars() {
        let ram = RAM;
        let bar = || core::iter::once(0xfe90_0000..0xfea0_0000);
        assert!(is_programs(0x4000_0000, &ram, bar()));
        assert!(is_programs(0x3fff_fffe, &ram, bar()));
        assert!(is_programs(0x407f_fffc, &ram, bar()));
        assert!(!is_programs(0x4080_0000, &ram, bar()));
        assert!(!is_programs(0x3000_0000, &ram, bar()));
        assert!(is_programs(0xfe90_0010, &ram, bar()));
        assert!(!is_programs(0xfea0_0000, &ram, bar()));
        assert!(is_programs(u64::MAX - 1, &(u64::MAX - 8..u64::MAX), bar()));
        // No start info on the host: nothing is stored.
        assert!(!store_outside(0x3000_0000, 1));
    }

    #[test]
    fn unknown_commands_and_registers_write_nothing() {
        assert!(ok(0x42, 0x4020_0000, &[]));
        // x86_64: bits above 31 of rax make it no command.
        #[cfg(not(target_arch = "aarch64"))]
        assert!(ok(command_register(nr::DEVICE_LIST) | 1 << 40, 0x4020_0000, &[]));
        assert_eq!(decode_register(command_register(nr::FAULT_READ)), Some(nr::FAULT_READ));
        // Commands without an output array write back the struct only.
        assert!(!ok(command_register(nr::IOAS_ALLOC), 0x4030_0000, &[12, 0, 0, 0]));
        assert!(ok(command_register(nr::IOAS_ALLOC), 0x407f_fff4, &[12, 0, 0, 0]));
    }
}
