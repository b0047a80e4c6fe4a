//! Platform services for the kernel crate and the self-test: physical
//! memory through the identity map, table pages from the frame allocator,
//! and leaving QEMU.

use sluice_boot::IdentityMap;
use sluice_kernel::Hpa;
use sluice_kernel::hv::PhysMem;
use sluice_kernel::pt::TableMemory;
use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::instructions::port::Port;

use crate::paging;

/// I/O port of QEMU's isa-debug-exit device (`iobase=0xf4,iosize=0x04`).
pub const QEMU_EXIT_PORT: u16 = 0xf4;
/// Written for success: QEMU exits with status (0x10 << 1) | 1 = 33.
pub const QEMU_EXIT_SUCCESS: u32 = 0x10;
/// Written for failure: QEMU exits with status (0x11 << 1) | 1 = 35.
pub const QEMU_EXIT_FAILURE: u32 = 0x11;

/// Leave QEMU through isa-debug-exit (status 33 on success, 35 on
/// failure). Without that device (real hardware) the CPU halts for good.
pub fn qemu_exit(success: bool) -> ! {
    let code = if success { QEMU_EXIT_SUCCESS } else { QEMU_EXIT_FAILURE };
    let mut port = Port::<u32>::new(QEMU_EXIT_PORT);
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit (or unused on the PC
    // platform); writing to it has no other effect.
    unsafe { port.write(code) };
    halt_forever()
}

/// Disable interrupts and halt, forever.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// The virtual address of physical address `pa`: the identity map.
///
/// Covers 0..4 GiB from boot on, RAM above 4 GiB once memory is set up, and
/// whatever [`paging::map_identity`] added.
#[inline]
#[must_use]
pub const fn phys_to_virt(pa: u64) -> *mut u8 {
    pa as *mut u8
}

/// `len` bytes of physical memory at `pa`, read-only, through the identity
/// map. Panics when part of the range is not mapped.
///
/// For firmware tables and loader structures, which nothing writes while the
/// hypervisor runs.
#[must_use]
pub fn phys_bytes(pa: u64, len: usize) -> &'static [u8] {
    assert!(paging::is_mapped(pa, len as u64), "physical range {pa:#x}+{len:#x} is not mapped");
    if len == 0 {
        return &[];
    }
    // SAFETY: the range is mapped (checked above) and, per this function's
    // contract, holds firmware or loader data that no one writes while the
    // returned slice lives. Bytes have no invalid values.
    unsafe { core::slice::from_raw_parts(phys_to_virt(pa), len) }
}

/// Whether some IOMMU walks tables without snooping CPU caches (VT-d
/// ECAP.C = 0): then every table write is flushed to memory with CLFLUSH.
static NONCOHERENT_WALKS: AtomicBool = AtomicBool::new(false);

/// Say whether some IOMMU unit's page walks do not snoop CPU caches: `true`
/// while units are probed (their first tables are written before their
/// capabilities are known), then whether any probed unit lacks ECAP.C.
pub fn set_noncoherent_walks(on: bool) {
    NONCOHERENT_WALKS.store(on, Ordering::SeqCst);
}

/// The x86_64 identity map for the shared memory views.
#[derive(Debug)]
pub struct X86;

impl IdentityMap for X86 {
    fn is_mapped(pa: u64, len: u64) -> bool {
        paging::is_mapped(pa, len)
    }

    fn clean_for_devices(pa: u64, len: u64) {
        if NONCOHERENT_WALKS.load(Ordering::Relaxed) {
            flush_lines(pa, len);
        }
    }
}

/// Table pages from the frame allocator.
pub type FrameTables = sluice_boot::FrameTables<X86>;
/// Partition RAM through the identity map.
pub type IdentityRam = sluice_boot::IdentityRam<X86>;

/// Write back and invalidate the cache lines of `[pa, pa + len)`.
fn flush_lines(pa: u64, len: u64) {
    let mut line = pa & !63;
    while line < pa + len {
        // SAFETY: CLFLUSH of a mapped address (table pages are RAM in the
        // identity map) has no effect beyond the cache.
        unsafe { core::arch::x86_64::_mm_clflush(phys_to_virt(line)) };
        line += 64;
    }
    // SAFETY: a fence instruction orders the flushes before later stores
    // (the MMIO write that tells the unit to look).
    unsafe { core::arch::x86_64::_mm_mfence() };
}

/// A quick check of the services above on this machine: a table page from
/// [`FrameTables`] is zeroed and reads back through [`IdentityRam`], and the
/// [`Tsc`](crate::tsc::Tsc) clock advances across a 1 ms delay; the first
/// and last word of every free RAM range read back what was written.
pub fn smoke_check(boot: &crate::bootinfo::BootInfo) -> Result<(), &'static str> {
    use core::sync::atomic::Ordering;
    use sluice_kernel::time::Clock;

    use crate::tsc::Tsc;

    let mut tables = FrameTables::new();
    let t = tables.alloc_table().ok_or("no frame for a table page")?;
    if tables.table(t).iter().any(|e| e.load(Ordering::Relaxed) != 0) {
        return Err("table page is not zeroed");
    }
    tables.table(t)[7].store(0x1234_5678_9abc_def0, Ordering::Relaxed);
    let mut ram = IdentityRam::new();
    let mut word = [0u8; 8];
    ram.read(Hpa(t.raw() + 7 * 8), &mut word);
    if u64::from_le_bytes(word) != 0x1234_5678_9abc_def0 {
        return Err("IdentityRam does not see a table write");
    }
    ram.write(Hpa(t.raw() + 7 * 8), &[0; 8]);
    if tables.table(t)[7].load(Ordering::Relaxed) != 0 || tables.in_use() != 1 {
        return Err("table page does not see an IdentityRam write");
    }
    tables.free_table(t);

    for &(base, len) in &boot.free_ram {
        for at in [base, base + len - 8] {
            let pattern = at ^ 0x5a5a_5a5a_5a5a_5a5a;
            ram.write(Hpa(at), &pattern.to_le_bytes());
            ram.read(Hpa(at), &mut word);
            if u64::from_le_bytes(word) != pattern {
                return Err("free RAM does not read back what was written");
            }
        }
    }

    let before = Tsc.now_us();
    Tsc::delay_us(1000);
    let elapsed = Tsc.now_us().wrapping_sub(before);
    if !(1000..1_000_000).contains(&elapsed) {
        return Err("TSC clock does not advance sensibly across a 1 ms delay");
    }
    log::info!("platform: frame tables, identity RAM and TSC clock work ({} us for a 1 ms delay)", elapsed);
    Ok(())
}
