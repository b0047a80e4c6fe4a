//! Where things are in a partition's guest-physical address space, at the
//! moment its vCPU starts. The same on x86_64 and aarch64.
//!
//! A partition's RAM is one contiguous GPA range
//! `[RAM_BASE, RAM_BASE + ram_size)`; `ram_size` comes from the partition
//! manifest, a multiple of [`RAM_ALIGN`] in `[RAM_MIN_SIZE, RAM_MAX_SIZE]`.
//! Its first 2 MiB belong to the start-up contract, the program image
//! follows:
//!
//! | GPA | what |
//! |---|---|
//! | `0x4000_0000 .. 0x4000_1000` | unused (left unmapped or zero; never written by the hypervisor) |
//! | `0x4000_1000 .. 0x4000_2000` | [`crate::StartInfo`], written by the hypervisor before entry ([`START_INFO_GPA`]) |
//! | `0x4000_2000 .. 0x4001_0000` | reserved for the hypervisor's future start-up data |
//! | `0x4001_0000 .. 0x4002_0000` | x86_64: the identity page tables the hypervisor built for the guest ([`PAGE_TABLES_GPA`]); aarch64: unused (the guest runs with its MMU off) |
//! | `0x4002_0000 .. 0x4020_0000` | the stack, `sp`/`rsp` = [`STACK_TOP_GPA`] at entry, growing down to [`STACK_BOTTOM_GPA`] |
//! | `0x4020_0000 ..` | the program image ([`IMAGE_BASE_GPA`], the link address of `guest/sdk/link-*.ld`), then its `.bss`; the rest of RAM up to `RAM_BASE + ram_size` is the program's own (buffers, DMA targets) |
//!
//! At entry the first argument register (x86_64 `rdi`, aarch64 `x0`) holds
//! [`START_INFO_GPA`]. x86_64: 64-bit long mode, CPL 0, paging on with
//! the identity map (GPA = VA) of the partition's RAM and its devices'
//! BARs, `rsp` = [`STACK_TOP_GPA`], interrupts off. aarch64: EL1h, MMU
//! off with HCR_EL2.DC = 1 (data accesses to RAM are Normal write-back;
//! BARs are Device through stage 2), `sp` = [`STACK_TOP_GPA`], DAIF
//! masked.
//!
//! RAM ends below 2 GiB (`RAM_BASE + RAM_MAX_SIZE`), so it never overlaps
//! the 32-bit PCI windows where the hypervisor places BARs.

/// First GPA of a partition's RAM (1 GiB).
pub const RAM_BASE: u64 = 0x4000_0000;
/// RAM sizes are multiples of this (2 MiB: the hypervisor maps partition
/// RAM with 2 MiB leaves in the CPU's second stage).
pub const RAM_ALIGN: u64 = 0x20_0000;
/// The smallest RAM: the 2 MiB start-up area and 2 MiB for the program.
pub const RAM_MIN_SIZE: u64 = 2 * RAM_ALIGN;
/// The largest RAM (1 GiB): `RAM_BASE + RAM_MAX_SIZE` is 2 GiB.
pub const RAM_MAX_SIZE: u64 = 0x4000_0000;
/// GPA of the [`crate::StartInfo`] block (`RAM_BASE + 0x1000`), passed in
/// `rdi` / `x0` at entry.
pub const START_INFO_GPA: u64 = RAM_BASE + 0x1000;
/// First GPA of the x86_64 guest page tables the hypervisor builds
/// (`RAM_BASE + 0x1_0000`; CR3 points at the first page).
pub const PAGE_TABLES_GPA: u64 = RAM_BASE + 0x1_0000;
/// One past the last GPA of the guest page tables (`RAM_BASE + 0x2_0000`:
/// 16 pages).
pub const PAGE_TABLES_END_GPA: u64 = RAM_BASE + 0x2_0000;
/// The initial stack pointer (`RAM_BASE + 2 MiB`); the stack grows down.
pub const STACK_TOP_GPA: u64 = RAM_BASE + 0x20_0000;
/// The lowest GPA the stack may reach (the end of the page tables).
pub const STACK_BOTTOM_GPA: u64 = PAGE_TABLES_END_GPA;
/// Link and load address of the program image (`RAM_BASE + 2 MiB`).
pub const IMAGE_BASE_GPA: u64 = RAM_BASE + 0x20_0000;

// The regions are ordered and disjoint, checked when the crate compiles.
const _: () = {
    assert!(START_INFO_GPA >= RAM_BASE + 0x1000);
    assert!(START_INFO_GPA + size_of::<crate::StartInfo>() as u64 <= START_INFO_GPA + 0x1000);
    assert!(START_INFO_GPA + 0x1000 <= PAGE_TABLES_GPA);
    assert!(PAGE_TABLES_END_GPA == STACK_BOTTOM_GPA && STACK_BOTTOM_GPA < STACK_TOP_GPA);
    assert!(STACK_TOP_GPA <= IMAGE_BASE_GPA);
    assert!(IMAGE_BASE_GPA < RAM_BASE + RAM_MIN_SIZE);
    assert!(RAM_BASE + RAM_MAX_SIZE == 0x8000_0000);
    assert!(RAM_MIN_SIZE % RAM_ALIGN == 0 && RAM_MAX_SIZE % RAM_ALIGN == 0);
    assert!(STACK_TOP_GPA % 16 == 0);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_numbers_of_the_contract() {
        assert_eq!(
            [RAM_BASE, START_INFO_GPA, PAGE_TABLES_GPA, PAGE_TABLES_END_GPA, STACK_TOP_GPA, IMAGE_BASE_GPA],
            [0x4000_0000, 0x4000_1000, 0x4001_0000, 0x4002_0000, 0x4020_0000, 0x4020_0000]
        );
    }
}
