//! Partitions of the input (`shared/events.md`): which partition a parcel's
//! events belong to, and which partitions a processor owns.
//!
//! A parcel's partition is the FNV-1a 32-bit hash of its id modulo the
//! deployment's partition count. Branch facts are partitioned the same way,
//! by branch name, so a branch-keyed stage sees all of a branch's facts.

use std::collections::BTreeSet;
use std::fmt;

/// FNV-1a, 32 bits, as the contract defines it.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The partition of a key (a parcel id, a branch name) among `count`.
pub fn of(key: &str, count: u16) -> u16 {
    (fnv1a32(key.as_bytes()) % u32::from(count.max(1))) as u16
}

/// The partitions a processor owns, out of `count`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    pub count: u16,
    pub list: BTreeSet<u16>,
}

impl Owned {
    /// Parses `all`; a list of numbers and ranges such as `0-7` or
    /// `0,2,9-11`; or `K/N`, the K-th (from 0) of N near-equal contiguous
    /// slices, so that instance K of N (a StatefulSet's pod index) needs no
    /// list of its own.
    pub fn parse(text: &str, count: u16) -> Result<Owned, String> {
        if count == 0 {
            return Err("the partition count must be at least 1".into());
        }
        let text = text.trim();
        if text == "all" || text.is_empty() {
            return Ok(Owned { count, list: (0..count).collect() });
        }
        if let Some((k, n)) = text.split_once('/') {
            let (k, n) = match (k.trim().parse::<u32>(), n.trim().parse::<u32>()) {
                (Ok(k), Ok(n)) if k < n && n <= u32::from(count) => (k, n),
                _ => return Err(format!("partitions {text:?}: K/N needs 0 <= K < N <= the count {count}")),
            };
            let edge = |i: u32| (i * u32::from(count)).div_ceil(n) as u16;
            return Ok(Owned { count, list: (edge(k)..edge(k + 1)).collect() });
        }
        let mut list = BTreeSet::new();
        for part in text.split(',').map(str::trim) {
            let number = |s: &str| {
                s.trim().parse::<u16>().ok().filter(|&n| n < count).ok_or_else(|| {
                    format!("partitions {text:?}: {s:?} is not a partition number below the count {count}")
                })
            };
            let (low, high) = match part.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(part)?, number(part)?),
            };
            if low > high {
                return Err(format!("partitions {text:?}: the range {part:?} runs backwards"));
            }
            list.extend(low..=high);
        }
        Ok(Owned { count, list })
    }

    pub fn contains(&self, p: u16) -> bool {
        self.list.contains(&p)
    }
}

/// Prints the shortest list of ranges: `0-7`, `0,2,9-11`.
impl fmt::Display for Owned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.list.iter().copied().peekable();
        while let Some(low) = iter.next() {
            let mut high = low;
            while iter.peek() == Some(&(high + 1)) {
                high = iter.next().unwrap_or(high);
            }
            f.write_str(if first { "" } else { "," })?;
            first = false;
            if low == high {
                write!(f, "{low}")?;
            } else {
                write!(f, "{low}-{high}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_contract() {
        // Reference values of FNV-1a 32.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert_eq!(of("1Z999AA10123456784", 16), (fnv1a32(b"1Z999AA10123456784") % 16) as u16);
    }

    #[test]
    fn owned_lists_parse_and_print_as_ranges() {
        let owned = Owned::parse("0-3, 6,9-10", 16).expect("parses");
        assert_eq!(owned.list.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 3, 6, 9, 10]);
        assert_eq!(owned.to_string(), "0-3,6,9-10");
        assert_eq!(Owned::parse("all", 4).expect("parses").to_string(), "0-3");
        assert!(Owned::parse("3-1", 16).unwrap_err().contains("backwards"));
        assert!(Owned::parse("16", 16).unwrap_err().contains("below the count 16"));
    }

    #[test]
    fn slices_of_n_instances_cover_every_partition_once() {
        for n in 1..=16u16 {
            let mut all = Vec::new();
            for k in 0..n {
                let owned = Owned::parse(&format!("{k}/{n}"), 16).expect("parses");
                assert!(!owned.list.is_empty() && owned.list.len() <= 16usize.div_ceil(n.into()));
                all.extend(owned.list);
            }
            assert_eq!(all, (0..16).collect::<Vec<u16>>(), "{n} instances");
        }
        assert_eq!(Owned::parse("1/3", 16).expect("parses").to_string(), "6-10");
        assert!(Owned::parse("3/3", 16).unwrap_err().contains("K/N"));
        assert!(Owned::parse("0/17", 16).is_err());
    }
}
