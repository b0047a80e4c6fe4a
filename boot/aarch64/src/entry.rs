//! The first instructions: the arm64 `Image` header and `_start`.
//!
//! Both boot forms enter here at EL2 with the MMU off: QEMU `-kernel` with
//! the ELF (entry `_start` at the link address 0x40200000) and a raw
//! `Image` (QEMU `-kernel`, U-Boot `booti`; x0 = DTB physical address).
//!
//! `_start` keeps x0 (DTB address, 0 when the loader passed none), checks
//! CurrentEL, and at EL2:
//! 1. sets SCTLR_EL2 (MMU and caches off), HCR_EL2 (RW), CPTR_EL2 (no FP
//!    traps: Rust code uses SIMD registers), SPSel, a provisional VBAR_EL2;
//! 2. builds the boot page tables (4 KiB granule, 48-bit VA, identity):
//!    0..1 TiB in 1 GiB blocks as Device-nGnRnE, except the 1 GiB blocks
//!    holding the image and the DTB, which are Normal write-back. `paging`
//!    replaces them with the final map (RAM from the device tree) later;
//! 3. sets MAIR_EL2, TCR_EL2 (PS from ID_AA64MMFR0_EL1), TTBR0_EL2 and
//!    SCTLR_EL2.M|C|I|SA;
//! 4. applies its own R_AARCH64_RELATIVE relocations (load address minus
//!    link address), zeroes .bss, takes the boot stack, sets VBAR_EL2 and
//!    calls `kmain(dtb_pa)`.
//!
//! At any other EL it still relocates (MMU off), zeroes .bss and calls
//! `kmain_wrong_el(dtb_pa, el)`, which reports and stops.

/// Where QEMU virt's RAM starts, and where QEMU puts the DTB when it boots
/// an ELF with `-kernel` without passing its address. Only used when x0 is
/// zero (see `start::kmain`).
pub const QEMU_VIRT_RAM_BASE: u64 = 0x4000_0000;

/// The Image header's `text_offset`: QEMU loads an `Image` at RAM base +
/// text_offset, which is the link address on QEMU virt.
pub const TEXT_OFFSET: u64 = 0x20_0000;

/// Image header flags: bit 0 = 0 little-endian, bits 1-2 = 1 4 KiB pages,
/// bit 3 = 1 "may be placed anywhere" (2 MiB-aligned base + text_offset).
pub const IMAGE_FLAGS: u64 = 0b1010;

/// Size of the boot stack; below it one page is left unmapped by `paging`.
pub const BOOT_STACK_BYTES: usize = 128 * 1024;

/// MAIR_EL2: attr 0 Device-nGnRnE, attr 1 Normal WB RA/WA, attr 2 Normal
/// non-cacheable.
pub const MAIR: u64 = 0x00_44_ff_00;
/// Attribute index of Device-nGnRnE memory.
pub const ATTR_DEVICE: u64 = 0;
/// Attribute index of Normal write-back memory.
pub const ATTR_NORMAL: u64 = 1;

/// Boot table block descriptors (1 GiB): valid block, AF, and for Normal
/// inner-shareable; Device is also execute-never (bit 54).
const BLOCK_NORMAL: u64 = 0x1 | (ATTR_NORMAL << 2) | (3 << 8) | (1 << 10);
const BLOCK_DEVICE: u64 = 0x1 | (ATTR_DEVICE << 2) | (1 << 10) | (1 << 54);

/// SCTLR_EL2 RES1 bits (EL2 without VHE): 4, 5, 11, 16, 18, 22, 23, 28, 29.
pub const SCTLR_RES1: u64 = 0x30C5_0830;
/// SCTLR_EL2 with the MMU on: M (0), A off, C (2), SA (3), I (12).
pub const SCTLR_ON: u64 = SCTLR_RES1 | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 12);
/// TCR_EL2 without PS: T0SZ 16 (48-bit VA), inner/outer WB RA/WA walks,
/// inner shareable, 4 KiB granule, RES1 bits 23 and 31.
pub const TCR: u64 = 16 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (1 << 31);
/// CPTR_EL2 RES1 bits (13, 12, 9, 7:0), no trap of FP/SIMD (TFP, bit 10).
const CPTR_DEFAULT: u64 = 0x32FF;
/// HCR_EL2.RW: EL1 is AArch64.
const HCR_DEFAULT: u64 = 1 << 31;

core::arch::global_asm!(
    r#"
    /* ---------------- arm64 Image header (64 bytes, offset 0) --------------- */
    .section .text.head, "ax"
    .global _start
_start:
    b       primary_entry                 /* code0 */
    .long   0                             /* code1 */
    .quad   {text_offset}                 /* text_offset */
    .quad   __image_size                  /* image_size: through .bss and tables */
    .quad   {flags}                       /* flags: LE, 4 KiB, anywhere */
    .quad   0                             /* res2 */
    .quad   0                             /* res3 */
    .quad   0                             /* res4 */
    .ascii  "ARM\x64"                     /* magic */
    .long   0                             /* res5 (no PE/COFF header) */

    .section .text.boot, "ax"
    .balign 8
link_start:
    .quad   _start                        /* link address (relocated later) */

primary_entry:
    mov     x19, x0                       /* DTB physical address (or 0) */
    mrs     x20, CurrentEL
    ubfx    x20, x20, #2, #2
    cmp     x20, #2
    b.ne    wrong_el

    /* Known state: MMU and caches off, AArch64 EL1, no FP traps. */
    ldr     x0, ={sctlr_res1}
    msr     sctlr_el2, x0
    isb
    ldr     x0, ={hcr}
    msr     hcr_el2, x0
    ldr     x0, ={cptr}
    msr     cptr_el2, x0
    msr     spsel, #1
    adrp    x0, exception_vectors
    add     x0, x0, :lo12:exception_vectors
    msr     vbar_el2, x0
    isb

    /* ---- boot page tables: L0 + two L1 tables (0..1 TiB) ---- */
    adrp    x21, __boot_tables_start
    add     x21, x21, :lo12:__boot_tables_start
    adrp    x22, __boot_tables_end
    add     x22, x22, :lo12:__boot_tables_end
    mov     x0, x21
    mov     x1, x22
    bl      dcache_inval_range            /* drop stale lines (none hoped) */
    mov     x0, x21
1:  stp     xzr, xzr, [x0], #16
    cmp     x0, x22
    b.lo    1b
    /* L0[0] -> L1a (x21 + 4K), L0[1] -> L1b (x21 + 8K) */
    add     x1, x21, #0x1000
    orr     x2, x1, #3
    str     x2, [x21]
    add     x1, x21, #0x2000
    orr     x2, x1, #3
    str     x2, [x21, #8]
    /* 1024 x 1 GiB Device blocks */
    add     x0, x21, #0x1000
    ldr     x2, ={block_device}
    mov     x3, #0
2:  orr     x4, x2, x3, lsl #30
    str     x4, [x0, x3, lsl #3]
    add     x3, x3, #1
    cmp     x3, #1024
    b.lo    2b
    /* the image's and the DTB's 1 GiB blocks: Normal */
    ldr     x2, ={block_normal}
    adrp    x3, _start
    lsr     x3, x3, #30
    cmp     x3, #1024
    b.hs    3f
    orr     x4, x2, x3, lsl #30
    str     x4, [x0, x3, lsl #3]
3:  lsr     x3, x19, #30
    cbz     x19, 4f
    cmp     x3, #1024
    b.hs    4f
    orr     x4, x2, x3, lsl #30
    str     x4, [x0, x3, lsl #3]
4:  mov     x0, x21
    mov     x1, x22
    bl      dcache_inval_range            /* the walker must see memory */
    dsb     sy

    /* ---- MMU on ---- */
    ldr     x0, ={mair}
    msr     mair_el2, x0
    mrs     x1, id_aa64mmfr0_el1
    and     x1, x1, #0xf                  /* PARange */
    cmp     x1, #5
    mov     x2, #5
    csel    x1, x1, x2, ls                /* at most 48 bits */
    ldr     x0, ={tcr}
    orr     x0, x0, x1, lsl #16           /* PS */
    msr     tcr_el2, x0
    msr     ttbr0_el2, x21
    isb
    tlbi    alle2
    dsb     ish
    isb
    ic      iallu
    dsb     ish
    isb
    ldr     x0, ={sctlr_on}
    msr     sctlr_el2, x0
    isb

    bl      apply_relocs
    bl      zero_bss
    adrp    x0, boot_stack_top
    add     x0, x0, :lo12:boot_stack_top
    mov     sp, x0
    mov     x29, xzr
    mov     x30, xzr
    mov     x0, x19
    bl      kmain
5:  wfe
    b       5b

wrong_el:
    /* Not EL2: relocate with the MMU off, report from Rust, stop. At EL1
       FP/SIMD must be enabled first (CPACR_EL1.FPEN): Rust code uses it. */
    cmp     x20, #1
    b.ne    12f
    mov     x0, #(3 << 20)
    msr     cpacr_el1, x0
    isb
12: bl      apply_relocs
    bl      zero_bss
    adrp    x0, boot_stack_top
    add     x0, x0, :lo12:boot_stack_top
    mov     sp, x0
    mov     x29, xzr
    mov     x0, x19
    mov     x1, x20
    bl      kmain_wrong_el
6:  wfe
    b       6b

/* Invalidate the data cache by VA over [x0, x1) (x21/x22 kept). Leaf. */
dcache_inval_range:
    mrs     x3, ctr_el0
    ubfx    x3, x3, #16, #4               /* DminLine: log2(words) */
    mov     x4, #4
    lsl     x3, x4, x3                    /* line size in bytes */
    sub     x4, x3, #1
    bic     x5, x0, x4
7:  dc      ivac, x5
    add     x5, x5, x3
    cmp     x5, x1
    b.lo    7b
    dsb     sy
    ret

/* Apply .rela.dyn: R_AARCH64_RELATIVE (1027) only, delta = load - link.
   Any other type stops the boot (wfe loop with x12 = the type). Leaf. */
apply_relocs:
    adrp    x9, _start
    adr     x10, link_start
    ldr     x10, [x10]
    sub     x9, x9, x10                   /* delta */
    cbz     x9, 9f
    adrp    x10, __rela_start
    add     x10, x10, :lo12:__rela_start
    adrp    x11, __rela_end
    add     x11, x11, :lo12:__rela_end
8:  cmp     x10, x11
    b.hs    9f
    ldp     x12, x13, [x10], #16          /* r_offset, r_info */
    ldr     x14, [x10], #8                /* r_addend */
    cmp     x13, #1027
    b.ne    80f
    add     x14, x14, x9
    str     x14, [x12, x9]
    b       8b
80: mov     x12, x13
81: wfe
    b       81b
9:  dsb     ish
    ic      iallu
    dsb     ish
    isb
    ret

zero_bss:
    adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
10: cmp     x9, x10
    b.hs    11f
    stp     xzr, xzr, [x9], #16
    b       10b
11: ret

/* Replace TTBR0_EL2 with x0: MMU off around the switch (this code touches
   no memory while it is off), then invalidate all EL2 translations. */
    .global switch_ttbr0_el2
switch_ttbr0_el2:
    dsb     ish
    mrs     x1, sctlr_el2
    bic     x2, x1, #1
    msr     sctlr_el2, x2
    isb
    msr     ttbr0_el2, x0
    isb
    tlbi    alle2
    dsb     ish
    isb
    msr     sctlr_el2, x1
    isb
    ret
    .ltorg

    /* ---------------- boot tables and stack ---------------- */
    .section .boot_tables, "aw", @nobits
    .balign 4096
    .skip   3 * 4096                      /* L0, L1 0..512G, L1 512G..1T */

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    .global boot_stack_guard
boot_stack_guard:
    .skip   4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip   {stack_bytes}
    .global boot_stack_top
boot_stack_top:
"#,
    text_offset = const TEXT_OFFSET,
    flags = const IMAGE_FLAGS,
    sctlr_res1 = const SCTLR_RES1,
    sctlr_on = const SCTLR_ON,
    hcr = const HCR_DEFAULT,
    cptr = const CPTR_DEFAULT,
    block_device = const BLOCK_DEVICE,
    block_normal = const BLOCK_NORMAL,
    mair = const MAIR,
    tcr = const TCR,
    stack_bytes = const BOOT_STACK_BYTES,
);

unsafe extern "C" {
    /// Switch the EL2 translation table base to `ttbr` (entry.rs).
    pub fn switch_ttbr0_el2(ttbr: u64);
    /// The page under the boot stack (unmapped by `paging`).
    pub static boot_stack_guard: [u8; 4096];
}
