//! The console: the PL011 the device tree names (`arm-pl011-uart` driver)
//! behind a spin lock, `print!` / `println!`, and a `log` logger on top.

use core::fmt::{self, Write};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use arm_pl011_uart::{DataBits, LineConfig, PL011Registers, Parity, StopBits, Uart, UniqueMmioPointer};
use spin::Mutex;

/// UARTCR (control register) offset, and its UARTEN bit.
const UARTCR: u64 = 0x30;
const UARTEN: u32 = 1;
/// Used when the device tree gives no clock for the UART (QEMU's apb-pclk).
pub const DEFAULT_UART_CLOCK_HZ: u32 = 24_000_000;

static CONSOLE: Mutex<Option<Uart<'static>>> = Mutex::new(None);
/// Base of the programmed PL011 (0: none), for the fault path.
static BASE: AtomicU64 = AtomicU64::new(0);

/// A PL011 at `base`, for writing only.
///
/// # Safety
/// `base` must be the register block of a PL011 that is identity-mapped as
/// device memory, and only the console may use it.
unsafe fn uart_at(base: u64) -> Option<Uart<'static>> {
    let regs = NonNull::new(base as *mut PL011Registers)?;
    // SAFETY: per this function's contract `base` is a mapped PL011 register
    // block used by the console alone (the lock or the fault path, which
    // never run interleaved on one CPU).
    Some(Uart::new(unsafe { UniqueMmioPointer::new(regs) }))
}

/// Use the PL011 at `base` (from the device tree). When firmware already
/// enabled it (UARTCR.UARTEN), its line settings are kept; otherwise it is
/// programmed 115200 8N1 from `clock_hz`. Output before this is dropped.
///
/// # Safety
/// `base` must be a PL011 register block inside the identity map, used by
/// nothing but the console from now on.
pub unsafe fn init(base: u64, clock_hz: u32) {
    // SAFETY: per the contract, a mapped PL011 register block.
    let Some(mut uart) = (unsafe { uart_at(base) }) else { return };
    // SAFETY: UARTCR lies inside that block; reading it has no side effect.
    let cr = unsafe { core::ptr::read_volatile((base + UARTCR) as *const u32) };
    if cr & UARTEN == 0 {
        let config = LineConfig { data_bits: DataBits::Bits8, parity: Parity::None, stop_bits: StopBits::One };
        if uart.enable(config, 115_200, clock_hz).is_err() {
            return;
        }
    }
    BASE.store(base, Ordering::Relaxed);
    *CONSOLE.lock() = Some(uart);
}

/// Writes `\n` as `\r\n`.
struct Crlf<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Crlf<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (i, line) in s.split('\n').enumerate() {
            if i != 0 {
                self.0.write_str("\r\n")?;
            }
            self.0.write_str(line)?;
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = Crlf(uart).write_fmt(args);
    }
}

/// Print on the fault path: does not wait for the console lock (the faulting
/// code may hold it) and writes straight to the already programmed PL011.
pub fn emergency_print(args: fmt::Arguments<'_>) {
    if let Some(mut guard) = CONSOLE.try_lock()
        && let Some(uart) = guard.as_mut()
    {
        let _ = Crlf(uart).write_fmt(args);
        return;
    }
    let base = BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: `base` is the PL011 `init` programmed; the lock holder, if any,
    // is the code that just faulted and will not run again, so sharing the
    // registers cannot interleave with it.
    if let Some(mut uart) = unsafe { uart_at(base) } {
        let _ = Crlf(&mut uart).write_fmt(args);
    }
}

/// `print!` to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// `println!` to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Print on the fault path (see [`emergency_print`]).
#[macro_export]
macro_rules! eprintln {
    () => { $crate::console::emergency_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::emergency_print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            _print(format_args!("[{:<5} {}] {}\n", record.level(), record.target(), record.args()));
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Install the `log` logger at `level`.
pub fn init_logger(level: log::LevelFilter) {
    // A second call keeps the first logger; only the level changes.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
