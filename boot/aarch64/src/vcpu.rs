//! An EL1 guest vCPU under stage-2 translation.
//!
//! `run_guest` saves the hypervisor's callee-saved registers in the vCPU's
//! register block, loads the guest's (x0-x30, q0-q31, FPCR/FPSR) and
//! `eret`s to EL1. The guest's next exception to EL2 enters through a
//! lower-EL vector (`LENTRY` in exceptions.rs), which jumps to
//! `guest_exit`: it stores the guest's registers into the block TPIDR_EL2
//! points at, restores the hypervisor's, and returns from `run_guest` with
//! the vector number. Everything else (ELR, SPSR, SP_EL1, the EL1 system
//! registers, VTTBR) is moved by [`El1Vcpu::run`] around the call.
//!
//! HCR_EL2: VM (stage 2 on), RW (EL1 is AArch64), DC (EL1 with its MMU
//! off sees RAM as Normal write-back; stage 2 makes BARs Device), TSC
//! (SMC traps), TWI (WFI traps: the partition parks). Physical interrupts
//! stay at EL1, where the guest keeps them masked.

use alloc::format;
use alloc::string::String;

use aarch64_cpu::registers::{
    CNTHCTL_EL2, CPACR_EL1, ELR_EL1, ELR_EL2, ESR_EL2, FAR_EL2, HCR_EL2, HPFAR_EL2, MAIR_EL1, Readable, SCTLR_EL1, SP_EL0, SP_EL1,
    SPSR_EL1, SPSR_EL2, TCR_EL1, TPIDR_EL0, TPIDR_EL1, TTBR0_EL1, TTBR1_EL1, VBAR_EL1, VTCR_EL2, VTTBR_EL2, Writeable,
};
use sluice_boot::partition::{Exit, GuestWrite, Vcpu};
use sluice_kernel::hypercall::smccc_command;

/// Offsets in [`GuestRegs`].
const FP_OFFSET: usize = 256;
const FPCR_OFFSET: usize = 768;
const FPSR_OFFSET: usize = 776;
const HOST_OFFSET: usize = 784;

/// The block `run_guest` and `guest_exit` move registers through.
#[repr(C, align(16))]
#[derive(Clone, Debug)]
pub struct GuestRegs {
    /// x0-x30.
    pub x: [u64; 31],
    /// The vector entry of the last exit (8..=11).
    pub kind: u64,
    /// q0-q31.
    pub q: [u128; 32],
    /// FPCR.
    pub fpcr: u64,
    /// FPSR.
    pub fpsr: u64,
    /// The hypervisor's x19-x30, d8-d15 and SP while the guest runs.
    host: [u64; 22],
}

const _: () = {
    assert!(core::mem::offset_of!(GuestRegs, q) == FP_OFFSET);
    assert!(core::mem::offset_of!(GuestRegs, fpcr) == FPCR_OFFSET);
    assert!(core::mem::offset_of!(GuestRegs, fpsr) == FPSR_OFFSET);
    assert!(core::mem::offset_of!(GuestRegs, host) == HOST_OFFSET);
};

core::arch::global_asm!(
    r#"
    .section .text.vcpu, "ax"
    .global run_guest
run_guest:
    add     x9, x0, #{host}
    stp     x19, x20, [x9, #0]
    stp     x21, x22, [x9, #16]
    stp     x23, x24, [x9, #32]
    stp     x25, x26, [x9, #48]
    stp     x27, x28, [x9, #64]
    stp     x29, x30, [x9, #80]
    stp     d8, d9, [x9, #96]
    stp     d10, d11, [x9, #112]
    stp     d12, d13, [x9, #128]
    stp     d14, d15, [x9, #144]
    mov     x1, sp
    str     x1, [x9, #160]
    msr     tpidr_el2, x0
    add     x1, x0, #{fp}
    ldp     q0, q1, [x1, #0]
    ldp     q2, q3, [x1, #32]
    ldp     q4, q5, [x1, #64]
    ldp     q6, q7, [x1, #96]
    ldp     q8, q9, [x1, #128]
    ldp     q10, q11, [x1, #160]
    ldp     q12, q13, [x1, #192]
    ldp     q14, q15, [x1, #224]
    ldp     q16, q17, [x1, #256]
    ldp     q18, q19, [x1, #288]
    ldp     q20, q21, [x1, #320]
    ldp     q22, q23, [x1, #352]
    ldp     q24, q25, [x1, #384]
    ldp     q26, q27, [x1, #416]
    ldp     q28, q29, [x1, #448]
    ldp     q30, q31, [x1, #480]
    ldr     x2, [x0, #{fpcr}]
    msr     fpcr, x2
    ldr     x2, [x0, #{fpsr}]
    msr     fpsr, x2
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret

    /* From LENTRY: x0 = vector number; the guest's x0, x1 on the stack. */
    .global guest_exit
guest_exit:
    mrs     x1, tpidr_el2
    stp     x2, x3, [x1, #16]
    stp     x4, x5, [x1, #32]
    stp     x6, x7, [x1, #48]
    stp     x8, x9, [x1, #64]
    stp     x10, x11, [x1, #80]
    stp     x12, x13, [x1, #96]
    stp     x14, x15, [x1, #112]
    stp     x16, x17, [x1, #128]
    stp     x18, x19, [x1, #144]
    stp     x20, x21, [x1, #160]
    stp     x22, x23, [x1, #176]
    stp     x24, x25, [x1, #192]
    stp     x26, x27, [x1, #208]
    stp     x28, x29, [x1, #224]
    str     x30, [x1, #240]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1, #0]
    str     x0, [x1, #248]
    add     x2, x1, #{fp}
    stp     q0, q1, [x2, #0]
    stp     q2, q3, [x2, #32]
    stp     q4, q5, [x2, #64]
    stp     q6, q7, [x2, #96]
    stp     q8, q9, [x2, #128]
    stp     q10, q11, [x2, #160]
    stp     q12, q13, [x2, #192]
    stp     q14, q15, [x2, #224]
    stp     q16, q17, [x2, #256]
    stp     q18, q19, [x2, #288]
    stp     q20, q21, [x2, #320]
    stp     q22, q23, [x2, #352]
    stp     q24, q25, [x2, #384]
    stp     q26, q27, [x2, #416]
    stp     q28, q29, [x2, #448]
    stp     q30, q31, [x2, #480]
    mrs     x3, fpcr
    str     x3, [x1, #{fpcr}]
    mrs     x3, fpsr
    str     x3, [x1, #{fpsr}]
    add     x9, x1, #{host}
    ldr     x2, [x9, #160]
    mov     sp, x2
    ldp     x19, x20, [x9, #0]
    ldp     x21, x22, [x9, #16]
    ldp     x23, x24, [x9, #32]
    ldp     x25, x26, [x9, #48]
    ldp     x27, x28, [x9, #64]
    ldp     x29, x30, [x9, #80]
    ldp     d8, d9, [x9, #96]
    ldp     d10, d11, [x9, #112]
    ldp     d12, d13, [x9, #128]
    ldp     d14, d15, [x9, #144]
    ret
"#,
    host = const HOST_OFFSET,
    fp = const FP_OFFSET,
    fpcr = const FPCR_OFFSET,
    fpsr = const FPSR_OFFSET,
);

unsafe extern "C" {
    /// Enter the guest whose registers are in `regs`; returns the vector
    /// number of its next exit, with `regs` holding its registers then.
    fn run_guest(regs: *mut GuestRegs) -> u64;
}

/// HCR_EL2 while a guest runs: VM, TWI, TSC, DC, RW.
const HCR_GUEST: u64 = (1 << 0) | (1 << 13) | (1 << 19) | (1 << 12) | (1 << 31);
/// HCR_EL2 while the hypervisor runs on its own: RW only (as at boot).
const HCR_HOST: u64 = 1 << 31;
/// SPSR for the first entry: EL1h, D, A, I, F masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;
/// SCTLR_EL1 at entry: the RES1 bits (29, 28, 23, 22, 20, 11), MMU and
/// caches off.
const SCTLR_EL1_RESET: u64 = 0x30d0_0800;
/// CPACR_EL1.FPEN = 0b11: no FP/SIMD traps at EL1 and EL0.
const CPACR_FP_ON: u64 = 3 << 20;

/// The EL1 system registers a guest owns, saved while another runs.
#[derive(Clone, Copy, Debug, Default)]
struct El1State {
    sp_el0: u64,
    sp_el1: u64,
    elr_el1: u64,
    spsr_el1: u64,
    vbar: u64,
    sctlr: u64,
    cpacr: u64,
    tpidr_el0: u64,
    tpidr_el1: u64,
    tcr: u64,
    ttbr0: u64,
    ttbr1: u64,
    mair: u64,
}

impl El1State {
    fn load(&self) {
        SP_EL0.set(self.sp_el0);
        SP_EL1.set(self.sp_el1);
        ELR_EL1.set(self.elr_el1);
        SPSR_EL1.set(self.spsr_el1);
        VBAR_EL1.set(self.vbar);
        SCTLR_EL1.set(self.sctlr);
        CPACR_EL1.set(self.cpacr);
        TPIDR_EL0.set(self.tpidr_el0);
        TPIDR_EL1.set(self.tpidr_el1);
        TCR_EL1.set(self.tcr);
        TTBR0_EL1.set(self.ttbr0);
        TTBR1_EL1.set(self.ttbr1);
        MAIR_EL1.set(self.mair);
    }

    fn save(&mut self) {
        *self = Self {
            sp_el0: SP_EL0.get(),
            sp_el1: SP_EL1.get(),
            elr_el1: ELR_EL1.get(),
            spsr_el1: SPSR_EL1.get(),
            vbar: VBAR_EL1.get(),
            sctlr: SCTLR_EL1.get(),
            cpacr: CPACR_EL1.get(),
            tpidr_el0: TPIDR_EL0.get(),
            tpidr_el1: TPIDR_EL1.get(),
            tcr: TCR_EL1.get(),
            ttbr0: TTBR0_EL1.get(),
            ttbr1: TTBR1_EL1.get(),
            mair: MAIR_EL1.get(),
        };
    }
}

/// What the guest's last synchronous exit said.
#[derive(Clone, Copy, Debug, Default)]
struct Syndrome {
    esr: u64,
    far: u64,
    hpfar: u64,
}

/// A guest vCPU at EL1 with its own stage-2 tables and VMID.
#[derive(Debug)]
pub struct El1Vcpu {
    regs: GuestRegs,
    el1: El1State,
    pc: u64,
    spsr: u64,
    vttbr: u64,
    vtcr: u64,
    last: Syndrome,
    /// The TLB has not been cleaned for this VMID yet.
    fresh: bool,
    /// Stack pointer and `x0` at the start, for a restart.
    sp: u64,
    arg: u64,
}

impl El1Vcpu {
    /// A vCPU that starts at `entry` in EL1h with `sp` and `x0 = arg`,
    /// translating through the stage-2 tables at `root` (VMID `vmid`,
    /// VTCR_EL2 value `vtcr`).
    #[must_use]
    pub fn new(entry: u64, sp: u64, arg: u64, root: u64, vmid: u16, vtcr: u64) -> Self {
        let (regs, el1) = Self::start_state(sp, arg);
        Self {
            regs,
            el1,
            pc: entry,
            spsr: SPSR_EL1H_MASKED,
            vttbr: (u64::from(vmid) << 48) | root,
            vtcr,
            last: Syndrome::default(),
            fresh: true,
            sp,
            arg,
        }
    }

    /// Registers at the first instruction: `x0 = arg`, `SP_EL1 = sp`, the
    /// rest zero, MMU off, FP/SIMD on.
    fn start_state(sp: u64, arg: u64) -> (GuestRegs, El1State) {
        let mut regs = GuestRegs {
            x: [0; 31],
            kind: 0,
            q: [0; 32],
            fpcr: 0,
            fpsr: 0,
            host: [0; 22],
        };
        regs.x[0] = arg;
        let el1 = El1State {
            sp_el1: sp,
            sctlr: SCTLR_EL1_RESET,
            cpacr: CPACR_FP_ON,
            ..El1State::default()
        };
        (regs, el1)
    }

    fn enter(&mut self) -> u64 {
        VTCR_EL2.set(self.vtcr);
        VTTBR_EL2.set(self.vttbr);
        self.el1.load();
        // EL1 may read the physical counter and use its timer.
        CNTHCTL_EL2.set(CNTHCTL_EL2.get() | 0b11);
        HCR_EL2.set(HCR_GUEST);
        barrier_isb();
        if self.fresh {
            // Whatever an earlier user of this VMID left in the TLB.
            tlbi_vmid();
            self.fresh = false;
        }
        ELR_EL2.set(self.pc);
        SPSR_EL2.set(self.spsr);
        // SAFETY: `regs` is this vCPU's block, alive and exclusively
        // borrowed for the call; the guest runs at EL1 under the stage-2
        // tables just installed, which map only its RAM and its devices'
        // registers, and `guest_exit` restores every callee-saved register
        // and the stack before returning here.
        let kind = unsafe { run_guest(&raw mut self.regs) };
        self.pc = ELR_EL2.get();
        self.spsr = SPSR_EL2.get();
        self.last = Syndrome { esr: ESR_EL2.get(), far: FAR_EL2.get(), hpfar: HPFAR_EL2.get() };
        HCR_EL2.set(HCR_HOST);
        barrier_isb();
        self.el1.save();
        kind
    }
}

fn barrier_isb() {
    // SAFETY: a barrier; no memory or register effects beyond ordering.
    unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) };
}

/// Invalidate stage-1 and stage-2 TLB entries of the current VMID on
/// every CPU of the inner-shareable domain.
fn tlbi_vmid() {
    // SAFETY: TLB maintenance for the VMID in VTTBR_EL2; only drops cached
    // translations.
    unsafe { core::arch::asm!("tlbi vmalls12e1is", "dsb ish", "isb", options(nostack, preserves_flags)) };
}

impl Vcpu for El1Vcpu {
    fn run(&mut self) -> Exit {
        loop {
            let kind = self.enter();
            if kind != 8 {
                return Exit::Other(format!("{} exception taken to EL2", crate::exceptions::kind_name(kind)));
            }
            let esr = self.last.esr;
            let ec = (esr >> 26) & 0x3f;
            let iss = esr & 0x1ff_ffff;
            match ec {
                0x16 => {
                    // HVC #imm: ELR is already past it.
                    let nr = if iss & 0xffff == 0 { smccc_command(self.regs.x[0]) } else { None };
                    match nr {
                        Some(nr) => return Exit::Hypercall { nr, gpa: self.regs.x[1] },
                        None => self.set_return(sluice_kernel::abi::SMCCC_NOT_SUPPORTED),
                    }
                }
                0x01 => {
                    // WFI/WFE: ELR points at it; resume after it.
                    self.pc += 4;
                    return Exit::Park;
                }
                0x20 | 0x24 => {
                    // Stage-2 abort: HPFAR_EL2.FIPA holds IPA[47:12].
                    let gpa = ((self.last.hpfar & 0x0000_0fff_ffff_fff0) << 8) | (self.last.far & 0xfff);
                    return Exit::Fault { gpa, write: ec == 0x24 && iss & (1 << 6) != 0, fetch: ec == 0x20 };
                }
                _ => return Exit::Other(format!("{} (ESR_EL2 {esr:#x}, FAR {:#x})", crate::exceptions::ec_name(ec), self.last.far)),
            }
        }
    }

    fn restart(&mut self, entry: u64, _write: &mut GuestWrite<'_>) -> Result<(), String> {
        (self.regs, self.el1) = Self::start_state(self.sp, self.arg);
        self.pc = entry;
        self.spsr = SPSR_EL1H_MASKED;
        self.last = Syndrome::default();
        // Whatever the last run left in the TLB for this VMID.
        self.fresh = true;
        Ok(())
    }

    fn set_return(&mut self, value: i64) {
        // x0 = result; x1..x3 are clobbered by the ABI: leave nothing of
        // the hypervisor's in them.
        self.regs.x[0] = value as u64;
        self.regs.x[1] = 0;
        self.regs.x[2] = 0;
        self.regs.x[3] = 0;
    }

    fn pc(&self) -> u64 {
        self.pc
    }

    fn dump(&self) -> String {
        let mut s = format!(
            "    ESR_EL2 {:#x} ({}) FAR {:#x} HPFAR {:#x} SPSR {:#x} SP_EL1 {:#x}",
            self.last.esr,
            crate::exceptions::ec_name((self.last.esr >> 26) & 0x3f),
            self.last.far,
            self.last.hpfar,
            self.spsr,
            self.el1.sp_el1
        );
        for (i, pair) in self.regs.x.chunks(4).enumerate() {
            s += "\n   ";
            for (j, v) in pair.iter().enumerate() {
                s += &format!(" x{:<2} {v:#018x}", i * 4 + j);
            }
        }
        s
    }
}
