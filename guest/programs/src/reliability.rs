//! What the reliability programs (reset-dma, quarantine, storm, victim)
//! share: the storm's shape, and page access to the program's free RAM.

/// Rounds before the storm, in which the storm partition starts no DMA:
/// the victim's baseline.
pub const BASELINE_ROUNDS: u32 = 25;
/// Rounds of the storm: in each, the next of the storm partition's
/// devices (round robin) starts one 4 KiB DMA to an IOVA nothing maps
/// (QEMU's edu faults once per 4 bytes: 1024 faults per DMA, 276,480 in
/// all). One DMA per round, so the bursts arrive apart: an IOMMU keeps
/// few records (QEMU's VT-d one, its SMMUv3 event queue 128) until the
/// hypervisor drains them, and simultaneous bursts would be one record.
pub const STORM_ROUNDS: u32 = 270;
/// Where the storm's DMAs aim: page `round` above this.
pub const STORM_IOVA: u64 = 0x0100_0000;
/// How long the victim calls the hypervisor in each round. edu takes
/// 100 ms per DMA, so with three devices each is idle again when its turn
/// comes, and each burst lands while the victim runs.
pub const VICTIM_ROUND_US: u64 = 40_000;

/// Page `n` of the free RAM from `base` on, as bytes.
pub fn page(base: u64, n: u64) -> &'static mut [u8] {
    // SAFETY: pages of this partition's own free RAM (identity mapped),
    // past its image and stack, used by nothing else in the program.
    unsafe { core::slice::from_raw_parts_mut((base + n * 4096) as *mut u8, 4096) }
}
