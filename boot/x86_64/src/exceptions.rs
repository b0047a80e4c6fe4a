//! CPU exceptions (vectors 0-31): entry stubs in assembly that build one
//! uniform frame, an IDT pointing at them, and a Rust handler that prints a
//! register report and exits QEMU with the failure code.

use core::fmt;

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::{Cr0, Cr2, Cr3, Cr4};
use x86_64::structures::DescriptorTablePointer;

use crate::cpu::DOUBLE_FAULT_IST;
use crate::entry::KERNEL_CS;
use crate::platform::qemu_exit;

// Vectors with a CPU-pushed error code: 8, 10-14, 17, 21, 29, 30. The other
// stubs push a zero so that every frame has the same shape. The common part
// saves all 15 GPRs, passes the frame to `exception_dispatch`, and restores
// (a handler that returns resumes at the saved RIP).
core::arch::global_asm!(
    r#"
    .macro EXC_NOERR v
    .balign 16
exc_stub_\v:
    pushq $0
    pushq $\v
    jmp exc_common
    .endm

    .macro EXC_ERR v
    .balign 16
exc_stub_\v:
    pushq $\v
    jmp exc_common
    .endm

    .section .text.exceptions, "ax"
    .code64
    .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    EXC_NOERR \v
    .endr
    .irp v, 8,10,11,12,13,14,17,21,29,30
    EXC_ERR \v
    .endr

exc_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    call exception_dispatch
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq

    .section .rodata.exceptions, "a"
    .balign 8
    .global exception_stub_table
exception_stub_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\v
    .endr
"#,
    options(att_syntax)
);

unsafe extern "C" {
    /// Addresses of the 32 stubs above, by vector.
    static exception_stub_table: [u64; 32];
}

/// The frame the stubs build, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// One 16-byte IDT gate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    /// A present DPL-0 64-bit interrupt gate (IF cleared on entry).
    fn interrupt(handler: u64, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist,
            type_attr: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: Once<Idt> = Once::new();

/// Build and load the IDT: vectors 0-31 go to the stubs, #DF on its own
/// stack; 32-255 stay not-present (nothing enables interrupts yet).
pub fn init() {
    let idt = IDT.call_once(|| {
        // SAFETY: the table is defined in the global_asm above and never
        // written.
        let stubs = unsafe { &exception_stub_table };
        let mut gates = [Gate::default(); 256];
        for (vector, &stub) in stubs.iter().enumerate() {
            let ist = if vector == 8 { DOUBLE_FAULT_IST } else { 0 };
            gates[vector] = Gate::interrupt(stub, ist);
        }
        Idt(gates)
    });
    let ptr = DescriptorTablePointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT is 'static, every present gate points at a stub above,
    // and the gates use the loaded code selector.
    unsafe { lidt(&ptr) };
}

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range exceeded",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack-segment fault",
    "#GP general protection",
    "#PF page fault",
    "reserved (15)",
    "#MF x87 floating point",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD floating point",
    "#VE virtualization",
    "#CP control protection",
    "reserved (22)",
    "reserved (23)",
    "reserved (24)",
    "reserved (25)",
    "reserved (26)",
    "reserved (27)",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved (31)",
];

/// The name of exception `vector`.
#[must_use]
pub fn name(vector: u64) -> &'static str {
    NAMES.get(vector as usize).copied().unwrap_or("unknown")
}

struct PfError(u64);

impl fmt::Display for PfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        f.write_str(if e & 1 != 0 { "protection" } else { "not-present" })?;
        f.write_str(if e & 2 != 0 { ", write" } else { ", read" })?;
        if e & 4 != 0 {
            f.write_str(", user")?;
        }
        if e & 8 != 0 {
            f.write_str(", reserved bit")?;
        }
        if e & 16 != 0 {
            f.write_str(", instruction fetch")?;
        }
        Ok(())
    }
}

/// Print the report for `frame` (on the fault path: lock-free console).
pub fn report(frame: &ExceptionFrame) {
    let f = frame;
    eprintln!();
    eprintln!("!!! CPU exception: {} (vector {}), error code {:#x}", name(f.vector), f.vector, f.error_code);
    eprintln!("    RIP    {:#018x}  CS {:#06x}  RFLAGS {:#010x}", f.rip, f.cs, f.rflags);
    eprintln!("    RSP    {:#018x}  SS {:#06x}", f.rsp, f.ss);
    if f.vector == 14 {
        eprintln!("    CR2    {:#018x}  ({})", Cr2::read_raw(), PfError(f.error_code));
    }
    eprintln!("    CR0    {:#018x}  CR3 {:#018x}  CR4 {:#018x}", Cr0::read_raw(), Cr3::read_raw().0.start_address().as_u64(), Cr4::read_raw());
    eprintln!("    RAX {:#018x}  RBX {:#018x}  RCX {:#018x}", f.rax, f.rbx, f.rcx);
    eprintln!("    RDX {:#018x}  RSI {:#018x}  RDI {:#018x}", f.rdx, f.rsi, f.rdi);
    eprintln!("    RBP {:#018x}  R8  {:#018x}  R9  {:#018x}", f.rbp, f.r8, f.r9);
    eprintln!("    R10 {:#018x}  R11 {:#018x}  R12 {:#018x}", f.r10, f.r11, f.r12);
    eprintln!("    R13 {:#018x}  R14 {:#018x}  R15 {:#018x}", f.r13, f.r14, f.r15);
}

/// Called by the stubs with the frame they built.
#[unsafe(no_mangle)]
extern "C" fn exception_dispatch(frame: &mut ExceptionFrame) {
    report(frame);
    eprintln!("sluice: unhandled exception, stopping");
    qemu_exit(false);
}
