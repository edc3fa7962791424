//! Address ranges of a process and the set operations the tracker needs on sorted lists of them.

use std::fmt;

/// The size of a page, as the kernel reports dirty memory (x86_64 and most others: 4 KiB).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// `[start, start + len)` in a process's address space. Always page aligned when it comes
/// from the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageRange {
    pub start: u64,
    pub len: u64,
}

impl PageRange {
    pub fn new(start: u64, len: u64) -> PageRange {
        PageRange { start, len }
    }

    /// `[start, end)`; empty when `end <= start`.
    pub fn from_bounds(start: u64, end: u64) -> PageRange {
        PageRange { start, len: end.saturating_sub(start) }
    }

    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end()
    }

    /// The overlap of two ranges, if any.
    pub fn intersect(&self, other: &PageRange) -> Option<PageRange> {
        let r = PageRange::from_bounds(self.start.max(other.start), self.end().min(other.end()));
        (!r.is_empty()).then_some(r)
    }
}

impl fmt::Display for PageRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.end())
    }
}

/// Sorts and merges overlapping or touching ranges; drops empty ones.
pub fn merge(mut ranges: Vec<PageRange>) -> Vec<PageRange> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_unstable();
    let mut out: Vec<PageRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end() => {
                let end = last.end().max(r.end());
                last.len = end - last.start;
            }
            _ => out.push(r),
        }
    }
    out
}

/// `a ∩ b` for two merged (sorted, disjoint) lists.
pub fn intersect(a: &[PageRange], b: &[PageRange]) -> Vec<PageRange> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        if let Some(r) = a[i].intersect(&b[j]) {
            out.push(r);
        }
        if a[i].end() <= b[j].end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `a \ b` for two merged (sorted, disjoint) lists.
pub fn subtract(a: &[PageRange], b: &[PageRange]) -> Vec<PageRange> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        let mut cur = r.start;
        while j < b.len() && b[j].end() <= cur {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].start < r.end() {
            if b[k].start > cur {
                out.push(PageRange::from_bounds(cur, b[k].start));
            }
            cur = cur.max(b[k].end());
            k += 1;
        }
        if cur < r.end() {
            out.push(PageRange::from_bounds(cur, r.end()));
        }
    }
    out
}

/// Total bytes of a list of ranges.
pub fn total_len(ranges: &[PageRange]) -> u64 {
    ranges.iter().map(|r| r.len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> PageRange {
        PageRange::from_bounds(start, end)
    }

    #[test]
    fn merge_joins_overlapping_and_touching_and_drops_empty() {
        let m = merge(vec![r(30, 40), r(0, 10), r(10, 20), r(35, 50), r(60, 60), r(5, 8)]);
        assert_eq!(m, vec![r(0, 20), r(30, 50)]);
        assert_eq!(merge(vec![]), vec![]);
    }

    #[test]
    fn intersect_of_lists() {
        let a = vec![r(0, 10), r(20, 30), r(40, 50)];
        let b = vec![r(5, 25), r(28, 45)];
        assert_eq!(intersect(&a, &b), vec![r(5, 10), r(20, 25), r(28, 30), r(40, 45)]);
        assert_eq!(intersect(&a, &[]), vec![]);
    }

    #[test]
    fn subtract_of_lists() {
        let a = vec![r(0, 10), r(20, 30), r(40, 50)];
        let b = vec![r(5, 25), r(28, 29), r(50, 60)];
        assert_eq!(subtract(&a, &b), vec![r(0, 5), r(25, 28), r(29, 30), r(40, 50)]);
        assert_eq!(subtract(&a, &[]), a);
        assert_eq!(subtract(&a, &[r(0, 100)]), vec![]);
        // One subtrahend spanning several minuends.
        assert_eq!(subtract(&[r(0, 10), r(12, 20)], &[r(5, 15)]), vec![r(0, 5), r(15, 20)]);
    }

    #[test]
    fn range_basics() {
        let x = r(0x1000, 0x3000);
        assert_eq!(x.len, 0x2000);
        assert!(x.contains(0x1000) && x.contains(0x2fff) && !x.contains(0x3000));
        assert_eq!(x.intersect(&r(0x2000, 0x5000)), Some(r(0x2000, 0x3000)));
        assert_eq!(x.intersect(&r(0x3000, 0x5000)), None);
        assert_eq!(x.to_string(), "0x1000-0x3000");
        assert!(r(5, 3).is_empty());
        assert_eq!(total_len(&[x, r(0, 1)]), 0x2001);
    }
}
