//! The console: a 16550 UART at COM1 behind a spin lock, `print!` /
//! `println!`, and a `log` logger on top.

use core::fmt::{self, Write};

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{BaudRate, Config, Uart16550, Uart16550Tty};

/// I/O port base of COM1.
pub const COM1: u16 = 0x3F8;

static CONSOLE: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);

/// Program COM1 (115200 8N1, FIFO on). Output before this is dropped.
pub fn init() {
    // SAFETY: COM1's eight ports belong to the console and nothing else in
    // the hypervisor touches them.
    let Ok(mut uart) = (unsafe { Uart16550::new_port(COM1) }) else {
        return;
    };
    let config = Config { baud_rate: BaudRate::Baud115200, ..Config::DEFAULT };
    // No loopback test: some real ports fail it and still transmit.
    if uart.init(config).is_ok() {
        *CONSOLE.lock() = Some(Uart16550Tty::from_inner(uart));
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    if let Some(tty) = CONSOLE.lock().as_mut() {
        let _ = tty.write_fmt(args);
    }
}

/// Print on the fault path: does not wait for the console lock (the faulting
/// code may hold it) and writes straight to the already programmed COM1.
pub fn emergency_print(args: fmt::Arguments<'_>) {
    if let Some(mut guard) = CONSOLE.try_lock()
        && let Some(tty) = guard.as_mut()
    {
        let _ = tty.write_fmt(args);
        return;
    }
    // SAFETY: COM1 was programmed by `init` (or not at all, in which case
    // the bytes are lost); the lock holder, if any, is the code that just
    // faulted and will not run again, so sharing the ports cannot interleave
    // with it.
    if let Ok(uart) = unsafe { Uart16550::new_port(COM1) } {
        let _ = Uart16550Tty::from_inner(uart).write_fmt(args);
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
