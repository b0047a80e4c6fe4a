//! Per-CPU descriptor tables: the GDT with a TSS (whose IST 1 gives double
//! faults a stack of their own), and CPU feature queries.

use core::arch::x86_64::__cpuid;

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot (1-based as the IDT counts) of the double-fault stack.
pub const DOUBLE_FAULT_IST: u8 = 1;

const IST_STACK_BYTES: usize = 16 * 1024;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_BYTES]);

static DOUBLE_FAULT_STACK: IstStack = IstStack([0; IST_STACK_BYTES]);

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, SegmentSelector, SegmentSelector, SegmentSelector)> = Once::new();

/// Load the final GDT (code 0x08, data 0x10, TSS 0x18) and the TSS.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        // The CPU only ever writes below the top; the stack's bytes are never
        // touched through the shared reference.
        let top = core::ptr::addr_of!(DOUBLE_FAULT_STACK) as u64 + IST_STACK_BYTES as u64;
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] = VirtAddr::new(top);
        tss
    });
    let (gdt, code, data, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, data, tss_sel)
    });
    gdt.load();
    // SAFETY: `code` is the 64-bit code descriptor of the GDT just loaded.
    unsafe { CS::set_reg(*code) };
    // SAFETY: `data` is a valid data descriptor of the loaded GDT.
    unsafe { SS::set_reg(*data) };
    // SAFETY: as above.
    unsafe { DS::set_reg(*data) };
    // SAFETY: as above.
    unsafe { ES::set_reg(*data) };
    // SAFETY: `tss_sel` is the TSS descriptor of the loaded GDT, loaded once.
    unsafe { load_tss(*tss_sel) };
}

fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = __cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...).
#[must_use]
pub fn vendor() -> [u8; 12] {
    let (_, b, c, d) = cpuid(0);
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&b.to_le_bytes());
    v[4..8].copy_from_slice(&d.to_le_bytes());
    v[8..12].copy_from_slice(&c.to_le_bytes());
    v
}

/// Highest extended CPUID leaf.
fn max_extended_leaf() -> u32 {
    cpuid(0x8000_0000).0
}

/// Whether the CPU has AMD SVM (CPUID 0x8000_0001 ECX bit 2).
#[must_use]
pub fn has_svm() -> bool {
    max_extended_leaf() >= 0x8000_0001 && cpuid(0x8000_0001).2 & (1 << 2) != 0
}

/// Whether SVM has nested paging (CPUID 0x8000_000A EDX bit 0).
#[must_use]
pub fn has_npt() -> bool {
    has_svm() && max_extended_leaf() >= 0x8000_000A && cpuid(0x8000_000A).3 & 1 != 0
}

/// Whether the TSC runs at a constant rate in all states (invariant TSC).
#[must_use]
pub fn has_invariant_tsc() -> bool {
    max_extended_leaf() >= 0x8000_0007 && cpuid(0x8000_0007).3 & (1 << 8) != 0
}

/// Whether EFER.NXE is on (the entry code sets it when the CPU has NX).
#[must_use]
pub fn nx_enabled() -> bool {
    Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE)
}

/// The CPU's nominal TSC frequency from CPUID leaf 0x15/0x16, when it says.
#[must_use]
pub fn cpuid_tsc_hz() -> Option<u64> {
    let max = cpuid(0).0;
    if max >= 0x15 {
        let (den, num, crystal, _) = cpuid(0x15);
        if den != 0 && num != 0 && crystal != 0 {
            return Some(u64::from(crystal) * u64::from(num) / u64::from(den));
        }
    }
    if max >= 0x16 {
        let base_mhz = cpuid(0x16).0 & 0xFFFF;
        if base_mhz != 0 {
            return Some(u64::from(base_mhz) * 1_000_000);
        }
    }
    None
}
