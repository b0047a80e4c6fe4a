//! Platform services for the kernel crate and the self-test: physical
//! memory through the identity map, table pages from the frame allocator,
//! and leaving QEMU (semihosting, else PSCI SYSTEM_OFF).

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering as AtomicOrdering};

use sluice_boot::IdentityMap;
use sluice_kernel::Hpa;
use sluice_kernel::hv::PhysMem;
use sluice_kernel::pt::TableMemory;

use crate::dt::PsciConduit;
use crate::{exceptions, paging};

/// Semihosting operation SYS_EXIT.
pub const SYS_EXIT: u64 = 0x18;
/// SYS_EXIT reason ADP_Stopped_ApplicationExit: QEMU exits with the
/// subcode as its status.
pub const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;
/// PSCI 0.2 SYSTEM_OFF function id.
pub const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;

/// PSCI conduit from the device tree: 0 none, 1 SMC, 2 HVC.
static PSCI: AtomicU8 = AtomicU8::new(0);

/// Remember how PSCI is called (from the device tree).
pub fn set_psci(conduit: Option<PsciConduit>) {
    let v = match conduit {
        None => 0,
        Some(PsciConduit::Smc) => 1,
        Some(PsciConduit::Hvc) => 2,
    };
    PSCI.store(v, AtomicOrdering::Relaxed);
}

/// Semihosting SYS_EXIT with ADP_Stopped_ApplicationExit and `code`
/// (AArch64: x1 points at the `{reason, subcode}` block). Returns only when
/// semihosting is not available (the `hlt` was UNDEFINED and skipped).
pub fn semihosting_exit(code: u64) {
    let block = [ADP_STOPPED_APPLICATION_EXIT, code];
    exceptions::probe(|| {
        // SAFETY: `hlt #0xf000` is the AArch64 semihosting call; with QEMU's
        // -semihosting, SYS_EXIT ends the emulation. Without it the
        // instruction is UNDEFINED and `probe` skips it. It reads only the
        // two-word block x1 points to.
        unsafe {
            core::arch::asm!("hlt #0xf000", inout("x0") SYS_EXIT => _, in("x1") block.as_ptr(), options(nostack, readonly))
        };
    });
}

/// Leave QEMU: semihosting SYS_EXIT (QEMU status 0 on success, 1 on
/// failure; needs `-semihosting`), else PSCI SYSTEM_OFF over SMC (status 0
/// either way), else stop the CPU for good.
pub fn exit(success: bool) -> ! {
    semihosting_exit(u64::from(!success));
    if PSCI.load(AtomicOrdering::Relaxed) == 1 {
        exceptions::probe(|| {
            // SAFETY: PSCI SYSTEM_OFF over SMC (QEMU virt with
            // virtualization=on emulates PSCI at the SMC conduit); it does
            // not return when it works, and touches no memory of ours.
            unsafe { core::arch::asm!("smc #0", inout("x0") PSCI_SYSTEM_OFF => _, options(nostack, nomem)) };
        });
    }
    halt_forever()
}

/// Mask interrupts and wait, forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: masking DAIF and waiting have no memory effects.
        unsafe { core::arch::asm!("msr daifset, #0xf", "wfi", options(nomem, nostack)) };
    }
}

/// The virtual address of physical address `pa`: the identity map.
///
/// Covers RAM (Normal) and 0..1 TiB (Device) once `paging::init` ran, and
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

/// Whether some SMMU reads tables and queues without snooping CPU caches
/// (IDR0.COHACC = 0, or no `dma-coherent` in its device-tree node): then
/// every table write is cleaned to the point of coherency with DC CVAC.
static NONCOHERENT_WALKS: AtomicBool = AtomicBool::new(false);

/// Say whether some SMMU is not coherent: `true` while SMMUs are probed
/// (their first tables are written before IDR0 is read), then whether
/// any probed one is not.
pub fn set_noncoherent_walks(on: bool) {
    NONCOHERENT_WALKS.store(on, AtomicOrdering::SeqCst);
}

/// The aarch64 identity map for the shared memory views.
#[derive(Debug)]
pub struct Aarch64;

impl IdentityMap for Aarch64 {
    fn is_mapped(pa: u64, len: u64) -> bool {
        paging::is_mapped(pa, len)
    }

    fn clean_for_devices(pa: u64, len: u64) {
        if NONCOHERENT_WALKS.load(AtomicOrdering::Relaxed) {
            clean_to_poc(pa, len);
        }
    }
}

/// Clean the data cache lines of `[pa, pa + len)` to the point of
/// coherency, then wait for the cleans to finish.
fn clean_to_poc(pa: u64, len: u64) {
    // CTR_EL0.DminLine: log2 of the smallest data cache line, in words.
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {0}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    let line = 4u64 << ((ctr >> 16) & 0xf);
    let mut at = pa & !(line - 1);
    while at < pa + len {
        // SAFETY: DC CVAC of a mapped address (table pages are RAM in the
        // identity map) only writes the line back; it changes no data.
        unsafe { core::arch::asm!("dc cvac, {0}", in(reg) phys_to_virt(at), options(nostack, preserves_flags)) };
        at += line;
    }
    // SAFETY: a barrier: the cleans complete before any later access (the
    // MMIO write that tells the SMMU to look).
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Table pages from the frame allocator.
pub type FrameTables = sluice_boot::FrameTables<Aarch64>;
/// Partition RAM through the identity map.
pub type IdentityRam = sluice_boot::IdentityRam<Aarch64>;

/// A quick check of the services above on this machine: a table page from
/// [`FrameTables`] is zeroed and reads back through [`IdentityRam`], and the
/// [`GenericTimer`](crate::timer::GenericTimer) clock advances across a
/// 1 ms delay; the first and last word of every free RAM range read back
/// what was written; the DTB reads through [`phys_bytes`]; and
/// [`paging::map_identity`] keeps existing mappings, adds one above the
/// Device map and refuses addresses past 48 bits.
pub fn smoke_check(boot: &crate::bootinfo::BootInfo) -> Result<(), &'static str> {
    use core::sync::atomic::Ordering;
    use sluice_kernel::time::Clock;

    use crate::timer::GenericTimer;

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

    // The DTB through `phys_bytes`; mappings: an already mapped RAM page
    // stays as it is, a page above the Device map (1 TiB) gets mapped, and
    // past the 48-bit VA space is refused.
    if phys_bytes(boot.dtb_pa, 4) != [0xd0, 0x0d, 0xfe, 0xed] {
        return Err("the DTB does not read back through phys_bytes");
    }
    let (ram, _) = boot.free_ram[0];
    paging::map_identity(ram, 4096, paging::Cache::Mmio).map_err(|_| "map_identity fails on mapped RAM")?;
    let probe = paging::DEVICE_MAP_END + (1 << 30);
    if paging::is_mapped(probe, 4096) || paging::map_identity(probe, 4096, paging::Cache::Mmio).is_err() || !paging::is_mapped(probe, 4096) {
        return Err("map_identity does not map a page above the Device map");
    }
    if paging::map_identity(1 << 48, 4096, paging::Cache::Mmio) != Err(paging::MapError::OutOfRange) {
        return Err("map_identity accepts an address past 48 bits");
    }

    let before = GenericTimer.now_us();
    GenericTimer::delay_us(1000);
    let elapsed = GenericTimer.now_us().wrapping_sub(before);
    if !(1000..1_000_000).contains(&elapsed) {
        return Err("generic timer does not advance sensibly across a 1 ms delay");
    }
    log::info!("platform: frame tables, identity RAM and generic timer work ({} us for a 1 ms delay)", elapsed);
    Ok(())
}
