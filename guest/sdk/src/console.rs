//! The partition's console: CONSOLE_WRITE behind `core::fmt::Write`, and
//! the [`print!`](crate::print) / [`println!`](crate::println) macros.
//!
//! The macros format into a 256-byte buffer on the stack and write it
//! with one hypercall when it is full and at the end, so a short line is
//! one CONSOLE_WRITE and lines of one partition never interleave with
//! themselves. Write errors are dropped (there is nowhere to report them).

use core::fmt;

use crate::hc::console_write;

/// The console, unbuffered: each `write_str` is one CONSOLE_WRITE (or
/// more for strings over 4096 bytes).
#[derive(Clone, Copy, Debug, Default)]
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        console_write(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

/// A buffered console writer: collects up to `N` bytes and writes them
/// with one CONSOLE_WRITE; flushes when full, on [`Self::flush`] and when
/// dropped.
#[derive(Debug)]
pub struct BufferedConsole<const N: usize> {
    buf: [u8; N],
    len: usize,
    failed: bool,
}

impl<const N: usize> Default for BufferedConsole<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> BufferedConsole<N> {
    /// An empty buffer.
    #[must_use]
    pub const fn new() -> Self {
        Self { buf: [0; N], len: 0, failed: false }
    }

    /// Write out what is buffered.
    ///
    /// # Errors
    ///
    /// `fmt::Error` if a CONSOLE_WRITE failed (now or since the last
    /// flush).
    pub fn flush(&mut self) -> fmt::Result {
        if self.len > 0 {
            let result = console_write(&self.buf[..self.len]);
            self.len = 0;
            self.failed |= result.is_err();
        }
        if core::mem::take(&mut self.failed) { Err(fmt::Error) } else { Ok(()) }
    }
}

impl<const N: usize> fmt::Write for BufferedConsole<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut bytes = s.as_bytes();
        while !bytes.is_empty() {
            if self.len == N {
                self.flush()?;
            }
            let n = bytes.len().min(N - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

impl<const N: usize> Drop for BufferedConsole<N> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>, newline: bool) {
    let mut out = BufferedConsole::<256>::new();
    let _ = fmt::Write::write_fmt(&mut out, args);
    if newline {
        let _ = fmt::Write::write_str(&mut out, "\n");
    }
    let _ = out.flush();
}

/// Print to the partition's console (CONSOLE_WRITE).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!($($arg)*), false)
    };
}

/// Print a line to the partition's console (CONSOLE_WRITE).
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::_print(::core::format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!($($arg)*), true)
    };
}
