//! One transcript line, formatted without allocating.

use core::fmt;

/// Longest line: the hypervisor prints partition console lines of at most
/// 200 bytes (`boot/common/src/partition.rs`, `LINE_MAX`) after a prefix,
/// so transcript lines stay shorter.
pub const LINE_CAP: usize = 190;

/// A line being built; text past [`LINE_CAP`] is dropped and remembered.
#[derive(Clone)]
pub struct Line {
    buf: [u8; LINE_CAP],
    len: usize,
    overflow: bool,
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Line").field(&self.as_str()).finish()
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    /// An empty line.
    #[must_use]
    pub const fn new() -> Self {
        Self { buf: [0; LINE_CAP], len: 0, overflow: false }
    }

    /// The text so far.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are appended, and a cut falls back to a
        // character boundary, so this never fails.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }

    /// Whether text was dropped.
    #[must_use]
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Append formatted text.
    pub fn push(&mut self, args: fmt::Arguments<'_>) {
        let _ = fmt::write(self, args);
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE_CAP - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.overflow = true;
        }
        Ok(())
    }
}

/// Format `args` into a fresh [`Line`].
#[must_use]
pub fn line(args: fmt::Arguments<'_>) -> Line {
    let mut l = Line::new();
    l.push(args);
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_capped_and_say_so() {
        let l = line(format_args!("case {} = {}", "x", 1));
        assert_eq!(l.as_str(), "case x = 1");
        assert!(!l.overflowed());
        let mut l = Line::new();
        for _ in 0..100 {
            l.push(format_args!("ééé"));
        }
        assert!(l.overflowed());
        assert!(l.as_str().len() <= LINE_CAP);
        assert!(l.as_str().chars().all(|c| c == 'é'));
    }
}
