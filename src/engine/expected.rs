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
    let quantile = |q: f64| {
        let mut seen = 0.0;
        arrival.iter().find(|(_, share)| {
            seen += share;
            seen >= q
        })
    };
    let (&(low, _), &(high, _)) = (quantile(LOW)?, quantile(HIGH).or(arrival.last())?);
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
}
