//! Event-time timers: one wake-up per parcel, in a wheel of one-minute
//! buckets.
//!
//! Inserting a future wake-up is a push onto its minute's bucket (no tree to
//! rebalance, one cache line touched). The minute the watermark is in is kept
//! sorted, and entries leave it exactly when the watermark passes them, so a
//! timer fires on the first watermark at or past its deadline. Wake-ups
//! further out than the wheel's horizon wait in a small ordered set and move
//! into the wheel as it turns. In the wheel and in the current minute, where
//! nearly all wait, an entry takes 8 bytes, not 16: its bucket says the
//! minute ([`Packed`]). A minute's bucket becomes the current minute as it
//! is, sorted in place: when most parcels share a deadline (a network whose
//! promises end with the day), the minute holding them all costs no second
//! copy, and the entries leave it in batches the caller bounds. Entries
//! are not removed when a parcel's wake-up changes: the engine skips an entry
//! whose time is no longer the parcel's wake-up, and wake-ups only move
//! earlier between firings, so stale entries stay few.

use std::collections::{BTreeSet, VecDeque};

use crate::time::Ts;

const MINUTE: i64 = 60_000;
/// Eight days of minutes: covers every default deadline but idle expiry.
const HORIZON: i64 = 8 * 24 * 60;

/// A wake-up: when, and for which parcel slot and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub at: Ts,
    pub slot: u32,
    pub gen: u8,
}

/// An [`Entry`] in the wheel, its minute left to its bucket: the
/// millisecond in the minute (16 bits), the slot (32) and the generation
/// (8), in that order, so that packed entries of one minute sort as the
/// entries do.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Packed(u64);

impl Packed {
    fn new(e: &Entry) -> Packed {
        let ms = e.at.0.rem_euclid(MINUTE) as u64;
        Packed(ms << 40 | u64::from(e.slot) << 8 | u64::from(e.gen))
    }

    /// The entry, in minute `m`.
    fn entry(self, m: i64) -> Entry {
        Entry { at: Ts(m * MINUTE + (self.0 >> 40) as i64), slot: (self.0 >> 8) as u32, gen: self.0 as u8 }
    }
}

pub struct Timers {
    /// The minute `current` stands for.
    base: i64,
    /// Entries of `base`, sorted by deadline.
    current: VecDeque<Packed>,
    /// Entries of minutes before `base` (a wake-up armed already due), sorted.
    late: VecDeque<Entry>,
    /// Buckets for the minutes after `base`, indexed by minute modulo the horizon.
    ring: Vec<Vec<Packed>>,
    in_ring: usize,
    far: BTreeSet<Entry>,
    /// No live entry is in the ring before this minute: where the search
    /// for the earliest starts, so making room costs no scan of empty minutes.
    earliest_from: i64,
    /// The minute whose bucket is sorted latest first, stale entries out:
    /// making room pops its earliest from the end.
    sorted: i64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            base: i64::MIN,
            current: VecDeque::new(),
            late: VecDeque::new(),
            ring: vec![Vec::new(); HORIZON as usize],
            in_ring: 0,
            far: BTreeSet::new(),
            earliest_from: i64::MIN,
            sorted: i64::MIN,
        }
    }
}

fn minute(t: Ts) -> i64 {
    t.0.div_euclid(MINUTE)
}

fn bucket(m: i64) -> usize {
    m.rem_euclid(HORIZON) as usize
}

impl Timers {
    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.current.len() + self.late.len() + self.in_ring + self.far.len()
    }

    pub fn insert(&mut self, e: Entry) {
        let m = minute(e.at);
        if self.base == i64::MIN {
            // The wheel starts turning at the first watermark; until then all waits aside.
            self.far.insert(e);
        } else if m < self.base {
            let i = self.late.partition_point(|x| x <= &e);
            self.late.insert(i, e);
        } else if m == self.base {
            let packed = Packed::new(&e);
            let i = self.current.partition_point(|x| x <= &packed);
            self.current.insert(i, packed);
        } else if m - self.base < HORIZON {
            let b = &mut self.ring[bucket(m)];
            let packed = Packed::new(&e);
            if m == self.sorted {
                let i = b.partition_point(|x| x > &packed);
                b.insert(i, packed);
            } else {
                b.push(packed);
            }
            self.in_ring += 1;
            self.earliest_from = self.earliest_from.min(m);
        } else {
            self.far.insert(e);
        }
    }

    /// The earliest entry of the current minute or before it.
    fn first(&self) -> Option<Entry> {
        // Every late entry is before every entry of the current minute.
        self.late.front().copied().or_else(|| self.current.front().map(|p| p.entry(self.base)))
    }

    fn pop_first(&mut self) -> Option<Entry> {
        self.late.pop_front().or_else(|| self.current.pop_front().map(|p| p.entry(self.base)))
    }

    /// Moves the entries due at `watermark` into `due`, in deadline order,
    /// until `due` holds `limit`: the rest are taken by the next calls.
    pub fn drain_due(&mut self, watermark: Ts, due: &mut Vec<Entry>, limit: usize) {
        loop {
            while due.len() < limit {
                match self.first() {
                    Some(e) if e.at <= watermark => {
                        due.push(e);
                        self.pop_first();
                    }
                    _ => break,
                }
            }
            let now = minute(watermark);
            let held = !self.current.is_empty() || !self.late.is_empty();
            if due.len() >= limit || held || (self.base != i64::MIN && self.base >= now) {
                return;
            }
            // Turn the wheel: the next minute with entries, but not past the watermark's.
            self.base = if self.in_ring == 0 || self.base == i64::MIN {
                self.far.first().map_or(now, |e| minute(e.at)).min(now)
            } else {
                self.base + 1
            };
            let mut loaded = std::mem::take(&mut self.ring[bucket(self.base)]);
            self.in_ring -= loaded.len();
            loaded.sort_unstable();
            self.current = VecDeque::from(loaded);
            let end = (self.base + HORIZON) * MINUTE;
            while let Some(e) = self.far.first().copied().filter(|e| e.at.0 < end) {
                self.far.pop_first();
                self.insert(e);
            }
        }
    }

    /// Takes out the earliest entry that `live` accepts, for making room
    /// when the window is full, and drops the stale entries before it (an
    /// entry `live` refuses is dead for good: a parcel whose wake-up moves
    /// gets a new entry). Each entry is looked at once, whatever the number
    /// of parcels made to leave: before, the evicted parcels' entries stayed
    /// and every later eviction walked past all of them again.
    pub fn take_earliest(&mut self, live: impl Fn(&Entry) -> bool) -> Option<Entry> {
        while let Some(e) = self.pop_first() {
            if live(&e) {
                return Some(e);
            }
        }
        if self.base != i64::MIN {
            let end = self.base + HORIZON;
            let mut m = self.earliest_from.max(self.base + 1);
            while self.in_ring > 0 && m < end {
                let b = &mut self.ring[bucket(m)];
                if self.sorted != m {
                    b.sort_unstable_by(|x, y| y.cmp(x));
                    self.sorted = m;
                }
                while let Some(e) = b.pop().map(|p| p.entry(m)) {
                    self.in_ring -= 1;
                    if live(&e) {
                        self.earliest_from = m;
                        return Some(e);
                    }
                }
                m += 1;
            }
            self.earliest_from = m;
        }
        while let Some(e) = self.far.pop_first() {
            if live(&e) {
                return Some(e);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(min: i64, sec: i64, slot: u32) -> Entry {
        Entry { at: Ts(min * MINUTE + sec * 1000), slot, gen: 0 }
    }

    #[test]
    fn fires_exactly_when_the_watermark_passes_in_deadline_order() {
        let mut t = Timers::default();
        for x in [e(10, 30, 1), e(11, 0, 3), e(10, 5, 2), e(HORIZON * 2, 0, 4), e(9, 0, 5)] {
            t.insert(x);
        }
        let mut due = Vec::new();
        t.drain_due(Ts(10 * MINUTE + 4_999), &mut due, usize::MAX);
        assert_eq!(due, [e(9, 0, 5)]);
        due.clear();
        t.drain_due(Ts(10 * MINUTE + 30_000), &mut due, usize::MAX);
        assert_eq!(due, [e(10, 5, 2), e(10, 30, 1)]);
        due.clear();
        t.drain_due(Ts(HORIZON * 3 * MINUTE), &mut due, usize::MAX);
        assert_eq!(due, [e(11, 0, 3), e(HORIZON * 2, 0, 4)], "far entries come back in time");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn an_earlier_deadline_after_the_wheel_turned_is_not_postponed() {
        let mut t = Timers::default();
        t.insert(e(100, 0, 1));
        let mut due = Vec::new();
        t.drain_due(Ts(200 * MINUTE), &mut due, usize::MAX);
        t.insert(e(300, 0, 2));
        t.insert(e(50, 0, 3));
        due.clear();
        t.drain_due(Ts(200 * MINUTE + 1), &mut due, usize::MAX);
        assert_eq!(due, [e(50, 0, 3)]);
    }

    #[test]
    fn draining_in_batches_takes_the_entries_as_draining_at_once_does() {
        let entries: Vec<Entry> = (0..40).map(|i| e(10 + i % 3, (i * 7) % 60, i as u32)).collect();
        let (mut all, mut batched) = (Timers::default(), Timers::default());
        for t in [&mut all, &mut batched] {
            t.insert(e(5, 0, 99));
            let mut due = Vec::new();
            t.drain_due(Ts(5 * MINUTE), &mut due, usize::MAX);
            entries.iter().for_each(|&x| t.insert(x));
        }
        let mut at_once = Vec::new();
        all.drain_due(Ts(13 * MINUTE), &mut at_once, usize::MAX);
        let mut in_batches = Vec::new();
        loop {
            let mut due = Vec::new();
            batched.drain_due(Ts(13 * MINUTE), &mut due, 3);
            assert!(due.len() <= 3);
            if due.is_empty() {
                break;
            }
            in_batches.extend(due);
        }
        let mut sorted = entries.clone();
        sorted.sort_unstable();
        assert_eq!(at_once, sorted);
        assert_eq!(in_batches, sorted);
        assert_eq!(batched.len(), 0);
    }

    #[test]
    fn a_packed_entry_is_the_entry_in_its_minute_and_sorts_as_it() {
        let entries =
            [e(-3, 59, 7), e(5, 0, u32::MAX), e(5, 0, 0), Entry { at: Ts(5 * MINUTE + 59_999), slot: 1, gen: 255 }];
        for x in entries {
            assert_eq!(Packed::new(&x).entry(minute(x.at)), x);
        }
        let mut minute5: Vec<Entry> = entries[1..].to_vec();
        let mut packed: Vec<Packed> = minute5.iter().map(Packed::new).collect();
        minute5.sort_unstable();
        packed.sort_unstable();
        assert_eq!(packed.into_iter().map(|p| p.entry(5)).collect::<Vec<_>>(), minute5);
    }

    #[test]
    fn taking_the_earliest_passes_each_stale_entry_once() {
        let mut t = Timers::default();
        t.insert(e(100, 0, 0));
        let mut due = Vec::new();
        t.drain_due(Ts(100 * MINUTE), &mut due, usize::MAX);
        for i in 1..=10 {
            t.insert(e(200 + i64::from(i % 3), 0, i));
        }
        t.insert(e(HORIZON * 2, 0, 99));
        t.insert(e(150, 0, 50));
        // Slots 1-4 left the window some other way: their entries are stale.
        let live = |x: &Entry| x.slot > 4;
        assert_eq!(t.take_earliest(live), Some(e(150, 0, 50)));
        assert_eq!(t.take_earliest(live), Some(e(200, 0, 6)));
        assert_eq!(t.len(), 9, "slot 3's stale entry went with slot 6's: 3 of 12 gone");
        let order: Vec<u32> = std::iter::from_fn(|| t.take_earliest(live)).map(|x| x.slot).collect();
        assert_eq!(order, [9, 7, 10, 5, 8, 99]);
        assert_eq!(t.len(), 0);
    }
}
