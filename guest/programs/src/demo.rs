//! What the two demo partitions share: where B keeps its buffer, in B's
//! RAM and on B's device's bus, and the line format of the report.

use sluice_guest::println;

/// B's buffer: two pages at this offset into B's free RAM.
pub const BUFFER_OFFSET: u64 = 0x10_0000;
/// The device address (IOVA) B maps its buffer at. A's device aims here:
/// the same number on another partition's bus must reach nothing.
pub const B_BUFFER_IOVA: u64 = 0x0010_0000;
/// The byte B fills its buffer with.
pub const B_PATTERN: u8 = 0xb5;

/// Count of checks and failures, printed as one line per check.
#[derive(Debug, Default)]
pub struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    /// One check: prints `check: ok: what` or `check: FAIL: what`.
    pub fn check(&mut self, what: core::fmt::Arguments<'_>, ok: bool) -> bool {
        if ok {
            self.passed += 1;
            println!("check: ok: {what}");
        } else {
            self.failed += 1;
            println!("check: FAIL: {what}");
        }
        ok
    }

    /// Print the summary; the exit code: 0 only when every check held.
    pub fn finish(&self, who: &str) -> u32 {
        println!("summary: {who}: {} checks passed, {} failed", self.passed, self.failed);
        u32::from(self.failed != 0)
    }
}

/// The buffer's guest-physical address: [`BUFFER_OFFSET`] into the free
/// RAM after the program image (host builds, which only check that the
/// programs compile, have none).
pub fn buffer_base() -> u64 {
    #[cfg(target_os = "none")]
    let free = sluice_guest::free_ram().start;
    #[cfg(not(target_os = "none"))]
    let free = 0u64;
    free.next_multiple_of(0x1000) + BUFFER_OFFSET
}
