//! The first instructions: the Multiboot2 header, the PVH ELF note, and the
//! 32-bit entry `_start32` that both loaders jump to.
//!
//! `_start32` runs in 32-bit protected mode with paging off (PVH and
//! Multiboot2 agree on that). It keeps the loader's eax (boot magic) and ebx
//! (info address), zeroes .bss, checks for long mode, builds an identity map
//! of 0..4 GiB in 2 MiB pages, turns on PAE, EFER.LME (+ EFER.NXE when the
//! CPU has NX) and paging, loads a 64-bit GDT, and far-jumps to 64-bit code,
//! which calls `kmain(boot_magic, info_pa)` on the boot stack.

/// Multiboot2 loaders put this in eax.
pub const MULTIBOOT2_BOOT_MAGIC: u32 = 0x36d7_6289;

/// Code selector of the boot GDT (and of the GDT `cpu` loads later).
pub const KERNEL_CS: u16 = 0x08;

/// Size of the boot stack (below it lies one unmapped guard page once
/// `paging::init` has run).
pub const BOOT_STACK_BYTES: usize = 64 * 1024;

core::arch::global_asm!(
    r#"
    /* ---------------- Multiboot2 header (first in the image) ------------- */
    .section .multiboot2, "a"
    .balign 8
mb2_header:
    .long 0xE85250D6                      /* magic */
    .long 0                               /* architecture: i386 protected mode */
    .long mb2_header_end - mb2_header     /* header length */
    .long 0x100000000 - (0xE85250D6 + 0 + (mb2_header_end - mb2_header))
    /* end tag */
    .short 0
    .short 0
    .long 8
mb2_header_end:

    /* ---------------- PVH entry note -------------------------------------- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                               /* namesz: "Xen\0" */
    .long 8                               /* descsz: QEMU reads 8 bytes for ELF64 */
    .long 18                              /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad _start32
    .balign 4

    /* ---------------- boot GDT --------------------------------------------- */
    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF              /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00CF92000000FFFF              /* 0x10: data, DPL 0 */
boot_gdt_end:
    .balign 8
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

no_long_mode_msg:
    .asciz "sluice: this CPU has no long mode; halting\r\n"

    /* ---------------- page tables and boot stack ---------------------------- */
    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
    .global boot_stack_guard
boot_stack_guard:
    .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip {stack_bytes}
    .global boot_stack_top
boot_stack_top:

    /* ---------------- 32-bit entry ----------------------------------------- */
    .section .text.boot, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    movl %eax, %ebp                       /* boot magic */
    movl %ebx, %esi                       /* hvm_start_info / MBI address */
    movl $boot_stack_top, %esp

    /* zero .bss (the loaders should have, but nothing here relies on it) */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    /* long mode? (CPUID 0x80000001 EDX bit 29); NX is bit 20 */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb 90f
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz 90f
    movl %edx, %edi                       /* keep the feature bits for NX */

    /* PML4[0] -> PDPT, PDPT[0..4] -> 4 page directories */
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4
    movl $boot_pd, %eax
    orl $0x3, %eax
    xorl %ecx, %ecx
1:
    movl %eax, boot_pdpt(,%ecx,8)
    addl $4096, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    /* 2048 x 2 MiB pages: present, writable, PS; identity 0..4 GiB */
    movl $0x83, %eax
    xorl %ecx, %ecx
2:
    movl %eax, boot_pd(,%ecx,8)
    addl $0x200000, %eax
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    /* CR4.PAE */
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3

    /* EFER.LME, and EFER.NXE when the CPU has NX */
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    testl $(1 << 20), %edi
    jz 3f
    orl $(1 << 11), %eax
3:
    wrmsr

    lgdt boot_gdt_ptr

    /* CR0: PG | WP | PE */
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0

    ljmp ${cs}, $long_mode_entry

90:
    /* no long mode: say so on COM1 and halt */
    movl $no_long_mode_msg, %ebx
91:
    movb (%ebx), %al
    testb %al, %al
    jz 93f
    movw $0x3FD, %dx
92:
    inb %dx, %al
    testb $0x20, %al
    jz 92b
    movb (%ebx), %al
    movw $0x3F8, %dx
    outb %al, %dx
    incl %ebx
    jmp 91b
93:
    cli
    hlt
    jmp 93b

    /* ---------------- 64-bit ------------------------------------------------ */
    .code64
long_mode_entry:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movq $boot_stack_top, %rsp
    movl %ebp, %edi                       /* arg 1: boot magic, zero-extended */
    movl %esi, %esi                       /* arg 2: info address, zero-extended */
    xorl %ebp, %ebp                       /* end of frame-pointer chain */
    call kmain
5:
    cli
    hlt
    jmp 5b
"#,
    stack_bytes = const BOOT_STACK_BYTES,
    cs = const KERNEL_CS,
    options(att_syntax)
);
