//! Time: the Arm generic timer's physical counter (CNTPCT_EL0) at the
//! frequency firmware/QEMU put in CNTFRQ_EL0.

use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{CNTFRQ_EL0, CNTPCT_EL0, Readable};
use sluice_kernel::time::Clock;

/// Used when CNTFRQ_EL0 reads zero (firmware did not set it).
pub const FALLBACK_HZ: u64 = 62_500_000;

static HZ: AtomicU64 = AtomicU64::new(FALLBACK_HZ);

/// The physical counter (ordered after earlier instructions).
#[inline]
#[must_use]
pub fn counter() -> u64 {
    barrier::isb(barrier::SY);
    CNTPCT_EL0.get()
}

/// How the counter frequency was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calibration {
    /// CNTFRQ_EL0.
    Cntfrq,
    /// CNTFRQ_EL0 was zero: [`FALLBACK_HZ`] assumed.
    Assumed,
}

/// Read the counter frequency and keep it for [`GenericTimer`]. Returns the
/// frequency in Hz and where it came from.
pub fn calibrate() -> (u64, Calibration) {
    let frq = CNTFRQ_EL0.get() & 0xFFFF_FFFF;
    let (hz, how) = if frq == 0 { (FALLBACK_HZ, Calibration::Assumed) } else { (frq, Calibration::Cntfrq) };
    HZ.store(hz, Ordering::Relaxed);
    (hz, how)
}

/// The monotonic clock for bounded waits: the generic timer's counter.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenericTimer;

impl GenericTimer {
    /// Counter ticks per second (after [`calibrate`]).
    #[must_use]
    pub fn hz() -> u64 {
        HZ.load(Ordering::Relaxed)
    }

    /// Busy-wait `us` microseconds.
    pub fn delay_us(us: u64) {
        let _ = sluice_kernel::time::wait_for(&GenericTimer, us, || None::<()>);
    }
}

impl Clock for GenericTimer {
    fn now_us(&self) -> u64 {
        (u128::from(counter()) * 1_000_000 / u128::from(Self::hz())) as u64
    }
}
