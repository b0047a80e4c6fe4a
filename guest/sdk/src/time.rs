//! Time for bounded waits.
//!
//! aarch64: the virtual counter (`CNTVCT_EL0`, at `CNTFRQ_EL0` Hz), which
//! EL1 may always read. x86_64: the TSC; its frequency is not
//! architecturally discoverable without CPUID leaves the hypervisor may
//! not offer, so [`ArchClock`] assumes [`ASSUMED_TSC_KHZ`] (4 GHz) unless
//! the program calls [`set_tsc_khz`]. Assuming a fast clock errs on the
//! long side: on a slower TSC a timeout lasts longer than asked, never
//! shorter. Host builds use `std::time::Instant`.

/// A monotonic time source (the same shape as the hypervisor's
/// `sluice_kernel::time::Clock`).
pub trait Clock {
    /// Microseconds since some fixed point.
    fn now_us(&self) -> u64;

    /// Called on every iteration of a busy wait.
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// The waited-for condition did not hold before the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut;

/// Poll `done` until it returns `Some`, or fail after `timeout_us`
/// (`done` is asked once more after the deadline).
///
/// # Errors
///
/// [`TimedOut`].
pub fn wait_for<C: Clock + ?Sized, T>(clock: &C, timeout_us: u64, mut done: impl FnMut() -> Option<T>) -> Result<T, TimedOut> {
    let start = clock.now_us();
    loop {
        if let Some(v) = done() {
            return Ok(v);
        }
        if clock.now_us().wrapping_sub(start) > timeout_us {
            return done().ok_or(TimedOut);
        }
        clock.relax();
    }
}

/// The CPU's own clock (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchClock;

impl Clock for ArchClock {
    fn now_us(&self) -> u64 {
        now_us()
    }
}

/// The TSC frequency [`ArchClock`] assumes on x86_64 unless told
/// otherwise, in kHz.
pub const ASSUMED_TSC_KHZ: u64 = 4_000_000;

#[cfg(target_arch = "x86_64")]
static TSC_KHZ: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(ASSUMED_TSC_KHZ);

/// Tell [`ArchClock`] the TSC's real frequency (x86_64; ignored
/// elsewhere). 0 is ignored.
pub fn set_tsc_khz(khz: u64) {
    #[cfg(target_arch = "x86_64")]
    if khz != 0 {
        TSC_KHZ.store(khz, core::sync::atomic::Ordering::Relaxed);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = khz;
}

/// Microseconds on the CPU's clock since some fixed point.
#[must_use]
pub fn now_us() -> u64 {
    arch_now_us()
}

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
fn arch_now_us() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` reads the time-stamp counter into edx:eax; it
    // touches no memory.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    let ticks = u64::from(hi) << 32 | u64::from(lo);
    let khz = TSC_KHZ.load(core::sync::atomic::Ordering::Relaxed).max(1);
    (u128::from(ticks) * 1000 / u128::from(khz)) as u64
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
fn arch_now_us() -> u64 {
    let (count, freq): (u64, u64);
    // SAFETY: reads of the virtual counter and its frequency, both
    // readable at EL1; they touch no memory.
    unsafe {
        core::arch::asm!("mrs {}, cntvct_el0", "mrs {}, cntfrq_el0", out(reg) count, out(reg) freq, options(nomem, nostack, preserves_flags));
    }
    (u128::from(count) * 1_000_000 / u128::from(freq.max(1))) as u64
}

#[cfg(not(target_os = "none"))]
fn arch_now_us() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

#[cfg(test)]
mod tests {
    use core::cell::Cell;

    use super::*;

    struct Ticks(Cell<u64>);
    impl Clock for Ticks {
        fn now_us(&self) -> u64 {
            self.0.get()
        }
        fn relax(&self) {
            self.0.set(self.0.get() + 10);
        }
    }

    #[test]
    fn waits_are_bounded() {
        let c = Ticks(Cell::new(0));
        assert_eq!(wait_for(&c, 100, || None::<()>), Err(TimedOut));
        assert!((100..=120).contains(&c.now_us()));
        let n = Cell::new(0);
        assert_eq!(
            wait_for(&c, 1000, || {
                n.set(n.get() + 1);
                (n.get() == 3).then_some(9)
            }),
            Ok(9)
        );
    }

    #[test]
    fn the_host_clock_moves_forward() {
        let a = ArchClock.now_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(ArchClock.now_us() >= a + 1000);
        set_tsc_khz(0);
        set_tsc_khz(3_000_000);
    }
}
