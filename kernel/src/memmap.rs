//! A partition's memory map: which guest-physical ranges are its RAM and
//! where they live in host-physical memory.
//!
//! Everything a partition hands the hypervisor by address (command structs,
//! arrays, MAP's `gpa`) is checked here: a byte that is not RAM of the
//! calling partition (unmapped, MMIO, another partition's) is `EFAULT`.

use alloc::vec::Vec;

use crate::{Gpa, Hpa};

/// One RAM range: `len` bytes at `gpa` in the partition, backed by the
/// host-physical range at `hpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// Start in the partition's address space.
    pub gpa: Gpa,
    /// Length in bytes (a multiple of 4 KiB).
    pub len: u64,
    /// Start in host-physical memory.
    pub hpa: Hpa,
}

/// A contiguous piece of a guest range, translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub gpa: Gpa,
    /// Host-physical start.
    pub hpa: Hpa,
    /// Length in bytes.
    pub len: u64,
}

/// Why a memory map cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemMapError {
    /// A range is empty, not 4 KiB aligned, or overflows.
    BadRange(Gpa),
    /// Two ranges overlap in the partition's address space.
    Overlap(Gpa),
}

/// The RAM of one partition, sorted by guest address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryMap {
    ranges: Vec<RamRange>,
}

const PAGE: u64 = 4096;

impl MemoryMap {
    /// A map of the given ranges (any order).
    pub fn new(mut ranges: Vec<RamRange>) -> Result<Self, MemMapError> {
        for r in &ranges {
            let aligned = r.gpa.is_aligned(PAGE) && r.hpa.is_aligned(PAGE) && r.len % PAGE == 0;
            if r.len == 0 || !aligned || r.gpa.checked_add(r.len).is_none() || r.hpa.checked_add(r.len).is_none() {
                return Err(MemMapError::BadRange(r.gpa));
            }
        }
        ranges.sort_unstable_by_key(|r| r.gpa);
        for w in ranges.windows(2) {
            if w[0].gpa.raw() + w[0].len > w[1].gpa.raw() {
                return Err(MemMapError::Overlap(w[1].gpa));
            }
        }
        Ok(Self { ranges })
    }

    /// The RAM ranges, sorted by guest address.
    #[must_use]
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// Total RAM bytes.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// The RAM range holding `gpa`.
    fn range_of(&self, gpa: u64) -> Option<&RamRange> {
        let i = self.ranges.partition_point(|r| r.gpa.raw() <= gpa).checked_sub(1)?;
        let r = &self.ranges[i];
        (gpa - r.gpa.raw() < r.len).then_some(r)
    }

    /// Host address of one guest byte, if it is RAM.
    #[must_use]
    pub fn translate(&self, gpa: Gpa) -> Option<Hpa> {
        let r = self.range_of(gpa.raw())?;
        Some(Hpa(r.hpa.raw() + (gpa.raw() - r.gpa.raw())))
    }

    /// Translate `[gpa, gpa + len)` into host-physical segments, one per RAM
    /// range it crosses (adjacent ranges may be backed far apart). `None`
    /// when any byte is not RAM or the range overflows; `len` 0 gives no
    /// segment.
    #[must_use]
    pub fn segments(&self, gpa: Gpa, len: u64) -> Option<Vec<Segment>> {
        let mut out = Vec::new();
        self.for_each_segment(gpa, len, |s| out.push(s))?;
        Some(out)
    }

    /// Like [`Self::segments`] without allocating: calls `f` for each
    /// segment in order, after checking that the whole range is RAM (so
    /// that `f` is never called for a range that fails).
    pub fn for_each_segment(&self, gpa: Gpa, len: u64, mut f: impl FnMut(Segment)) -> Option<()> {
        let end = gpa.raw().checked_add(len)?;
        // Fast path: the whole range inside one RAM range.
        if let Some(r) = self.range_of(gpa.raw()) {
            if end <= r.gpa.raw() + r.len {
                if len > 0 {
                    f(Segment { gpa, hpa: Hpa(r.hpa.raw() + (gpa.raw() - r.gpa.raw())), len });
                }
                return Some(());
            }
        }
        // Check first, then report: a failure has no side effect.
        let mut cur = gpa.raw();
        while cur < end {
            let r = self.range_of(cur)?;
            cur = r.gpa.raw() + r.len;
        }
        let mut cur = gpa.raw();
        while cur < end {
            let r = self.range_of(cur)?;
            let n = (r.gpa.raw() + r.len).min(end) - cur;
            f(Segment { gpa: Gpa(cur), hpa: Hpa(r.hpa.raw() + (cur - r.gpa.raw())), len: n });
            cur += n;
        }
        Some(())
    }

    /// Whether every byte of `[gpa, gpa + len)` is RAM.
    #[must_use]
    pub fn is_ram(&self, gpa: Gpa, len: u64) -> bool {
        self.for_each_segment(gpa, len, |_| {}).is_some()
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn map() -> MemoryMap {
        MemoryMap::new(vec![
            RamRange { gpa: Gpa(0x4000_0000), len: 0x10_0000, hpa: Hpa(0x2_0000_0000) },
            RamRange { gpa: Gpa(0), len: 0x2000, hpa: Hpa(0x1_0000_0000) },
            // Adjacent in the guest, far apart in the host.
            RamRange { gpa: Gpa(0x4010_0000), len: 0x1000, hpa: Hpa(0x9_0000_0000) },
        ])
        .unwrap()
    }

    #[test]
    fn rejects_bad_maps() {
        let bad = |gpa, len, hpa| MemoryMap::new(vec![RamRange { gpa: Gpa(gpa), len, hpa: Hpa(hpa) }]);
        assert_eq!(bad(0, 0, 0), Err(MemMapError::BadRange(Gpa(0))));
        assert_eq!(bad(0x800, 0x1000, 0), Err(MemMapError::BadRange(Gpa(0x800))));
        assert_eq!(bad(0, 0x1000, 0x800), Err(MemMapError::BadRange(Gpa(0))));
        assert_eq!(bad(!0xfff, 0x2000, 0), Err(MemMapError::BadRange(Gpa(!0xfff))));
        let overlap = MemoryMap::new(vec![
            RamRange { gpa: Gpa(0x1000), len: 0x2000, hpa: Hpa(0) },
            RamRange { gpa: Gpa(0x2000), len: 0x1000, hpa: Hpa(0x10_0000) },
        ]);
        assert_eq!(overlap, Err(MemMapError::Overlap(Gpa(0x2000))));
    }

    #[test]
    fn translates_bytes_and_ranges() {
        let m = map();
        assert_eq!(m.total(), 0x10_3000);
        assert_eq!(m.translate(Gpa(0x1fff)), Some(Hpa(0x1_0000_1fff)));
        assert_eq!(m.translate(Gpa(0x2000)), None);
        assert_eq!(m.translate(Gpa(0x4010_0fff)), Some(Hpa(0x9_0000_0fff)));
        assert_eq!(m.translate(Gpa(0x4010_1000)), None);
        // Across two guest-adjacent ranges: two segments.
        assert_eq!(
            m.segments(Gpa(0x400f_f000), 0x2000).unwrap(),
            vec![
                Segment { gpa: Gpa(0x400f_f000), hpa: Hpa(0x2_000f_f000), len: 0x1000 },
                Segment { gpa: Gpa(0x4010_0000), hpa: Hpa(0x9_0000_0000), len: 0x1000 },
            ]
        );
        assert_eq!(m.segments(Gpa(0x10), 0), Some(vec![]));
    }

    #[test]
    fn any_byte_outside_ram_fails_without_side_effects() {
        let m = map();
        assert!(m.is_ram(Gpa(0), 0x2000));
        assert!(!m.is_ram(Gpa(0), 0x2001));
        assert!(!m.is_ram(Gpa(0x1fff), 2));
        assert!(!m.is_ram(Gpa(0x3fff_ffff), 2));
        assert!(!m.is_ram(Gpa(0x4010_0000), 0x1001));
        assert!(!m.is_ram(Gpa(u64::MAX), 2));
        let mut called = 0;
        assert_eq!(m.for_each_segment(Gpa(0x400f_f000), 0x3000, |_| called += 1), None);
        assert_eq!(called, 0, "a failing range reports no segment");
    }
}
