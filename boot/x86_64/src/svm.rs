//! An AMD SVM guest vCPU with nested paging (QEMU TCG emulates SVM + NPT).
//!
//! The guest starts in 64-bit long mode at CPL 0 with paging on (the
//! identity page tables the hypervisor wrote into its RAM at
//! [`layout::PAGE_TABLES_GPA`]); its second stage is a nested page table
//! ([`Npt`]) mapping its RAM at [`layout::RAM_BASE`] and its devices' BARs
//! at their own addresses, nothing else. Intercepted: VMMCALL (the
//! hypercall), HLT (park), every SVM instruction, I/O ports and MSRs (all
//! of them, through all-ones permission maps), shutdown (a triple fault),
//! INTR/NMI, and nested page faults (#VMEXIT NPF).
//!
//! `svm_run` loads the guest's general registers (the VMCB holds only RAX,
//! RSP, RIP, RFLAGS), runs VMRUN and stores them back.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};

use sluice_boot::frames;
use sluice_boot::partition::{Exit, GuestWrite, Vcpu};
use sluice_kernel::abi::layout;

/// EFER.SVME.
const EFER_SVME: u64 = 1 << 12;
const MSR_EFER: u32 = 0xc000_0080;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
const MSR_VM_CR: u32 = 0xc001_0114;

// VMCB control area offsets.
const C_INTERCEPT_MISC1: usize = 0x00c;
const C_INTERCEPT_MISC2: usize = 0x010;
const C_IOPM_BASE: usize = 0x040;
const C_MSRPM_BASE: usize = 0x048;
const C_ASID: usize = 0x058;
const C_TLB_CONTROL: usize = 0x05c;
const C_VINTR: usize = 0x060;
const C_EXITCODE: usize = 0x070;
const C_EXITINFO1: usize = 0x078;
const C_EXITINFO2: usize = 0x080;
const C_NP_ENABLE: usize = 0x090;
const C_N_CR3: usize = 0x0b0;
// VMCB state save area offsets.
const S_ES: usize = 0x400;
const S_CS: usize = 0x410;
const S_SS: usize = 0x420;
const S_DS: usize = 0x430;
const S_FS: usize = 0x440;
const S_GS: usize = 0x450;
const S_GDTR: usize = 0x460;
const S_LDTR: usize = 0x470;
const S_IDTR: usize = 0x480;
const S_TR: usize = 0x490;
const S_CPL: usize = 0x4cb;
const S_EFER: usize = 0x4d0;
const S_CR4: usize = 0x548;
const S_CR3: usize = 0x550;
const S_CR0: usize = 0x558;
const S_DR7: usize = 0x560;
const S_DR6: usize = 0x568;
const S_RFLAGS: usize = 0x570;
const S_RIP: usize = 0x578;
const S_RSP: usize = 0x5d8;
const S_RAX: usize = 0x5f8;
const S_G_PAT: usize = 0x668;

// Intercept bits.
const I_INTR: u32 = 1 << 0;
const I_NMI: u32 = 1 << 1;
const I_HLT: u32 = 1 << 24;
const I_IOIO: u32 = 1 << 27;
const I_MSR: u32 = 1 << 28;
const I_SHUTDOWN: u32 = 1 << 31;
/// VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT.
const I_SVM_INSNS: u32 = 0x7f;

// Exit codes.
const EXIT_INTR: u64 = 0x60;
const EXIT_NMI: u64 = 0x61;
const EXIT_HLT: u64 = 0x78;
const EXIT_IOIO: u64 = 0x7b;
const EXIT_MSR: u64 = 0x7c;
const EXIT_SHUTDOWN: u64 = 0x7f;
const EXIT_VMMCALL: u64 = 0x81;
const EXIT_NPF: u64 = 0x400;
const EXIT_INVALID: u64 = u64::MAX;

/// Guest general registers `svm_run` moves (all but RAX and RSP, which
/// live in the VMCB), in this order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Gprs {
    /// rbx, rcx, rdx, rsi, rdi, rbp, r8..r15.
    pub r: [u64; 14],
}
const RDI: usize = 4;

core::arch::global_asm!(
    r#"
    .section .text.svm, "ax"
    .global svm_run
    /* svm_run(vmcb_pa: rdi, gprs: rsi) */
svm_run:
    push    rbx
    push    rbp
    push    r12
    push    r13
    push    r14
    push    r15
    push    rsi
    mov     rax, rdi
    mov     rbx, [rsi + 0]
    mov     rcx, [rsi + 8]
    mov     rdx, [rsi + 16]
    mov     rdi, [rsi + 32]
    mov     rbp, [rsi + 40]
    mov     r8,  [rsi + 48]
    mov     r9,  [rsi + 56]
    mov     r10, [rsi + 64]
    mov     r11, [rsi + 72]
    mov     r12, [rsi + 80]
    mov     r13, [rsi + 88]
    mov     r14, [rsi + 96]
    mov     r15, [rsi + 104]
    mov     rsi, [rsi + 24]
    vmrun   rax
    push    rsi
    mov     rsi, [rsp + 8]
    mov     [rsi + 0], rbx
    mov     [rsi + 8], rcx
    mov     [rsi + 16], rdx
    mov     [rsi + 32], rdi
    mov     [rsi + 40], rbp
    mov     [rsi + 48], r8
    mov     [rsi + 56], r9
    mov     [rsi + 64], r10
    mov     [rsi + 72], r11
    mov     [rsi + 80], r12
    mov     [rsi + 88], r13
    mov     [rsi + 96], r14
    mov     [rsi + 104], r15
    pop     rax
    mov     [rsi + 24], rax
    pop     rsi
    pop     r15
    pop     r14
    pop     r13
    pop     r12
    pop     rbp
    pop     rbx
    ret
"#
);

unsafe extern "C" {
    fn svm_run(vmcb_pa: u64, gprs: *mut Gprs);
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading an architectural MSR the caller names; no memory
    // effects.
    unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn wrmsr(msr: u32, value: u64) {
    // SAFETY: writing EFER.SVME or VM_HSAVE_PA, which enable SVM and name
    // the host save area; nothing else depends on them.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack, preserves_flags));
    };
}

/// Whether the CPU has SVM with nested paging (CPUID 0x8000_0001 ECX.SVM,
/// 0x8000_000A EDX.NP) and the firmware did not lock it off (VM_CR.SVMDIS).
///
/// # Errors
///
/// What is missing.
pub fn supported() -> Result<(), &'static str> {
    let ext = core::arch::x86_64::__cpuid(0x8000_0001);
    if ext.ecx & (1 << 2) == 0 {
        return Err("no SVM (CPUID 0x80000001 ECX bit 2; QEMU: -cpu qemu64,+svm,+npt)");
    }
    let svm = core::arch::x86_64::__cpuid(0x8000_000a);
    if svm.edx & 1 == 0 {
        return Err("SVM without nested paging (CPUID 0x8000000A EDX bit 0; QEMU: +npt)");
    }
    if rdmsr(MSR_VM_CR) & (1 << 4) != 0 {
        return Err("SVM disabled by firmware (VM_CR.SVMDIS)");
    }
    Ok(())
}

/// Turn SVM on (EFER.SVME) with a host save area.
///
/// # Errors
///
/// See [`supported`]; no memory for the save area.
pub fn enable() -> Result<(), &'static str> {
    supported()?;
    let hsave = frames::alloc_zeroed(1).ok_or("no page for the host save area")?;
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SVME);
    wrmsr(MSR_VM_HSAVE_PA, hsave);
    Ok(())
}

/// A page of 64-bit words in the identity map.
fn words(pa: u64) -> &'static [AtomicU64; 512] {
    // SAFETY: `pa` is a page this module allocated from the frame
    // allocator (identity-mapped RAM) and keeps for good; atomics allow the
    // CPU's own accesses (VMRUN, nested walks) alongside.
    unsafe { &*(sluice_boot::phys_to_virt(pa).cast::<[AtomicU64; 512]>()) }
}

/// A nested page table: 4 levels, x86-64 long-mode format with U/S set
/// everywhere (nested walks are user accesses).
#[derive(Debug)]
pub struct Npt {
    root: u64,
}

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

impl Npt {
    /// An empty table.
    ///
    /// # Errors
    ///
    /// No memory.
    pub fn new() -> Result<Self, &'static str> {
        Ok(Self { root: frames::alloc_zeroed(1).ok_or("no page for the nested page table")? })
    }

    /// The root (nCR3).
    #[must_use]
    pub fn root(&self) -> u64 {
        self.root
    }

    fn table(&self, pa: u64, level: u32, gpa: u64) -> Result<u64, &'static str> {
        let mut table = pa;
        for l in (level + 1..4).rev() {
            let e = &words(table)[((gpa >> (12 + 9 * l)) & 511) as usize];
            let v = e.load(Ordering::Acquire);
            table = if v & P != 0 {
                if v & PS != 0 {
                    return Err("mapping overlaps a large page");
                }
                v & ADDR
            } else {
                let next = frames::alloc_zeroed(1).ok_or("no page for the nested page table")?;
                e.store(next | P | RW | US, Ordering::Release);
                next
            };
        }
        Ok(table)
    }

    /// Map `[gpa, gpa + len)` to `hpa`, read-write (2 MiB pages where
    /// both are aligned, else 4 KiB); `mmio` makes it uncached.
    ///
    /// # Errors
    ///
    /// No memory, or an overlap with a large page.
    pub fn map(&mut self, gpa: u64, hpa: u64, len: u64, mmio: bool) -> Result<(), &'static str> {
        let attrs = P | RW | US | if mmio { PCD | PWT } else { 0 };
        let mut off = 0;
        while off < len {
            let (g, h) = (gpa + off, hpa + off);
            if g % 0x20_0000 == 0 && h % 0x20_0000 == 0 && len - off >= 0x20_0000 {
                let t = self.table(self.root, 1, g)?;
                words(t)[((g >> 21) & 511) as usize].store(h | attrs | PS, Ordering::Release);
                off += 0x20_0000;
            } else {
                let t = self.table(self.root, 0, g)?;
                words(t)[((g >> 12) & 511) as usize].store(h | attrs, Ordering::Release);
                off += 0x1000;
            }
        }
        Ok(())
    }
}

/// The guest identity page tables in its RAM (written through `write`,
/// at [`layout::PAGE_TABLES_GPA`]): 0..4 GiB in 2 MiB pages, which covers
/// its RAM and the 32-bit PCI window. Returns CR3.
pub fn guest_page_tables(mut write: impl FnMut(u64, &[u8]) -> Result<(), String>) -> Result<u64, String> {
    let pml4 = layout::PAGE_TABLES_GPA;
    let pdpt = pml4 + 0x1000;
    let pd0 = pml4 + 0x2000;
    write(pml4, &(pdpt | 0x3).to_le_bytes())?;
    for i in 0..4u64 {
        write(pdpt + 8 * i, &((pd0 + 0x1000 * i) | 0x3).to_le_bytes())?;
        let mut pd = [0u8; 4096];
        for (j, e) in pd.chunks_exact_mut(8).enumerate() {
            let addr = (i << 30) | ((j as u64) << 21);
            e.copy_from_slice(&(addr | 0x83).to_le_bytes());
        }
        write(pd0 + 0x1000 * i, &pd)?;
    }
    Ok(pml4)
}

/// An SVM guest vCPU.
#[derive(Debug)]
pub struct SvmVcpu {
    vmcb: u64,
    iopm: u64,
    msrpm: u64,
    ncr3: u64,
    asid: u32,
    rsp: u64,
    arg: u64,
    gprs: Gprs,
    first: bool,
    last_exit: (u64, u64, u64),
    intr_storm: u32,
}

fn put<T: Copy>(vmcb: u64, off: usize, v: T) {
    let p = sluice_boot::phys_to_virt(vmcb + off as u64).cast::<T>();
    // SAFETY: `vmcb` is this vCPU's VMCB page (identity-mapped RAM owned by
    // it); `off` is a field offset inside it, aligned for `T`.
    unsafe { p.write_volatile(v) };
}

fn get<T: Copy>(vmcb: u64, off: usize) -> T {
    let p = sluice_boot::phys_to_virt(vmcb + off as u64).cast::<T>();
    // SAFETY: as in `put`.
    unsafe { p.read_volatile() }
}

fn segment(vmcb: u64, off: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    put(vmcb, off, selector);
    put(vmcb, off + 2, attrib);
    put(vmcb, off + 4, limit);
    put(vmcb, off + 8, base);
}

impl SvmVcpu {
    /// A vCPU entering `entry` in 64-bit mode with `rsp`, `rdi = arg`,
    /// paging through `cr3` (guest tables) and `ncr3` (nested), ASID `asid`.
    ///
    /// # Errors
    ///
    /// No memory for the VMCB and permission maps.
    pub fn new(entry: u64, rsp: u64, arg: u64, cr3: u64, ncr3: u64, asid: u32) -> Result<Self, &'static str> {
        let vmcb = frames::alloc_zeroed(1).ok_or("no page for the VMCB")?;
        // All-ones I/O and MSR permission maps: every port and MSR access
        // exits.
        let iopm = frames::alloc(4).ok_or("no pages for the I/O permission map")?;
        let msrpm = frames::alloc(2).ok_or("no pages for the MSR permission map")?;
        for (pa, pages) in [(iopm, 4u64), (msrpm, 2)] {
            for page in 0..pages {
                for w in words(pa + page * 4096) {
                    w.store(u64::MAX, Ordering::Relaxed);
                }
            }
        }
        let mut vcpu = Self {
            vmcb,
            iopm,
            msrpm,
            ncr3,
            asid,
            rsp,
            arg,
            gprs: Gprs::default(),
            first: true,
            last_exit: (0, 0, 0),
            intr_storm: 0,
        };
        vcpu.init(entry, cr3);
        Ok(vcpu)
    }

    /// Put the VMCB and the registers in the start state: entering
    /// `entry` in 64-bit mode, paging through `cr3`.
    fn init(&mut self, entry: u64, cr3: u64) {
        let vmcb = self.vmcb;
        for w in words(vmcb) {
            w.store(0, Ordering::Relaxed);
        }
        put(
            vmcb,
            C_INTERCEPT_MISC1,
            I_INTR | I_NMI | I_HLT | I_IOIO | I_MSR | I_SHUTDOWN,
        );
        put(vmcb, C_INTERCEPT_MISC2, I_SVM_INSNS);
        put(vmcb, C_IOPM_BASE, self.iopm);
        put(vmcb, C_MSRPM_BASE, self.msrpm);
        put(vmcb, C_ASID, self.asid);
        // V_INTR_MASKING: the guest's IF does not mask the host's interrupts.
        put(vmcb, C_VINTR, 1u64 << 24);
        put(vmcb, C_NP_ENABLE, 1u64);
        put(vmcb, C_N_CR3, self.ncr3);
        // 64-bit code, flat data, a busy 64-bit TSS (VMRUN wants a usable TR).
        segment(vmcb, S_CS, 0x08, 0xa9b, 0xffff_ffff, 0);
        for off in [S_ES, S_SS, S_DS, S_FS, S_GS] {
            segment(vmcb, off, 0x10, 0xc93, 0xffff_ffff, 0);
        }
        segment(vmcb, S_GDTR, 0, 0, 0, 0);
        segment(vmcb, S_IDTR, 0, 0, 0, 0);
        segment(vmcb, S_LDTR, 0, 0x82, 0, 0);
        segment(vmcb, S_TR, 0x18, 0x8b, 0x67, 0);
        put(vmcb, S_CPL, 0u8);
        // EFER: LME, LMA, NXE, SVME (VMRUN requires SVME in the guest's).
        put(vmcb, S_EFER, (1u64 << 8) | (1 << 10) | (1 << 11) | EFER_SVME);
        put(vmcb, S_CR0, 0x8001_0033u64);
        put(vmcb, S_CR3, cr3);
        put(vmcb, S_CR4, 0x20u64);
        put(vmcb, S_DR6, 0xffff_0ff0u64);
        put(vmcb, S_DR7, 0x400u64);
        put(vmcb, S_RFLAGS, 0x2u64);
        put(vmcb, S_RIP, entry);
        put(vmcb, S_RSP, self.rsp);
        put(vmcb, S_RAX, 0u64);
        put(vmcb, S_G_PAT, 0x0007_0406_0007_0406u64);
        self.gprs = Gprs::default();
        self.gprs.r[RDI] = self.arg;
        self.first = true;
        self.last_exit = (0, 0, 0);
        self.intr_storm = 0;
    }

    fn rip(&self) -> u64 {
        get(self.vmcb, S_RIP)
    }
}

impl Vcpu for SvmVcpu {
    fn run(&mut self) -> Exit {
        loop {
            // Flush this ASID's TLB entries the first time round.
            put(self.vmcb, C_TLB_CONTROL, u8::from(self.first));
            self.first = false;
            // SAFETY: the VMCB, its permission maps and the nested tables
            // are this vCPU's and map only the partition's RAM and BARs;
            // SVM is on (`enable`); `svm_run` restores every callee-saved
            // register and the stack (VMRUN/#VMEXIT keep RSP).
            unsafe { svm_run(self.vmcb, &raw mut self.gprs) };
            let code: u64 = get(self.vmcb, C_EXITCODE);
            let info1: u64 = get(self.vmcb, C_EXITINFO1);
            let info2: u64 = get(self.vmcb, C_EXITINFO2);
            self.last_exit = (code, info1, info2);
            match code {
                EXIT_VMMCALL => {
                    let rip = self.rip();
                    put(self.vmcb, S_RIP, rip + 3);
                    let nr: u64 = get(self.vmcb, S_RAX);
                    return Exit::Hypercall { nr, gpa: self.gprs.r[RDI] };
                }
                EXIT_HLT => {
                    let rip = self.rip();
                    put(self.vmcb, S_RIP, rip + 1);
                    return Exit::Park;
                }
                EXIT_NPF => return Exit::Fault { gpa: info2, write: info1 & 2 != 0, fetch: info1 & 0x10 != 0 },
                EXIT_INTR | EXIT_NMI => {
                    // A host interrupt: nothing here handles any, and the
                    // guest may go on.
                    self.intr_storm += 1;
                    if self.intr_storm > 100_000 {
                        return Exit::Other("a host interrupt keeps arriving".into());
                    }
                }
                EXIT_IOIO => return Exit::Other(format!("I/O port access (port {:#x})", info1 >> 16)),
                EXIT_MSR => {
                    let ecx: u64 = self.gprs.r[1];
                    return Exit::Other(format!("MSR {} of {ecx:#x}", if info1 == 1 { "write" } else { "read" }));
                }
                EXIT_SHUTDOWN => return Exit::Other("shutdown (triple fault)".into()),
                EXIT_INVALID => return Exit::Other("VMRUN refused the guest state (VMEXIT_INVALID)".into()),
                other => return Exit::Other(format!("#VMEXIT {other:#x} (info {info1:#x} {info2:#x})")),
            }
        }
    }

    fn set_return(&mut self, value: i64) {
        put(self.vmcb, S_RAX, value as u64);
    }

    fn restart(&mut self, entry: u64, write: &mut GuestWrite<'_>) -> Result<(), String> {
        // The guest's page tables live in its RAM, which the reset zeroed.
        let cr3 = guest_page_tables(|gpa, bytes| write(gpa, bytes))?;
        self.init(entry, cr3);
        Ok(())
    }

    fn pc(&self) -> u64 {
        self.rip()
    }

    fn dump(&self) -> String {
        let (code, i1, i2) = self.last_exit;
        let mut s = format!(
            "    exit {code:#x} info1 {i1:#x} info2 {i2:#x} rip {:#x} rsp {:#x} rax {:#x} rflags {:#x}",
            self.rip(),
            get::<u64>(self.vmcb, S_RSP),
            get::<u64>(self.vmcb, S_RAX),
            get::<u64>(self.vmcb, S_RFLAGS)
        );
        const NAMES: [&str; 14] = ["rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
        for (i, (n, v)) in NAMES.iter().zip(self.gprs.r).enumerate() {
            if i % 4 == 0 {
                s += "\n   ";
            }
            s += &format!(" {n:<3} {v:#018x}");
        }
        s
    }
}
