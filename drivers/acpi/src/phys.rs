//! Reading physical memory: the one thing the parser needs from its caller.

use core::fmt;

/// A read of physical memory failed: the range is not backed (not mapped by
/// the caller, beyond the end of a fake memory, or overflowing the address
/// space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysReadError {
    /// First physical address of the failed read.
    pub pa: u64,
    /// Length of the failed read in bytes.
    pub len: usize,
}

impl fmt::Display for PhysReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot read {} bytes of physical memory at {:#x}",
            self.len, self.pa
        )
    }
}

impl core::error::Error for PhysReadError {}

/// Copying, bounds-checked access to physical memory.
///
/// The boot code implements it over its identity map (firmware tables live
/// in RAM the firmware reported as ACPI reclaim/NVS, which the map must
/// cover); host tests implement it over a `Vec` of fake memory. The parser
/// never holds a reference into physical memory: every table is copied into
/// an owned buffer first, so a table that changes under it, or lies about its
/// length, can only produce a typed error.
pub trait PhysRead {
    /// Fill `buf` with the bytes at physical addresses `pa..pa + buf.len()`,
    /// or fail without a partial result the caller relies on.
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), PhysReadError>;
}

impl<T: PhysRead + ?Sized> PhysRead for &T {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        (**self).read(pa, buf)
    }
}

/// Physical memory backed by one byte slice that starts at physical address
/// `base`. Reads outside `base..base + bytes.len()` fail.
///
/// Handy for host tests (here and in other crates) and for a caller that
/// already holds the firmware's table area as a slice.
#[derive(Clone, Copy, Debug)]
pub struct PhysSlice<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl<'a> PhysSlice<'a> {
    /// Memory whose byte `i` is `bytes[i]` at physical address `base + i`.
    pub const fn new(base: u64, bytes: &'a [u8]) -> Self {
        Self { base, bytes }
    }
}

impl PhysRead for PhysSlice<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        let err = PhysReadError { pa, len: buf.len() };
        let start = pa.checked_sub(self.base).ok_or(err)?;
        let start = usize::try_from(start).map_err(|_| err)?;
        let end = start.checked_add(buf.len()).ok_or(err)?;
        let src = self.bytes.get(start..end).ok_or(err)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phys_slice_reads_inside_and_refuses_outside() {
        let bytes = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let mem = PhysSlice::new(0x1000, &bytes);
        let mut buf = [0u8; 3];
        mem.read(0x1002, &mut buf).unwrap();
        assert_eq!(buf, [3, 4, 5]);
        let mut tail = [0u8; 2];
        mem.read(0x1006, &mut tail).unwrap();
        assert_eq!(tail, [7, 8]);
        assert_eq!(
            mem.read(0x1007, &mut buf),
            Err(PhysReadError { pa: 0x1007, len: 3 })
        );
        assert_eq!(
            mem.read(0xfff, &mut buf),
            Err(PhysReadError { pa: 0xfff, len: 3 })
        );
        assert!(mem.read(u64::MAX, &mut buf).is_err());
        // Through a reference, as the parser takes it.
        let r: &dyn PhysRead = &mem;
        let mut one = [0u8; 1];
        (&r).read(0x1000, &mut one).unwrap();
        assert_eq!(one, [1]);
    }
}
