//! EL2 exception vectors: all 16 entries (current EL with SP0 / SPx, lower
//! EL AArch64 / AArch32; synchronous, IRQ, FIQ, SError) save x0-x30, SP,
//! ELR, SPSR, ESR and FAR into one frame and call `exception_dispatch`,
//! which prints a register report and exits with failure. A handler that
//! returns resumes through `eret` with the (possibly changed) frame. The
//! lower-EL AArch64 entries are guest exits instead: they save the guest's
//! registers and return from `vcpu::run_guest` (see `vcpu.rs`).

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::platform;

/// Bytes of [`ExceptionFrame`] (a multiple of 16: SP stays aligned).
const FRAME_BYTES: usize = 38 * 8;

core::arch::global_asm!(
    r#"
    .macro VENTRY kind
    .balign 128
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       exc_common
    .endm

    /* A lower-EL AArch64 entry: a guest exit (see vcpu.rs) */
    .macro LENTRY kind
    .balign 128
    stp     x0, x1, [sp, #-16]!
    mov     x0, #\kind
    b       guest_exit
    .endm

    .section .text.vectors, "ax"
    .balign 2048
    .global exception_vectors
exception_vectors:
    VENTRY 0
    VENTRY 1
    VENTRY 2
    VENTRY 3
    VENTRY 4
    VENTRY 5
    VENTRY 6
    VENTRY 7
    LENTRY 8
    LENTRY 9
    LENTRY 10
    LENTRY 11
    VENTRY 12
    VENTRY 13
    VENTRY 14
    VENTRY 15

exc_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    add     x1, sp, #{frame}
    stp     x30, x1, [sp, #240]           /* x30, SP before the exception */
    mrs     x1, elr_el2
    mrs     x2, spsr_el2
    stp     x1, x2, [sp, #256]
    mrs     x1, esr_el2
    mrs     x2, far_el2
    stp     x1, x2, [sp, #272]
    stp     x0, xzr, [sp, #288]           /* kind, padding */
    mov     x0, sp
    bl      exception_dispatch
    /* resume with the frame as the handler left it */
    ldp     x1, x2, [sp, #256]
    msr     elr_el2, x1
    msr     spsr_el2, x2
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #{frame}
    eret
"#,
    frame = const FRAME_BYTES,
);

/// The frame the vector entries build, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    /// x0-x30 at the exception.
    pub x: [u64; 31],
    /// SP_EL2 before the exception (for lower-EL entries: the EL2 stack).
    pub sp: u64,
    /// ELR_EL2: where the exception was taken (resumes there on return).
    pub elr: u64,
    /// SPSR_EL2: PSTATE at the exception.
    pub spsr: u64,
    /// ESR_EL2: the syndrome.
    pub esr: u64,
    /// FAR_EL2: the faulting address (aborts, alignment, watchpoints).
    pub far: u64,
    /// Which vector entry: see [`kind_name`].
    pub kind: u64,
    _pad: u64,
}

const _: () = assert!(size_of::<ExceptionFrame>() == FRAME_BYTES);

/// The vector entry `kind` (0-15) as text.
#[must_use]
pub fn kind_name(kind: u64) -> &'static str {
    const NAMES: [&str; 16] = [
        "synchronous, current EL, SP_EL0",
        "IRQ, current EL, SP_EL0",
        "FIQ, current EL, SP_EL0",
        "SError, current EL, SP_EL0",
        "synchronous, current EL, SP_EL2",
        "IRQ, current EL, SP_EL2",
        "FIQ, current EL, SP_EL2",
        "SError, current EL, SP_EL2",
        "synchronous, lower EL, AArch64",
        "IRQ, lower EL, AArch64",
        "FIQ, lower EL, AArch64",
        "SError, lower EL, AArch64",
        "synchronous, lower EL, AArch32",
        "IRQ, lower EL, AArch32",
        "FIQ, lower EL, AArch32",
        "SError, lower EL, AArch32",
    ];
    NAMES.get(kind as usize).copied().unwrap_or("unknown")
}

/// The exception class ESR_EL2.EC (bits 31:26) as text.
#[must_use]
pub fn ec_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "WFI/WFE trapped",
        0x07 => "SVE/SIMD/FP access trapped",
        0x0E => "illegal execution state",
        0x11 => "SVC (AArch32)",
        0x12 => "HVC (AArch32)",
        0x13 => "SMC (AArch32)",
        0x15 => "SVC (AArch64)",
        0x16 => "HVC (AArch64)",
        0x17 => "SMC (AArch64)",
        0x18 => "MSR/MRS/system instruction trapped",
        0x20 => "instruction abort, lower EL",
        0x21 => "instruction abort, same EL",
        0x22 => "PC alignment fault",
        0x24 => "data abort, lower EL",
        0x25 => "data abort, same EL",
        0x26 => "SP alignment fault",
        0x2C => "floating-point exception",
        0x2F => "SError",
        0x30 => "breakpoint, lower EL",
        0x31 => "breakpoint, same EL",
        0x32 => "software step, lower EL",
        0x33 => "software step, same EL",
        0x34 => "watchpoint, lower EL",
        0x35 => "watchpoint, same EL",
        0x38 => "BKPT (AArch32)",
        0x3C => "BRK (AArch64)",
        _ => "other",
    }
}

/// Data/instruction fault status code (ISS bits 5:0) as text.
struct FaultStatus(u64);

impl fmt::Display for FaultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fsc = self.0 & 0x3F;
        let level = fsc & 3;
        match fsc {
            0x00..=0x03 => write!(f, "address size fault, level {level}"),
            0x04..=0x07 => write!(f, "translation fault, level {level}"),
            0x09..=0x0B => write!(f, "access flag fault, level {level}"),
            0x0D..=0x0F => write!(f, "permission fault, level {level}"),
            0x10 => f.write_str("synchronous external abort"),
            0x21 => f.write_str("alignment fault"),
            0x30 => f.write_str("TLB conflict abort"),
            _ => write!(f, "fault status {fsc:#x}"),
        }
    }
}

/// Set while a call that may be UNDEFINED (semihosting `hlt`) is attempted:
/// the next synchronous exception then skips the instruction and returns
/// instead of reporting.
static PROBING: AtomicBool = AtomicBool::new(false);

/// Run `f` with exceptions from it turned into "skip the instruction";
/// returns whether one happened.
pub fn probe(f: impl FnOnce()) -> bool {
    PROBING.store(true, Ordering::SeqCst);
    f();
    !PROBING.swap(false, Ordering::SeqCst)
}

/// Print the report for `frame` (on the fault path: lock-free console).
pub fn report(frame: &ExceptionFrame) {
    let f = frame;
    let ec = (f.esr >> 26) & 0x3F;
    let iss = f.esr & 0x01FF_FFFF;
    eprintln!();
    eprintln!("!!! EL2 exception: {} ({})", ec_name(ec), kind_name(f.kind));
    eprintln!("    ESR_EL2  {:#018x}  EC {ec:#04x}  IL {}  ISS {iss:#09x}", f.esr, (f.esr >> 25) & 1);
    match ec {
        0x20 | 0x21 | 0x24 | 0x25 => {
            let wnr = if ec >= 0x24 && iss & (1 << 6) != 0 { ", write" } else { "" };
            eprintln!("    FAR_EL2  {:#018x}  ({}{wnr})", f.far, FaultStatus(iss));
        }
        0x3C => eprintln!("    BRK immediate {:#06x}", iss & 0xFFFF),
        _ => eprintln!("    FAR_EL2  {:#018x}", f.far),
    }
    eprintln!("    ELR_EL2  {:#018x}  SPSR_EL2 {:#010x}  SP {:#018x}", f.elr, f.spsr, f.sp);
    for row in 0..8 {
        let mut line = [0u64; 4];
        let n = if row == 7 { 3 } else { 4 };
        line[..n].copy_from_slice(&f.x[row * 4..row * 4 + n]);
        match n {
            4 => eprintln!(
                "    x{:<2} {:#018x}  x{:<2} {:#018x}  x{:<2} {:#018x}  x{:<2} {:#018x}",
                row * 4,
                line[0],
                row * 4 + 1,
                line[1],
                row * 4 + 2,
                line[2],
                row * 4 + 3,
                line[3]
            ),
            _ => eprintln!("    x28 {:#018x}  x29 {:#018x}  x30 {:#018x}", line[0], line[1], line[2]),
        }
    }
}

/// Called by the vector entries with the frame they built.
#[unsafe(no_mangle)]
extern "C" fn exception_dispatch(frame: &mut ExceptionFrame) {
    if frame.kind & 3 == 0 && PROBING.swap(false, Ordering::SeqCst) {
        // An instruction under `probe` was UNDEFINED here: skip it.
        frame.elr += 4;
        return;
    }
    report(frame);
    eprintln!("sluice: unhandled exception, stopping");
    platform::exit(false);
}
