//! The legs not counted yet, filed by the minute they ended.
//!
//! Nearly every leg is counted in the order it came (the scans come in
//! about event-time order), and only a scan uploaded out of order looks one
//! up. So the legs are appended to the list of their minute (found from the
//! newest), a batch takes whole minutes off the front in one sweep, and a
//! lookup searches only the minute it names. Nothing is hashed per leg, and
//! the counting reads the legs in the order they were written.

use std::collections::VecDeque;

use super::Leg;
use crate::time::Ts;

const MINUTE_MS: i64 = 60_000;

/// A leg of the parcel with this hash that ended at `to_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pending {
    pub(super) to_at: Ts,
    pub(super) hash: u64,
    pub(super) leg: Leg,
}

#[derive(Default)]
pub(super) struct Legs {
    /// Each minute's legs, by minute. Nearly every leg goes to the newest
    /// minute or one just before, so it is found from the back.
    by_minute: VecDeque<(i64, Vec<Pending>)>,
    /// The minute counted up to: a leg ending before it (a scan beyond the
    /// lateness) is filed there, to be counted with the next batch.
    floor: i64,
}

impl Legs {
    fn minute(&self, at: Ts) -> i64 {
        at.0.div_euclid(MINUTE_MS).max(self.floor)
    }

    pub(super) fn push(&mut self, pending: Pending) {
        let minute = self.minute(pending.to_at);
        // The first list from the back not after the minute.
        let at = self.by_minute.iter().rposition(|(m, _)| *m <= minute);
        match at {
            Some(i) if self.by_minute[i].0 == minute => self.by_minute[i].1.push(pending),
            _ => {
                self.by_minute.insert(at.map_or(0, |i| i + 1), (minute, vec![pending]));
            }
        }
    }

    /// The leg of parcel `hash` that ended at `to_at` after lasting some
    /// time, if it is not counted yet. A leg of no time (two scans of one
    /// instant) has nothing to split, and walking back through it would not
    /// move: it is passed over.
    pub(super) fn find(&mut self, hash: u64, to_at: Ts) -> Option<&mut Pending> {
        let minute = self.minute(to_at);
        let lasted = |p: &&mut Pending| p.hash == hash && p.to_at == to_at && p.leg.from_at < to_at;
        let i = self.by_minute.binary_search_by_key(&minute, |(m, _)| *m).ok()?;
        self.by_minute[i].1.iter_mut().rev().find(lasted)
    }

    /// Moves the legs that ended at or before `upto` into `due`, in
    /// event-time order (ties by parcel): each minute's list sorted, minute
    /// after minute (the legs filed at the floor are before every other).
    pub(super) fn take_until(&mut self, upto: Ts, due: &mut Vec<Pending>) {
        let last = upto.0.div_euclid(MINUTE_MS);
        while let Some((minute, mut list)) = self.by_minute.pop_front() {
            if minute > last {
                self.by_minute.push_front((minute, list));
                break;
            }
            list.sort_unstable_by_key(|p| (p.to_at, p.hash));
            if minute == last {
                // The minute `upto` falls in: its later legs stay.
                list.retain(|p| {
                    let now = p.to_at <= upto;
                    if now {
                        due.push(*p);
                    }
                    !now
                });
                if !list.is_empty() {
                    self.by_minute.push_front((minute, list));
                    break;
                }
            }
            // Emptied lists are dropped, not kept for reuse: each would keep
            // the capacity of the busiest minute it ever held, and the hour
            // of lists many times the legs pending.
            due.append(&mut list);
        }
        self.floor = self.floor.max(last);
    }

    pub(super) fn clear(&mut self) {
        self.by_minute.clear();
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.by_minute.iter().flat_map(|(_, list)| list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = MINUTE_MS;

    fn leg(to_at: i64, hash: u64) -> Pending {
        Pending { to_at: Ts(to_at), hash, leg: Leg { partition: 0, from: 0, to: 1, from_at: Ts(to_at - 1) } }
    }

    fn take(legs: &mut Legs, upto: i64) -> Vec<(i64, u64)> {
        let mut due = Vec::new();
        legs.take_until(Ts(upto), &mut due);
        due.iter().map(|p| (p.to_at.0, p.hash)).collect()
    }

    #[test]
    fn legs_come_out_in_event_time_order_whatever_order_they_went_in() {
        let mut legs = Legs::default();
        for (at, hash) in
            [(3 * M + 5, 1), (M + 7, 2), (3 * M + 9, 5), (3 * M + 5, 0), (2 * M, 9), (M + 1, 3), (4 * M, 4)]
        {
            legs.push(leg(at, hash));
        }
        // Ties by parcel; the later legs of the minute `upto` falls in stay.
        assert_eq!(take(&mut legs, 3 * M + 5), [(M + 1, 3), (M + 7, 2), (2 * M, 9), (3 * M + 5, 0), (3 * M + 5, 1)]);
        // A leg ending before what was counted (a scan beyond the lateness)
        // is counted first in the next batch.
        legs.push(leg(3 * M + 50, 8));
        legs.push(leg(M + 30, 7));
        assert_eq!(take(&mut legs, 5 * M), [(M + 30, 7), (3 * M + 9, 5), (3 * M + 50, 8), (4 * M, 4)]);
        assert_eq!(legs.iter().count(), 0);
    }
}
