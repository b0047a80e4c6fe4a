//! Bounded waits.
//!
//! Every wait for hardware (an IOMMU register, a command queue, a DMA
//! engine) is bounded by a [`Deadline`] on a [`Clock`] the platform
//! provides: the TSC or the Arm generic timer on the target, a simulated
//! clock in host tests. A host test's clock may also advance a fake device
//! in [`Clock::relax`], so drivers are tested against fakes that answer
//! only while someone is waiting, as hardware does.

/// A monotonic time source.
pub trait Clock {
    /// Microseconds since some fixed point.
    fn now_us(&self) -> u64;

    /// Called on every iteration of a busy wait (a pause hint on the
    /// target; fakes step their device model here).
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// The waited-for condition did not hold before the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut;

/// Poll `done` until it returns `Some`, or fail after `timeout_us`.
///
/// `done` is checked once more after the deadline passed, so a slow clock
/// never turns a finished operation into a timeout.
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

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

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
    fn succeeds_when_condition_turns_true() {
        let c = Ticks(Cell::new(0));
        let n = Cell::new(0);
        let r = wait_for(&c, 1000, || {
            n.set(n.get() + 1);
            (n.get() == 5).then_some(7)
        });
        assert_eq!(r, Ok(7));
        assert_eq!(c.now_us(), 40);
    }

    #[test]
    fn times_out_after_the_deadline() {
        let c = Ticks(Cell::new(0));
        let r: Result<(), _> = wait_for(&c, 100, || None);
        assert_eq!(r, Err(TimedOut));
        assert!(c.now_us() >= 100 && c.now_us() <= 120, "stopped at {}", c.now_us());
    }
}
