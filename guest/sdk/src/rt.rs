//! The runtime: `_start`, the start-info block, the panic handler.
//!
//! `_start` (bare-metal targets only) is entered as `sluice_abi::layout`
//! describes: stack set, the start-info GPA in `rdi` / `x0`. It zeroes
//! `.bss` (`__bss_start..__bss_end` of the linker script, 16-byte
//! aligned), on aarch64 first turns off FP/SIMD traps at EL1
//! (CPACR_EL1.FPEN = 0b11: the target's code may use NEON registers), and
//! calls `sluice_guest_start`, which checks the block and runs the
//! program's `main` (the symbol `sluice_guest_main` that
//! [`entry!`](crate::entry) defines), then PARTITION_EXIT with its result.

use core::sync::atomic::{AtomicPtr, Ordering};

use sluice_abi::StartInfo;

/// The exit code after a panic (as Rust's own for a panicking process).
pub const EXIT_PANIC: u32 = 101;

static START_INFO: AtomicPtr<StartInfo> = AtomicPtr::new(core::ptr::null_mut());

/// The start-info block the hypervisor passed at entry (`None` before
/// `main` runs, and on the host unless a test set one with
/// `host::set_start_info`).
#[must_use]
pub fn start_info() -> Option<&'static StartInfo> {
    let info = START_INFO.load(Ordering::Acquire);
    // SAFETY: only ever set from a `&'static StartInfo` (the hypervisor's
    // block after its checks, or a test's leaked value).
    unsafe { info.as_ref() }
}

fn set_start_info(info: &'static StartInfo) {
    START_INFO.store(core::ptr::from_ref(info).cast_mut(), Ordering::Release);
}

/// Host builds: make [`start_info`] return `info` (for tests of code that
/// reads it, such as [`crate::edu::Edu::open`]).
#[cfg(not(target_os = "none"))]
pub fn host_set_start_info(info: &'static StartInfo) {
    set_start_info(info);
}

/// The C `main` [`entry!`](crate::entry) makes on the host: a partition
/// program cannot run there.
#[cfg(not(target_os = "none"))]
#[doc(hidden)]
pub fn host_stub_main(name: &str, main: fn(&'static StartInfo) -> u32) -> i32 {
    let _ = main;
    std::eprintln!(
        "{name} is a Sluice partition program: build it with --target x86_64-unknown-none or aarch64-unknown-none and boot it in a partition"
    );
    2
}

#[cfg(target_os = "none")]
mod bare {
    use sluice_abi::StartInfo;

    use super::set_start_info;
    use crate::hc::partition_exit;

    unsafe extern "Rust" {
        /// The program's entry function, defined by `sluice_guest::entry!`.
        safe fn sluice_guest_main(info: &'static StartInfo) -> u32;
    }

    unsafe extern "C" {
        static __image_end: u8;
    }

    /// Where the program's free RAM starts: the end of its image and
    /// `.bss`, page aligned (`__image_end` of the linker script). The
    /// range up to [`StartInfo::ram_end`] is the program's own.
    #[must_use]
    pub fn free_ram() -> core::ops::Range<u64> {
        let start = core::ptr::addr_of!(__image_end).addr() as u64;
        let end = super::start_info().map_or(start, StartInfo::ram_end);
        start..end.max(start)
    }

    #[cfg(target_arch = "x86_64")]
    core::arch::global_asm!(
        ".section .text.start, \"ax\"",
        ".global _start",
        ".type _start, @function",
        "_start:",
        "    mov r12, rdi",
        "    lea rdi, [rip + __bss_start]",
        "    lea rcx, [rip + __bss_end]",
        "    sub rcx, rdi",
        "    xor eax, eax",
        "    cld",
        "    rep stosb",
        "    mov rdi, r12",
        "    and rsp, -16",
        "    xor ebp, ebp",
        "    call {start}",
        "2:  ud2",
        "    jmp 2b",
        ".size _start, . - _start",
        start = sym sluice_guest_start,
    );

    #[cfg(target_arch = "aarch64")]
    core::arch::global_asm!(
        ".section .text.start, \"ax\"",
        ".global _start",
        ".type _start, %function",
        "_start:",
        "    mov x19, x0",
        "    mov x1, #0x300000",
        "    msr cpacr_el1, x1",
        "    isb",
        "    mov x1, sp",
        "    and x1, x1, #0xfffffffffffffff0",
        "    mov sp, x1",
        "    adrp x1, __bss_start",
        "    add x1, x1, :lo12:__bss_start",
        "    adrp x2, __bss_end",
        "    add x2, x2, :lo12:__bss_end",
        "1:  cmp x1, x2",
        "    b.hs 2f",
        "    str xzr, [x1], #8",
        "    b 1b",
        "2:  mov x0, x19",
        "    mov x29, xzr",
        "    mov x30, xzr",
        "    bl {start}",
        "3:  wfe",
        "    b 3b",
        ".size _start, . - _start",
        start = sym sluice_guest_start,
    );

    /// Called by `_start` with the start-info GPA.
    extern "C" fn sluice_guest_start(info: usize) -> ! {
        let ptr = core::ptr::with_exposed_provenance::<StartInfo>(info);
        assert!(!ptr.is_null() && ptr.is_aligned(), "start info at {info:#x} is null or misaligned");
        // SAFETY: the hypervisor passes the GPA of the start-info block it
        // wrote in this partition's RAM (identity mapped); the block stays
        // there for the partition's life and nothing writes it after entry
        // (sluice_abi::layout, StartInfo docs). Null and alignment were
        // checked above.
        let info: &'static StartInfo = unsafe { &*ptr };
        assert!(
            info.is_valid(),
            "start info at {:#x}: magic {:#x} version {} devices {} (expected magic {:#x} version {})",
            ptr.addr(),
            info.magic,
            info.version,
            info.num_devices,
            sluice_abi::START_INFO_MAGIC,
            sluice_abi::START_INFO_VERSION
        );
        set_start_info(info);
        partition_exit(sluice_guest_main(info))
    }

}

/// The panic handler (feature `panic-handler`, on by default): print the
/// panic on the console and exit with [`EXIT_PANIC`].
#[cfg(all(target_os = "none", feature = "panic-handler"))]
mod panic {
    use core::fmt::Write;
    use core::panic::PanicInfo;
    use core::sync::atomic::{AtomicBool, Ordering};

    use sluice_abi::StartInfo;

    use super::EXIT_PANIC;
    use crate::console::BufferedConsole;
    use crate::hc::partition_exit;

    static PANICKING: AtomicBool = AtomicBool::new(false);

    // A plain load and store, not a swap: a partition has one vCPU, and
    // with the aarch64 MMU off exclusive accesses are best avoided. A
    // panic while printing the panic exits without printing again.
    #[panic_handler]
    fn panic(info: &PanicInfo<'_>) -> ! {
        if !PANICKING.load(Ordering::Relaxed) {
            PANICKING.store(true, Ordering::Relaxed);
            let mut out = BufferedConsole::<256>::new();
            let name = super::start_info().map_or("?", StartInfo::name);
            let _ = writeln!(out, "partition {name}: {info}");
            let _ = out.flush();
        }
        partition_exit(EXIT_PANIC)
    }
}

#[cfg(target_os = "none")]
pub use bare::free_ram;

/// Let the other partitions run: wait for an interrupt (aarch64 `wfi`,
/// x86_64 `hlt`), which the hypervisor traps. A partition has no
/// interrupts, so Sluice reads this as "park me": the partition resumes
/// once every other partition has ended or parked too. Returns then.
pub fn park() {
    #[cfg(all(target_os = "none", target_arch = "aarch64"))]
    // SAFETY: `wfi` has no memory effects; EL2 traps it (HCR_EL2.TWI).
    unsafe {
        core::arch::asm!("wfi", options(nomem, nostack, preserves_flags));
    }
    #[cfg(all(target_os = "none", target_arch = "x86_64"))]
    // SAFETY: `hlt` with interrupts off has no memory effects; the
    // hypervisor intercepts it.
    unsafe {
        core::arch::asm!("hlt", options(nomem, nostack, preserves_flags));
    }
}
