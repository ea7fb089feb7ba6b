//! The expected arrival an alert tells its customer: a claim the report
//! can check, in the customer's own days.
//!
//! From the lane model's distribution of the arrival ([`Lanes::arrival`]):
//! - the range from its 5 % to its 95 % quantile, when it falls within one
//!   day of the customer's: "Thursday, between 10:00 and 18:00";
//! - else the customer's day holding at least 80 % of it, whole: "Thursday";
//! - else the whole days the range touches: "between Thursday and Saturday".
//!
//! So a range is stated for 90 % of the parcels it is told to and a day for
//! 80 %, when the lanes are right: `forewarn report` measures how often.
//!
//! [`Lanes::arrival`]: super::lanes::Lanes::arrival

use chrono::{DateTime, NaiveDate, TimeZone};
use chrono_tz::Tz;

use crate::alert::AlertId;
use crate::time::{Span, Ts};

const HOUR: i64 = 3_600_000;

/// The range told: from its 5 % quantile…
const LOW: f64 = 0.05;
/// …to its 95 %.
const HIGH: f64 = 0.95;
/// The share of the arrival a day must hold to be told alone.
const DAY: f64 = 0.8;

/// The instants between which the parcel is expected: a range's ends (in
/// whole hours, outward), or the midnights that begin its first day and
/// end its last.
pub fn claim(arrival: &[(Ts, f64)], tz: Tz) -> Option<(Ts, Ts)> {
    let (low, high) = range(arrival)?;
    let (first, last) = (day_of(low, tz), day_of(high, tz));
    if first == last {
        // Told in whole hours, outward, within the day.
        let (from, to) = (Ts(low.0 - low.0.rem_euclid(HOUR)), Ts(high.0 + (HOUR - high.0.rem_euclid(HOUR)) % HOUR));
        let to = [to, to.minus(Span::minutes(1))].into_iter().find(|&t| day_of(t, tz) == first).unwrap_or(high);
        return Some((from, to));
    }
    let mut day = first;
    while day <= last {
        let (start, end) = (start_of(day, tz), start_of(day.succ_opt()?, tz));
        let share: f64 = arrival.iter().filter(|(t, _)| (start..end).contains(t)).map(|(_, s)| s).sum();
        if share >= DAY {
            return Some((start, end));
        }
        day = day.succ_opt()?;
    }
    Some((start_of(first, tz), start_of(last.succ_opt()?, tz)))
}

/// The 5 % and 95 % quantiles of `arrival`: every claim lies within their days.
fn range(arrival: &[(Ts, f64)]) -> Option<(Ts, Ts)> {
    let quantile = |q: f64| {
        let mut seen = 0.0;
        arrival.iter().find(|(_, share)| {
            seen += share;
            seen >= q
        })
    };
    Some((quantile(LOW)?.0, quantile(HIGH).or(arrival.last())?.0))
}

/// Whether an estimate whose 5–95 % range is `(low, high)`, judged at
/// `at`, may be news after `told`: most stay within what was told, and
/// their claim need not be drawn.
fn may_revise((low, high): (Ts, Ts), told: Told, at: Ts, tz: Tz, days: u8) -> bool {
    // A claim's days lie within its range's (its first may be one earlier
    // in a zone half an hour off UTC, whose whole hours cross midnight).
    let (earliest, latest, days) = (day_number(low, tz) - 1, day_number(high, tz), u16::from(days));
    (latest >= told.last + days || earliest + days <= told.first) && day_number(at, tz) != told.on
}

/// The claim of `arrival`, judged at `at`, when it is news after `told`
/// ([`Told::revised_by`]); drawn only when the days of its 5–95 % range
/// may be ([`may_revise`]).
pub fn revision(arrival: &[(Ts, f64)], told: Told, at: Ts, tz: Tz, days: u8) -> Option<(Ts, Ts)> {
    if !may_revise(range(arrival)?, told, at, tz, days) {
        return None;
    }
    claim(arrival, tz).filter(|&c| told.revised_by(Told::new(c, at, tz), days))
}

/// An expected arrival told to a customer, in their days (counted from
/// 1970-01-01 in their zone): the first and last day of what was told, and
/// the day it was told on (0 until one is told); and the alert that told
/// it, which a revision names so that it goes only where that one did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Told {
    pub first: u16,
    pub last: u16,
    pub on: u16,
    /// The telling alert's id, in two halves (a `u128` would align the talk to 16 bytes).
    pub by: [u64; 2],
}

impl Told {
    /// The days of `claim` (its end excluded: a day claimed ends at the
    /// next midnight), told at `at`.
    pub fn new(claim: (Ts, Ts), at: Ts, tz: Tz) -> Told {
        let number = |t: Ts| day_number(t, tz);
        Told { first: number(claim.0), last: number(claim.1.minus(Span(1)).max(claim.0)), on: number(at), by: [0; 2] }
    }

    /// Told by the alert `id`.
    pub fn told_by(self, id: AlertId) -> Told {
        Told { by: [(id.0 >> 64) as u64, id.0 as u64], ..self }
    }

    /// The alert that told it.
    pub fn by(self) -> AlertId {
        AlertId(u128::from(self.by[0]) << 64 | u128::from(self.by[1]))
    }

    /// Whether `now` is news after `self`, on a day it was not told on: it
    /// begins `days` or more after the last day told, or ends `days` or
    /// more before the first. A range that still shares a day with the one
    /// told is not: measured on the simulator, half the revisions sent when
    /// the last day alone moved replaced an estimate that came true.
    pub fn revised_by(self, now: Told, days: u8) -> bool {
        let days = u16::from(days);
        self.on != 0 && now.on != self.on && (now.first >= self.last + days || now.last + days <= self.first)
    }
}

/// The customer's day of `t`, counted from 1970-01-01 (at least 1: 0 is "none").
fn day_number(t: Ts, tz: Tz) -> u16 {
    (day_of(t, tz) - NaiveDate::default()).num_days().clamp(1, i64::from(u16::MAX)) as u16
}

fn day_of(t: Ts, tz: Tz) -> NaiveDate {
    DateTime::from_timestamp_millis(t.0).unwrap_or_default().with_timezone(&tz).date_naive()
}

/// When `day` begins in `tz` (its first instant, when midnight is skipped).
fn start_of(day: NaiveDate, tz: Tz) -> Ts {
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    let local = tz.from_local_datetime(&midnight).earliest().or_else(|| {
        // A zone whose clocks skip midnight: the day begins an hour later.
        tz.from_local_datetime(&(midnight + chrono::Duration::hours(1))).earliest()
    });
    Ts(local.map_or(midnight.and_utc().timestamp_millis(), |t| t.timestamp_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-19T00:00:00Z, a Thursday.
    const THURSDAY: i64 = 1_795_046_400_000;

    fn spread(hours: &[(f64, f64)]) -> Vec<(Ts, f64)> {
        hours.iter().map(|&(h, s)| (Ts(THURSDAY + (h * HOUR as f64) as i64), s)).collect()
    }

    #[test]
    fn a_range_within_a_day_is_told_with_its_hours_a_likely_day_alone_else_whole_days() {
        let utc = Tz::UTC;
        let narrow = spread(&[(9.0, 0.04), (10.25, 0.5), (17.5, 0.42), (19.5, 0.04)]);
        assert_eq!(claim(&narrow, utc), Some((Ts(THURSDAY + 10 * HOUR), Ts(THURSDAY + 18 * HOUR))));
        // Thursday holds 92 %, Friday the rest: Thursday, whole.
        let likely = spread(&[(2.0, 0.1), (12.0, 0.82), (30.0, 0.08)]);
        assert_eq!(claim(&likely, utc), Some((Ts(THURSDAY), Ts(THURSDAY + 24 * HOUR))));
        // Spread over three days: all three.
        let wide = spread(&[(2.0, 0.3), (30.0, 0.4), (60.0, 0.3)]);
        assert_eq!(claim(&wide, utc), Some((Ts(THURSDAY), Ts(THURSDAY + 72 * HOUR))));
        // Up to the day's end, not past it.
        let evening = spread(&[(21.5, 0.5), (23.5, 0.5)]);
        assert_eq!(claim(&evening, utc), Some((Ts(THURSDAY + 21 * HOUR), Ts(THURSDAY + 24 * HOUR - 60_000))));
        // The customer's days: one UTC day is two in Shanghai.
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        let late_night = spread(&[(15.0, 0.5), (17.0, 0.5)]);
        assert_eq!(claim(&late_night, utc), Some((Ts(THURSDAY + 15 * HOUR), Ts(THURSDAY + 17 * HOUR))));
        assert_eq!(claim(&late_night, shanghai), Some((Ts(THURSDAY - 8 * HOUR), Ts(THURSDAY + 40 * HOUR))));
        assert_eq!(claim(&[], utc), None);
    }

    #[test]
    fn an_estimate_is_revised_when_it_moves_a_day_on_another_day_than_it_was_told() {
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        let day = |d: i64| Ts(THURSDAY + d * 24 * HOUR - 8 * HOUR);
        // Told on Thursday (Shanghai): Friday, whole.
        let told = Told::new((day(1), day(2)), day(0).plus(Span::hours(10)), shanghai);
        assert_eq!((told.last - told.first, told.on + 1), (0, told.first));
        // 23:30 UTC on Thursday is Friday in Shanghai: the days are the customer's.
        assert_eq!(Told::new((day(1), day(2)), Ts(THURSDAY + 23 * HOUR + HOUR / 2), shanghai).on, told.first);
        let on_friday = |from: i64, to: i64| Told::new((day(from), day(to)), day(1).plus(Span::hours(9)), shanghai);
        // Saturday instead of Friday: a day later.
        assert!(told.revised_by(on_friday(2, 3), 1));
        assert!(!told.revised_by(on_friday(2, 3), 2), "two days asked, one moved");
        assert!(told.revised_by(on_friday(3, 4), 2), "Sunday is two days after Friday");
        // Thursday to Saturday still holds Friday: not news.
        assert!(!told.revised_by(on_friday(0, 3), 1));
        // Wednesday: a day earlier.
        assert!(told.revised_by(on_friday(-1, 0), 1));
        // Friday between 14:00 and 18:00: within what was told.
        let hours = Told::new((day(1).plus(Span::hours(14)), day(1).plus(Span::hours(18))), day(1), shanghai);
        assert!(!told.revised_by(hours, 1));
        // Told the same day: never twice a day, however far it moved.
        let same_day = Told::new((day(3), day(4)), day(0).plus(Span::hours(20)), shanghai);
        assert!(!told.revised_by(same_day, 1));
        // Nothing told, nothing revised.
        assert!(!Told::default().revised_by(on_friday(2, 3), 1));
    }

    /// The revision's shortcut on the range's days never skips one:
    /// against the claim drawn every time, on random arrivals and estimates
    /// told, in zones a whole and half an hour off UTC.
    #[test]
    fn a_revision_is_the_claim_that_moved_whatever_the_shortcut_skips() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        let (mut revised, mut skipped) = (0, 0);
        for tz in ["Asia/Shanghai", "Asia/Kolkata", "America/Los_Angeles"].map(|z| z.parse::<Tz>().unwrap()) {
            for _ in 0..3_000 {
                let at = Ts(THURSDAY + rng.gen_range(0..72) * HOUR);
                let start = rng.gen_range(0..96) as f64;
                let points: Vec<(f64, f64)> =
                    (0..rng.gen_range(1..6)).map(|i| (start + i as f64 * rng.gen_range(0.5..20.0), 1.0)).collect();
                let total = points.len() as f64;
                let arrival: Vec<(Ts, f64)> =
                    points.iter().map(|&(h, w)| (at.plus(Span((h * HOUR as f64) as i64)), w / total)).collect();
                let first = Told::new((at, at.plus(Span(1))), at, tz).on + rng.gen_range(0..5);
                let told =
                    Told { first, last: first + rng.gen_range(0..3), on: first - rng.gen_range(0..3), by: [0; 2] };
                let days = rng.gen_range(1..3);
                let slow = claim(&arrival, tz).filter(|&c| told.revised_by(Told::new(c, at, tz), days));
                let may = range(&arrival).is_some_and(|r| may_revise(r, told, at, tz, days));
                assert!(may || slow.is_none(), "{arrival:?} after {told:?} in {tz}: a revision skipped");
                assert_eq!(revision(&arrival, told, at, tz, days), slow);
                if slow.is_some() {
                    revised += 1;
                } else if !may {
                    skipped += 1;
                }
            }
        }
        assert!(revised > 500 && skipped > 500, "{revised} revised, {skipped} skipped by the shortcut");
    }
}
