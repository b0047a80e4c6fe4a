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

    /// Number of ranges (each owner's kept whole).
    #[must_use]
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether there is no reserved range.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Ranges the list holds without reallocating.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.ranges.capacity()
    }

    /// Make room for `additional` more ranges (exactly).
    pub fn reserve_exact(&mut self, additional: usize) {
        self.ranges.reserve_exact(additional);
    }

    /// [`Self::merged`] written into `out`, in place: allocates nothing
    /// when `out` already has room for [`Self::len`] ranges.
    pub fn merge_into(&self, out: &mut Vec<Range>) {
        out.clear();
        out.extend(self.ranges.iter().map(|(r, _)| *r));
        out.sort_unstable();
        let mut n = 0;
        for i in 0..out.len() {
            let r = out[i];
            if n > 0 && r.start <= out[n - 1].last.saturating_add(1) {
                out[n - 1].last = out[n - 1].last.max(r.last);
            } else {
                out[n] = r;
                n += 1;
            }
        }
        out.truncate(n);
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
        complement(&self.merged())
    }
}

/// [`complement`] without allocating: the ranges one by one.
pub fn complement_iter(merged: &[Range]) -> impl Iterator<Item = Range> + '_ {
    let mut next = Some(0u64);
    let mut rest = merged.iter();
    core::iter::from_fn(move || {
        loop {
            let n = next?;
            match rest.next() {
                Some(r) => {
                    next = r.last.checked_add(1);
                    if r.start > n {
                        return Some(Range { start: n, last: r.start - 1 });
                    }
                }
                None => {
                    next = None;
                    return Some(Range { start: n, last: u64::MAX });
                }
            }
        }
    })
}

/// The complement within `[0, u64::MAX]` of sorted, merged ranges.
#[must_use]
pub fn complement(merged: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut next = Some(0u64);
    for r in merged {
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

/// The free IOVA space of an IOAS: the holes between its areas, kept as an
/// ordered map from each hole's start to its last IOVA. Areas are taken out
/// of it and given back; the allocator searches holes instead of areas, so
/// a packed run of areas costs nothing to jump over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holes {
    holes: BTreeMap<u64, u64>,
}

impl Default for Holes {
    fn default() -> Self {
        Self::new()
    }
}

impl Holes {
    /// The whole space `[0, u64::MAX]` free.
    #[must_use]
    pub fn new() -> Self {
        let mut holes = BTreeMap::new();
        holes.insert(0, u64::MAX);
        Self { holes }
    }

    /// The hole that contains `iova`, if it is free.
    #[must_use]
    pub fn hole_at(&self, iova: u64) -> Option<Range> {
        let (&start, &last) = self.holes.range(..=iova).next_back()?;
        (last >= iova).then_some(Range { start, last })
    }

    /// Whether all of `range` is free.
    #[must_use]
    pub fn is_free(&self, range: &Range) -> bool {
        self.hole_at(range.start).is_some_and(|h| h.contains(range))
    }

    /// Mark `range` used. It must be free (checked with [`Self::is_free`]);
    /// returns `false`, changing nothing, when it is not.
    pub fn take(&mut self, range: Range) -> bool {
        let Some(hole) = self.hole_at(range.start) else { return false };
        if !hole.contains(&range) {
            return false;
        }
        if hole.start < range.start {
            self.holes.insert(hole.start, range.start - 1);
        } else {
            self.holes.remove(&hole.start);
        }
        if range.last < hole.last {
            self.holes.insert(range.last + 1, hole.last);
        }
        true
    }

    /// Mark `range` free again, merging it with the holes on either side.
    /// It must be used (an area that was taken).
    ///
    /// The hole before it, if any, grows in place: only a range with no
    /// hole right before it inserts into the tree (and the count of holes
    /// never exceeds what it was before the call). Giving back a run of
    /// areas in ascending order therefore inserts at most once.
    pub fn give(&mut self, range: Range) {
        debug_assert!(self.holes.range(range.start..=range.last).next().is_none(), "giving back a free range");
        let next = range.last.checked_add(1).and_then(|n| self.holes.remove(&n));
        let last = next.unwrap_or(range.last);
        match range.start.checked_sub(1).and_then(|p| self.hole_at(p)) {
            Some(prev) => *self.holes.get_mut(&prev.start).expect("the hole just found") = last,
            None => {
                self.holes.insert(range.start, last);
            }
        }
    }

    /// Number of holes (for tests and statistics).
    #[must_use]
    pub fn count(&self) -> usize {
        self.holes.len()
    }

    /// First fit: the lowest `align`-aligned IOVA, never 0, where `length`
    /// bytes fit inside the allowed ranges (or [`AUTO_SPAN`] when `allowed`
    /// is empty) in a free hole without touching a reserved range.
    /// `reserved` must be merged and sorted ([`Reserved::merged`]).
    ///
    /// Cost: one step per hole (not per area) below the result that
    /// intersects the search span, plus a binary search of the reserved
    /// ranges per candidate.
    #[must_use]
    pub fn first_fit(&self, reserved: &[Range], allowed: &[Range], length: u64, align: u64) -> Option<u64> {
        debug_assert!(align.is_power_of_two());
        debug_assert!(reserved.windows(2).all(|w| w[0].last < w[1].start), "reserved must be merged");
        if length == 0 {
            return None;
        }
        let default = [AUTO_SPAN];
        let spans = if allowed.is_empty() { &default[..] } else { allowed };
        for span in spans {
            let Some(span) = Range::new(span.start.max(AUTO_SPAN.start), span.last.min(AUTO_SPAN.last)) else {
                continue;
            };
            let first = self.hole_at(span.start).map(|h| h.start).unwrap_or(span.start);
            for (&hs, &hl) in self.holes.range(first..=span.last) {
                let lo = hs.max(span.start);
                let hi = hl.min(span.last);
                if hi - lo < length - 1 {
                    continue;
                }
                if let Some(iova) = fit_between(reserved, lo, hi, length, align) {
                    return Some(iova);
                }
            }
        }
        None
    }
}

/// The lowest `align`-aligned start in `[lo, hi]`, never 0, where `length`
/// bytes fit without touching a reserved range.
fn fit_between(reserved: &[Range], lo: u64, hi: u64, length: u64, align: u64) -> Option<u64> {
    let mut cur = align_up(lo.max(1), align)?;
    loop {
        let want = Range::with_len(cur, length)?;
        if want.last > hi {
            return None;
        }
        let idx = reserved.partition_point(|r| r.start <= want.last);
        match idx.checked_sub(1).map(|i| reserved[i]).filter(|r| r.last >= want.start) {
            None => return Some(cur),
            Some(r) => cur = align_up(r.last.checked_add(1)?, align)?,
        }
    }
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
    fn take(holes: &mut Holes, reserved: &[Range], allowed: &[Range], len: u64, gpa: u64) -> Option<u64> {
        let iova = holes.first_fit(reserved, allowed, len, auto_alignment(len, gpa))?;
        assert!(holes.take(Range::with_len(iova, len).unwrap()));
        Some(iova)
    }

    #[test]
    fn first_fit_as_linux_chose() {
        // IOMMUFD-OBSERVED.md, 2 MiB-aligned buffers, edu attached.
        let res = edu_reserved().merged();
        let mut areas = Holes::new();
        assert_eq!(take(&mut areas, &res, &[], 0x1000, 0x20_0000), Some(0x1000));
        assert_eq!(take(&mut areas, &res, &[], 0x1000, 0x40_0000), Some(0x2000));
        assert_eq!(take(&mut areas, &res, &[], 0x1000, 0x60_0000), Some(0x3000));
        assert_eq!(take(&mut areas, &res, &[], 0x2000, 0x80_0000), Some(0x4000));
        assert_eq!(take(&mut areas, &res, &[], 0x20_0000, 0xa0_0000), Some(0x20_0000));
        // With an allowed list.
        let mut areas = Holes::new();
        let allowed = [r(0x10_0000, 0x1f_ffff)];
        assert_eq!(take(&mut areas, &res, &allowed, 0x1000, 0x20_0000), Some(0x10_0000));
        assert_eq!(take(&mut areas, &res, &allowed, 0x1000, 0x20_0000), Some(0x10_1000));
        assert_eq!(take(&mut areas, &res, &allowed, 0x20_0000, 0x20_0000), None);
    }

    #[test]
    fn never_zero_never_reserved_never_past_the_span() {
        let free = Holes::new();
        // IOVA 0 is never chosen, even when allowed.
        assert_eq!(free.first_fit(&[], &[r(0, 0xffff)], 0x1000, 0x1000), Some(0x1000));
        // Allowed ranges are clipped to the automatic span.
        assert_eq!(free.first_fit(&[], &[r(0, 0xfff)], 0x1000, 0x1000), None);
        assert_eq!(free.first_fit(&[], &[r(u64::MAX - 0xfff, u64::MAX)], 0x1000, 0x1000), None);
        // A length that cannot fit anywhere.
        assert_eq!(free.first_fit(&[], &[], u64::MAX - 0x1000, 0x1000), None);
        // Reserved ranges are jumped over, aligned.
        let res = [r(0x1000, 0x1_0fff)];
        assert_eq!(free.first_fit(&res, &[], 0x1000, 0x1000), Some(0x1_1000));
        assert_eq!(free.first_fit(&res, &[], 0x4000, 0x4000), Some(0x1_4000));
        // The span's top: the last page below U64_MAX - 4096.
        let top = [r(0xffff_ffff_ffff_0000, u64::MAX)];
        assert_eq!(free.first_fit(&[], &top, 0x1000, 0x1000), Some(0xffff_ffff_ffff_0000));
        let mut full = Holes::new();
        assert!(full.take(r(0xffff_ffff_ffff_0000, 0xffff_ffff_ffff_dfff)));
        assert_eq!(full.first_fit(&[], &top, 0x1000, 0x1000), Some(0xffff_ffff_ffff_e000));
        assert!(full.take(r(0xffff_ffff_ffff_e000, 0xffff_ffff_ffff_efff)));
        assert_eq!(full.first_fit(&[], &top, 0x1000, 0x1000), None);
        // An allowed range starting inside a hole.
        assert_eq!(full.first_fit(&[], &[r(0x1_2345_6000, 0x1_2345_8fff)], 0x2000, 0x2000), Some(0x1_2345_6000));
    }

    #[test]
    fn holes_split_and_merge() {
        let mut h = Holes::new();
        assert!(h.take(r(0x1000, 0x1fff)));
        assert!(h.take(r(0x3000, 0x3fff)));
        assert!(!h.take(r(0x1000, 0x1fff)), "taking a used range changes nothing");
        assert!(!h.take(r(0x2000, 0x3000)), "straddling a used range changes nothing");
        assert_eq!(h.count(), 3);
        assert!(h.is_free(&r(0x2000, 0x2fff)) && !h.is_free(&r(0x2000, 0x3000)));
        h.give(r(0x1000, 0x1fff));
        assert_eq!(h.count(), 2);
        h.give(r(0x3000, 0x3fff));
        assert_eq!(h, Holes::new());
        assert!(h.take(r(0, u64::MAX)));
        assert_eq!(h.count(), 0);
        assert_eq!(h.first_fit(&[], &[], 0x1000, 0x1000), None);
        h.give(r(0, u64::MAX));
        assert_eq!(h, Holes::new());
    }

    #[test]
    fn in_place_merge_and_complement_iterator_agree() {
        let mut res = edu_reserved();
        res.add(r(0xfee8_0000, 0xff00_0fff), Owner::Device(2));
        res.add(r(0, 0xfff), Owner::Device(2));
        res.add(r(0x1000, 0x1fff), Owner::Device(3));
        let mut out = Vec::with_capacity(res.len());
        let cap = out.capacity();
        res.merge_into(&mut out);
        assert_eq!(out, res.merged());
        assert_eq!(out.capacity(), cap, "no reallocation");
        assert_eq!(complement_iter(&out).collect::<Vec<_>>(), complement(&out));
        assert_eq!(complement_iter(&[]).collect::<Vec<_>>(), [r(0, u64::MAX)]);
        assert_eq!(complement_iter(&[r(0, u64::MAX)]).count(), 0);
        assert_eq!(complement_iter(&[r(5, u64::MAX)]).collect::<Vec<_>>(), [r(0, 4)]);
    }

    #[test]
    fn jumps_packed_areas_in_one_step() {
        // 10^5 packed areas from the bottom leave one hole above them.
        let mut free = Holes::new();
        for i in 1..=100_000u64 {
            assert!(free.take(r(i * 0x1000, i * 0x1000 + 0xfff)));
        }
        assert_eq!(free.count(), 2);
        assert_eq!(free.first_fit(&[], &[], 0x1000, 0x1000), Some(100_001 * 0x1000));
        // A hole in the middle is found first.
        free.give(r(0x5_0000, 0x5_0fff));
        assert_eq!(free.first_fit(&[], &[], 0x1000, 0x1000), Some(0x5_0000));
        assert_eq!(free.first_fit(&[], &[], 0x2000, 0x1000), Some(100_001 * 0x1000));
    }
}
