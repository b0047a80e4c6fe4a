//! IOVA-space arithmetic of an IOAS, as iommufd's io_pagetable does it:
//! reserved ranges with their owners, the allowed list, the ranges
//! IOVA_RANGES reports, and the automatic IOVA allocator of ABI.md
//! ("Automatic IOVA allocation").
//!
//! Ranges are inclusive (`last`), as in the ABI, so that `[x, u64::MAX]`
//! needs no special case.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// An inclusive IOVA range, `start <= last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub last: u64,
}

impl Range {
    /// `[start, last]`; `None` when `start > last`.
    #[must_use]
    pub const fn new(start: u64, last: u64) -> Option<Self> {
        if start <= last { Some(Self { start, last }) } else { None }
    }

    /// `[start, start + len)`; `None` when `len` is 0 or the end overflows.
    #[must_use]
    pub const fn with_len(start: u64, len: u64) -> Option<Self> {
        if len == 0 {
            return None;
        }
        match start.checked_add(len - 1) {
            Some(last) => Some(Self { start, last }),
            None => None,
        }
    }

    /// Whether the two ranges share an IOVA.
    #[must_use]
    pub const fn intersects(&self, other: &Self) -> bool {
        self.start <= other.last && other.start <= self.last
    }

    /// Whether `other` lies inside this range.
    #[must_use]
    pub const fn contains(&self, other: &Self) -> bool {
        self.start <= other.start && other.last <= self.last
    }
}

/// Who put a reserved range there; attach and detach add and remove a
/// device's ranges by owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    /// A device's regions, DMA limit and its IOMMU's aperture, by device id.
    Device(u32),
}

/// The reserved ranges of an IOAS, each with its owner. Several owners may
/// reserve overlapping ranges; each is kept whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    ranges: Vec<(Range, Owner)>,
}

impl Reserved {
    /// No reserved range.
    #[must_use]
    pub const fn new() -> Self {
        Self { ranges: Vec::new() }
    }

    /// Add `range` for `owner`.
    pub fn add(&mut self, range: Range, owner: Owner) {
        self.ranges.push((range, owner));
    }

    /// Remove every range of `owner`.
    pub fn remove_owner(&mut self, owner: Owner) {
        self.ranges.retain(|(_, o)| *o != owner);
    }

    /// Whether any reserved range intersects `range`.
    #[must_use]
    pub fn intersects(&self, range: &Range) -> bool {
        self.ranges.iter().any(|(r, _)| r.intersects(range))
    }

    /// The union of the reserved ranges, sorted, merged where they touch.
    #[must_use]
    pub fn merged(&self) -> Vec<Range> {
        let mut v: Vec<Range> = self.ranges.iter().map(|(r, _)| *r).collect();
        v.sort_unstable();
        let mut out: Vec<Range> = Vec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(prev) if r.start <= prev.last.saturating_add(1) => prev.last = prev.last.max(r.last),
                _ => out.push(r),
            }
        }
        out
    }

    /// What IOVA_RANGES reports: the complement of the reserved ranges
    /// within `[0, u64::MAX]`.
    #[must_use]
    pub fn usable(&self) -> Vec<Range> {
        let mut out = Vec::new();
        let mut next = Some(0u64);
        for r in self.merged() {
            if let Some(n) = next {
                if r.start > n {
                    out.push(Range { start: n, last: r.start - 1 });
                }
            }
            next = r.last.checked_add(1);
        }
        if let Some(n) = next {
            out.push(Range { start: n, last: u64::MAX });
        }
        out
    }
}

/// The span the automatic allocator searches when no allowed list is set,
/// and that every allowed range is first clipped to.
pub const AUTO_SPAN: Range = Range { start: 4096, last: u64::MAX - 4096 };

/// The alignment the automatic allocator uses for a map of `length` bytes
/// of partition memory starting at `gpa` (ABI.md): the smallest of the
/// length rounded up to a power of two, the alignment of `gpa` (when it is
/// not 0) and 1 GiB.
#[must_use]
pub fn auto_alignment(length: u64, gpa: u64) -> u64 {
    let mut a = length.checked_next_power_of_two().unwrap_or(1 << 63);
    if gpa != 0 {
        a = a.min(1 << gpa.trailing_zeros());
    }
    a.min(1 << 30)
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// First fit: the lowest `align`-aligned IOVA, never 0, where `length`
/// bytes fit inside the allowed ranges (or [`AUTO_SPAN`] when `allowed` is
/// empty) without touching a reserved range or an area. `areas` maps each
/// area's start to its last IOVA.
///
/// Cost: one B-tree search per area or reserved range jumped over; areas
/// and reserved ranges above the result are never looked at.
#[must_use]
pub fn allocate<V>(
    areas: &BTreeMap<u64, V>,
    area_last: impl Fn(&V) -> u64,
    reserved: &[Range],
    allowed: &[Range],
    length: u64,
    align: u64,
) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    debug_assert!(reserved.windows(2).all(|w| w[0].last < w[1].start), "reserved must be merged");
    let default = [AUTO_SPAN];
    let spans = if allowed.is_empty() { &default[..] } else { allowed };
    for span in spans {
        let Some(span) = Range::new(span.start.max(AUTO_SPAN.start), span.last.min(AUTO_SPAN.last)) else {
            continue;
        };
        let Some(mut cur) = align_up(span.start.max(1), align) else { continue };
        while let Some(want) = Range::with_len(cur, length) {
            if want.last > span.last {
                break;
            }
            // The blocker with the greatest start not after the end of the
            // wanted range: if anything intersects, this one does, and the
            // next candidate starts past it.
            let area = areas.range(..=want.last).next_back().map(|(s, v)| Range { start: *s, last: area_last(v) });
            let resv_idx = reserved.partition_point(|r| r.start <= want.last);
            let resv = resv_idx.checked_sub(1).map(|i| reserved[i]);
            let blocker = [area, resv].into_iter().flatten().filter(|b| b.last >= want.start).map(|b| b.last).max();
            match blocker {
                None => return Some(cur),
                Some(last) => match last.checked_add(1).and_then(|n| align_up(n, align)) {
                    Some(n) => cur = n,
                    None => break,
                },
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, last: u64) -> Range {
        Range::new(start, last).unwrap()
    }

    /// What an attached edu device behind a 48-bit VT-d reserves (ABI.md,
    /// IOMMUFD-OBSERVED.md): the MSI window and the aperture.
    fn edu_reserved() -> Reserved {
        let mut res = Reserved::new();
        res.add(r(0xfee0_0000, 0xfeef_ffff), Owner::Device(1));
        res.add(r(1 << 48, u64::MAX), Owner::Device(1));
        res
    }

    #[test]
    fn ranges() {
        assert_eq!(Range::with_len(0x1000, 0), None);
        assert_eq!(Range::with_len(u64::MAX, 2), None);
        assert_eq!(Range::with_len(u64::MAX, 1), Some(r(u64::MAX, u64::MAX)));
        assert!(r(0, 10).intersects(&r(10, 20)));
        assert!(!r(0, 9).intersects(&r(10, 20)));
        assert!(r(0, 20).contains(&r(10, 20)));
        assert!(!r(0, 19).contains(&r(10, 20)));
    }

    #[test]
    fn usable_is_the_complement() {
        assert_eq!(Reserved::new().usable(), [r(0, u64::MAX)]);
        // IOMMUFD-OBSERVED.md: after attaching an edu.
        assert_eq!(edu_reserved().usable(), [r(0, 0xfedf_ffff), r(0xfef0_0000, 0xffff_ffff_ffff)]);
        // Overlapping regions of two owners: each kept, the union reported.
        let mut res = edu_reserved();
        res.add(r(0xfee8_0000, 0xff00_0fff), Owner::Device(2));
        res.add(r(0x1000_0000, u64::MAX), Owner::Device(2)); // 28-bit DMA limit
        assert_eq!(res.usable(), [r(0, 0xfff_ffff)]);
        res.remove_owner(Owner::Device(2));
        assert_eq!(res, edu_reserved());
        // Reserved from 0.
        let mut res = Reserved::new();
        res.add(r(0, 0xfff), Owner::Device(3));
        assert_eq!(res.usable(), [r(0x1000, u64::MAX)]);
    }

    #[test]
    fn alignment_rule() {
        assert_eq!(auto_alignment(0x1000, 0x20_0000), 0x1000);
        assert_eq!(auto_alignment(0x3000, 0x20_0000), 0x4000);
        assert_eq!(auto_alignment(0x20_0000, 0x20_0000), 0x20_0000);
        assert_eq!(auto_alignment(0x20_0000, 0x1000), 0x1000);
        assert_eq!(auto_alignment(0x20_0000, 0), 0x20_0000);
        assert_eq!(auto_alignment(1 << 40, 0), 1 << 30);
        assert_eq!(auto_alignment(u64::MAX, 0), 1 << 30);
    }

    /// Allocate and record an area, as MAP does.
    fn take(areas: &mut BTreeMap<u64, u64>, reserved: &[Range], allowed: &[Range], len: u64, gpa: u64) -> Option<u64> {
        let iova = allocate(areas, |l| *l, reserved, allowed, len, auto_alignment(len, gpa))?;
        areas.insert(iova, iova + len - 1);
        Some(iova)
    }

    #[test]
    fn first_fit_as_linux_chose() {
        // IOMMUFD-OBSERVED.md, 2 MiB-aligned buffers, edu attached.
        let res = edu_reserved().merged();
        let mut areas = BTreeMap::new();
        assert_eq!(take(&mut areas, &res, &[], 0x1000, 0x20_0000), Some(0x1000));
        assert_eq!(take(&mut areas, &res, &[], 0x1000, 0x40_0000), Some(0x2000));
        assert_eq!(take(&mut areas, &res, &[], 0x1000, 0x60_0000), Some(0x3000));
        assert_eq!(take(&mut areas, &res, &[], 0x2000, 0x80_0000), Some(0x4000));
        assert_eq!(take(&mut areas, &res, &[], 0x20_0000, 0xa0_0000), Some(0x20_0000));
        // With an allowed list.
        let mut areas = BTreeMap::new();
        let allowed = [r(0x10_0000, 0x1f_ffff)];
        assert_eq!(take(&mut areas, &res, &allowed, 0x1000, 0x20_0000), Some(0x10_0000));
        assert_eq!(take(&mut areas, &res, &allowed, 0x1000, 0x20_0000), Some(0x10_1000));
        assert_eq!(take(&mut areas, &res, &allowed, 0x20_0000, 0x20_0000), None);
    }

    #[test]
    fn never_zero_never_reserved_never_past_the_span() {
        let areas: BTreeMap<u64, u64> = BTreeMap::new();
        // IOVA 0 is never chosen, even when allowed.
        assert_eq!(allocate(&areas, |l| *l, &[], &[r(0, 0xffff)], 0x1000, 0x1000), Some(0x1000));
        // Allowed ranges are clipped to the automatic span.
        assert_eq!(allocate(&areas, |l| *l, &[], &[r(0, 0xfff)], 0x1000, 0x1000), None);
        assert_eq!(allocate(&areas, |l| *l, &[], &[r(u64::MAX - 0xfff, u64::MAX)], 0x1000, 0x1000), None);
        // A length that cannot fit anywhere.
        assert_eq!(allocate(&areas, |l| *l, &[], &[], u64::MAX - 0x1000, 0x1000), None);
        // Reserved ranges are jumped over, aligned.
        let res = [r(0x1000, 0x1_0fff)];
        assert_eq!(allocate(&areas, |l| *l, &res, &[], 0x1000, 0x1000), Some(0x1_1000));
        assert_eq!(allocate(&areas, |l| *l, &res, &[], 0x4000, 0x4000), Some(0x1_4000));
        // The span's top: the last page below U64_MAX - 4096.
        let top = [r(0xffff_ffff_ffff_0000, u64::MAX)];
        assert_eq!(allocate(&areas, |l| *l, &[], &top, 0x1000, 0x1000), Some(0xffff_ffff_ffff_0000));
        let mut full = BTreeMap::new();
        full.insert(0xffff_ffff_ffff_0000u64, 0xffff_ffff_ffff_dfffu64);
        assert_eq!(allocate(&full, |l| *l, &[], &top, 0x1000, 0x1000), Some(0xffff_ffff_ffff_e000));
        full.insert(0xffff_ffff_ffff_e000, 0xffff_ffff_ffff_efff);
        assert_eq!(allocate(&full, |l| *l, &[], &top, 0x1000, 0x1000), None);
    }

    #[test]
    fn walks_past_packed_areas() {
        // 10^5 packed areas from the bottom: one jump (one B-tree search)
        // per area in the way. (A max-gap index would make this
        // logarithmic; see the note on issue #3.)
        let mut areas = BTreeMap::new();
        for i in 1..=100_000u64 {
            areas.insert(i * 0x1000, i * 0x1000 + 0xfff);
        }
        assert_eq!(allocate(&areas, |l| *l, &[], &[], 0x1000, 0x1000), Some(100_001 * 0x1000));
    }
}
