//! Time: the TSC, calibrated at boot against PIT channel 2.

use core::sync::atomic::{AtomicU64, Ordering};

use sluice_kernel::time::Clock;
use x86_64::instructions::port::Port;

/// The PIT's input clock.
const PIT_HZ: u64 = 1_193_182;
/// PIT ticks per calibration run (5 ms).
const PIT_TICKS: u16 = 5_966;
/// Calibration runs; the shortest wins (every disturbance, such as the
/// vCPU thread being descheduled, only lengthens a run).
const RUNS: usize = 5;
/// Used when calibration fails and CPUID does not say either.
const FALLBACK_HZ: u64 = 1_000_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(FALLBACK_HZ);

/// Read the time-stamp counter.
#[inline]
#[must_use]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear, so it works at
    // any privilege level.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// How the TSC frequency was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calibration {
    /// Measured against PIT channel 2.
    Pit,
    /// The PIT did not answer; CPUID leaf 0x15/0x16.
    Cpuid,
    /// Nothing worked: [`FALLBACK_HZ`] assumed.
    Assumed,
}

/// One run: TSC ticks while PIT channel 2 counts `PIT_TICKS` down in mode 0
/// with its gate (port 0x61 bit 0) opened; `None` if OUT2 never rises.
fn pit_run() -> Option<u64> {
    let mut ctrl = Port::<u8>::new(0x61);
    let mut cmd = Port::<u8>::new(0x43);
    let mut ch2 = Port::<u8>::new(0x42);
    // SAFETY: port 0x61 is the PC's system control port B; only the gate
    // (bit 0) and speaker (bit 1) bits are changed, and nothing else in the
    // hypervisor uses them.
    let saved = unsafe { ctrl.read() };
    // SAFETY: as above: gate closed, speaker off.
    unsafe { ctrl.write(saved & !0x03) };
    // SAFETY: PIT command port: channel 2, lobyte/hibyte, mode 0, binary.
    // Channel 2 only drives the speaker, which stays off.
    unsafe { cmd.write(0xB0) };
    // SAFETY: PIT channel 2 data port, count low byte.
    unsafe { ch2.write(PIT_TICKS as u8) };
    // SAFETY: PIT channel 2 data port, count high byte.
    unsafe { ch2.write((PIT_TICKS >> 8) as u8) };
    let start = rdtsc();
    // SAFETY: open the gate: channel 2 starts counting.
    unsafe { ctrl.write((saved & !0x02) | 0x01) };
    // Bounded: 10 ms of PIT time is far fewer reads than this.
    for _ in 0..50_000_000u32 {
        // SAFETY: reading port 0x61 has no side effect.
        if unsafe { ctrl.read() } & 0x20 != 0 {
            let end = rdtsc();
            // SAFETY: restore the gate and speaker bits as found.
            unsafe { ctrl.write(saved) };
            return Some(end - start);
        }
    }
    // SAFETY: as above.
    unsafe { ctrl.write(saved) };
    None
}

/// Measure the TSC frequency (shortest of five 5 ms PIT runs) and keep it
/// for [`Tsc`]. Returns the frequency in Hz and how it was found.
pub fn calibrate() -> (u64, Calibration) {
    let mut runs = [0u64; RUNS];
    let mut ok = true;
    for r in &mut runs {
        match pit_run() {
            Some(ticks) => *r = ticks,
            None => ok = false,
        }
    }
    log::debug!("tsc: PIT runs {runs:?} TSC ticks per {PIT_TICKS} PIT ticks");
    let (hz, how) = if ok {
        let shortest = runs.iter().copied().min().unwrap_or(0);
        (shortest * PIT_HZ / u64::from(PIT_TICKS), Calibration::Pit)
    } else if let Some(hz) = crate::cpu::cpuid_tsc_hz() {
        (hz, Calibration::Cpuid)
    } else {
        (FALLBACK_HZ, Calibration::Assumed)
    };
    let hz = hz.max(1_000_000);
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, how)
}

/// The monotonic clock for bounded waits: the calibrated TSC.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tsc;

impl Tsc {
    /// TSC ticks per second (after [`calibrate`]).
    #[must_use]
    pub fn hz() -> u64 {
        TSC_HZ.load(Ordering::Relaxed)
    }

    /// Busy-wait `us` microseconds.
    pub fn delay_us(us: u64) {
        let _ = sluice_kernel::time::wait_for(&Tsc, us, || None::<()>);
    }
}

impl Clock for Tsc {
    fn now_us(&self) -> u64 {
        (u128::from(rdtsc()) * 1_000_000 / u128::from(Self::hz())) as u64
    }
}
