//! How widely a parcel's arrival may fall, for the expected arrival its
//! customer is told.
//!
//! The forecasts judge `predicted_late` on one quantile of the leg and the
//! medians after it: a point, with nothing of how the rest of the route
//! varies. At each publication, every class (and network lane) also gets its
//! time to the arrival as a distribution over the leg buckets: its leg's
//! distribution convolved with the mixture of its next classes' (arrivals at
//! zero), weighted by how often parcels went there, swept until it settles
//! like the medians are. A parcel's arrival is then its leg's distribution
//! given how long the leg has lasted, convolved with its class's time after
//! the leg: the range told is its 5 % and 95 % quantiles.
//!
//! The legs after the present one are taken as independent of it and of
//! each other: what the report's estimate accuracy measures, on every shape.

use std::sync::{Arc, LazyLock, OnceLock};

use super::model::{band, bucket, bucket_span, Lane, BANDS, STARTS};
use super::{Place, BUCKETS, NONE};
use crate::time::Span;

/// Shares over the buckets: summing to 1.
pub(super) type Dist = [f64; BUCKETS];

/// A class's spread as published.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Spread {
    /// The leg's counts.
    pub(super) leg: [u32; BUCKETS],
    /// The first bucket fewer than [`MIN_LEGS`] legs reached: a leg that
    /// lasted as long has no estimate.
    pub(super) thin_from: u8,
    /// Where parcels went after the leg, those whose time to the arrival is
    /// known: that time (in shares of [`SCALE`]; an arrival is at zero), and
    /// how often they went there after a leg of each band.
    pub(super) next: Vec<(Arc<[u16; BUCKETS]>, [u32; BANDS])>,
    /// The arrival of a parcel whose leg has just begun, once asked.
    pub(super) fresh: Fresh,
}

/// The time to the arrival of a parcel whose leg has just begun: what each
/// scan that sets a told parcel's state asks (the `revised` rules), so it
/// is drawn once a version, not once a scan; in seconds and `f32` shares,
/// 8 bytes a point. Not part of what a spread is: equal spreads are equal
/// whether or not it was drawn.
#[derive(Clone, Debug, Default)]
pub(super) struct Fresh(OnceLock<Option<Box<[Second]>>>);

/// Seconds to the arrival, and their share.
type Second = (i32, f32);

impl PartialEq for Fresh {
    fn eq(&self, _: &Fresh) -> bool {
        true
    }
}

/// The legs that must have lasted as long as a parcel's for its leg to be
/// judged by them: a 5 % to 95 % range drawn from fewer is noise.
const MIN_LEGS: u32 = 20;

/// What the shares of a published time to the arrival add up to.
pub(super) const SCALE: f64 = 65_535.0;

/// The bucket of the sum of two buckets' representative durations.
static SUMS: LazyLock<[[u8; BUCKETS]; BUCKETS]> = LazyLock::new(|| {
    let mut sums = [[0u8; BUCKETS]; BUCKETS];
    for (i, row) in sums.iter_mut().enumerate() {
        for (j, s) in row.iter_mut().enumerate() {
            *s = bucket(Span(bucket_span(i).0 + bucket_span(j).0)) as u8;
        }
    }
    sums
});

/// An arrival: no time left.
pub(super) const ARRIVED: Dist = {
    let mut d = [0.0; BUCKETS];
    d[0] = 1.0;
    d
};

/// The distribution of the sum of two independent durations.
pub(super) fn convolve(a: &Dist, b: &Dist) -> Dist {
    let sums = &*SUMS;
    let mut out = [0.0; BUCKETS];
    for (i, &x) in a.iter().enumerate().filter(|(_, x)| **x > 0.0) {
        for (j, &y) in b.iter().enumerate().filter(|(_, y)| **y > 0.0) {
            out[usize::from(sums[i][j])] += x * y;
        }
    }
    out
}

/// Where parcels went after a leg of `band`, as the mixture of those
/// places' times to the arrival: weighted by how often they went there
/// after such legs, with [`PRIOR`] legs' worth of how often after any leg
/// (a band with few legs says little of its own).
pub(super) fn mixture(next: &[(&Dist, [u32; BANDS])], band: usize) -> Dist {
    let all: f64 = next.iter().map(|(_, b)| b.iter().map(|&c| f64::from(c)).sum::<f64>()).sum();
    let mut out = [0.0; BUCKETS];
    let mut weights = 0.0;
    for (time, bands) in next {
        let overall: f64 = bands.iter().map(|&c| f64::from(c)).sum();
        let w = f64::from(bands[band]) + PRIOR * overall / all.max(1.0);
        weights += w;
        out.iter_mut().zip(time.iter()).for_each(|(o, t)| *o += w * t);
    }
    if weights > 0.0 {
        out.iter_mut().for_each(|o| *o /= weights);
    }
    out
}

/// How many legs' worth of the overall mixture a band's own counts start from.
const PRIOR: f64 = 5.0;

/// The time to the arrival of a parcel entering a place: its leg, then
/// where parcels went after a leg as long, each band convolved apart.
pub(super) fn through(leg: &Dist, next: &[(&Dist, [u32; BANDS])]) -> Dist {
    let mut parts = [[0.0; BUCKETS]; BANDS];
    for (i, &x) in leg.iter().enumerate() {
        parts[band(i)][i] = x;
    }
    let mut out = [0.0; BUCKETS];
    for (b, part) in parts.iter().enumerate().filter(|(_, part)| part.iter().any(|&x| x > 0.0)) {
        let time = convolve(part, &mixture(next, b));
        out.iter_mut().zip(time).for_each(|(o, t)| *o += t);
    }
    out
}

/// The places a lane's parcels went next whose time is known (arrivals at
/// zero), with their band counts; `None` when less than `min_known` of the
/// legs went to such places.
pub(super) fn known_next<'a>(
    lane: &Lane,
    places: &[Place],
    rest: &'a [Option<Dist>],
    min_known: f64,
) -> Option<Vec<(&'a Dist, [u32; BANDS], u32)>> {
    let (mut all, mut known) = (0u64, 0u64);
    let mut out = Vec::new();
    for (&(class, count), bands) in lane.next.iter().zip(&lane.bands).filter(|(e, _)| e.0 != NONE && e.1 > 0) {
        all += u64::from(count);
        let time = if places[class as usize].arrived() { Some(&ARRIVED) } else { rest[class as usize].as_ref() };
        if let Some(d) = time {
            known += u64::from(count);
            out.push((d, *bands, class));
        }
    }
    (known > 0 && known as f64 >= min_known * all as f64).then_some(out)
}

/// A published time to the arrival as shares of [`SCALE`].
pub(super) fn shares(d: &Dist) -> [u16; BUCKETS] {
    d.map(|x| (x * SCALE).round() as u16)
}

impl Spread {
    /// The spread of a lane's legs, followed by `next` (see [`known_next`]).
    pub(super) fn new(lane: &Lane, next: Vec<(Arc<[u16; BUCKETS]>, [u32; BANDS])>) -> Spread {
        let mut reached = lane.total;
        let mut thin_from = BUCKETS;
        for (i, &c) in lane.counts.iter().enumerate() {
            if reached < MIN_LEGS {
                thin_from = i;
                break;
            }
            reached -= c;
        }
        Spread { leg: lane.counts, thin_from: thin_from as u8, next, fresh: Fresh::default() }
    }

    /// The time from now to the arrival of a parcel whose leg has lasted
    /// `elapsed`, as (milliseconds, weight) pairs in time order; `None` when
    /// no history says how such a leg goes on.
    pub(super) fn arrival(&self, elapsed: Span) -> Option<Vec<(i64, f64)>> {
        let from = bucket(elapsed);
        if from >= usize::from(self.thin_from) {
            return None;
        }
        let times: Vec<Dist> = self.next.iter().map(|(t, _)| t.map(|x| f64::from(x) / SCALE)).collect();
        let next: Vec<(&Dist, [u32; BANDS])> = times.iter().zip(&self.next).map(|(t, (_, b))| (t, *b)).collect();
        let mut afters: [Option<Dist>; BANDS] = [None; BANDS];
        let (starts, ends) = (&*STARTS, |i: usize| STARTS[i + 1].min(2 * bucket_span(i).0 - STARTS[i]));
        let mut out = Vec::new();
        for (i, &count) in self.leg.iter().enumerate().skip(from).filter(|(_, c)| **c > 0) {
            // What is left of the leg, between `lo` and `hi`; in the bucket
            // it has reached, only the share of the bucket's legs still going
            // (evenly spread through it, the others ended before now).
            let (lo, hi, w) = if i == from {
                let share = (ends(i) - elapsed.0).max(0) as f64 / (ends(i) - starts[i]) as f64;
                (0, (ends(i) - elapsed.0).max(0), f64::from(count) * share)
            } else {
                (starts[i] - elapsed.0, ends(i) - elapsed.0, f64::from(count))
            };
            let after = afters[band(i)].get_or_insert_with(|| mixture(&next, band(i)));
            for (j, &a) in after.iter().enumerate().filter(|(_, a)| **a > 0.0) {
                let (then_lo, then_hi) = if j == 0 { (0, 0) } else { (starts[j], ends(j)) };
                // Two points a standard deviation either side of the sum's
                // middle: the sum of the two spans as spread as it is.
                let middle = (lo + hi + then_lo + then_hi) as f64 / 2.0;
                let (a_width, b_width) = ((hi - lo) as f64, (then_hi - then_lo) as f64);
                let deviation = ((a_width * a_width + b_width * b_width) / 12.0).sqrt();
                for t in [middle - deviation, middle + deviation] {
                    out.push((t.max(0.0) as i64, w * a / 2.0));
                }
            }
        }
        binned(&out)
    }
}

impl Spread {
    /// [`Spread::arrival`] for a leg just begun (to the second).
    pub(super) fn fresh(&self) -> Option<&[Second]> {
        let drawn = || {
            let times = self.arrival(Span::ZERO)?;
            Some(
                times
                    .into_iter()
                    .map(|(ms, share)| ((ms / 1000).min(i64::from(i32::MAX)) as i32, share as f32))
                    .collect(),
            )
        };
        self.fresh.0.get_or_init(drawn).as_deref()
    }
}

/// Weighted instants in time order, each in its [`STEP_MS`] bin (or a
/// wider one, for [`MAX_BINS`] at most), shares summing to 1: the bins
/// keep them in order without sorting a thousand points an estimate.
fn binned(points: &[(i64, f64)]) -> Option<Vec<(i64, f64)>> {
    let total: f64 = points.iter().map(|(_, w)| w).sum();
    let (first, last) = points.iter().fold((i64::MAX, i64::MIN), |(lo, hi), &(t, _)| (lo.min(t), hi.max(t)));
    if total <= 0.0 || first > last {
        return None;
    }
    let step = STEP_MS.max((last - first) / MAX_BINS as i64 + 1);
    let mut bins = vec![0.0; ((last - first) / step + 1) as usize];
    for &(t, w) in points {
        bins[((t - first) / step) as usize] += w / total;
    }
    // A bin speaks at its middle.
    let at = |i: usize| first + i as i64 * step + step / 2;
    Some(bins.into_iter().enumerate().filter(|(_, w)| *w > 0.0).map(|(i, w)| (at(i), w)).collect())
}

/// The finest bin of an estimate's instants: well within the hour it is told in.
const STEP_MS: i64 = 5 * 60_000;
const MAX_BINS: usize = 8_192;

#[cfg(test)]
mod tests {
    use super::*;

    fn point(span: Span) -> Dist {
        let mut d = [0.0; BUCKETS];
        d[bucket(span)] = 1.0;
        d
    }

    #[test]
    fn two_legs_convolve_to_their_sum_and_a_mixture_keeps_its_weights() {
        let sum = convolve(&point(Span::hours(10)), &point(Span::hours(30)));
        let at = sum.iter().position(|&x| x > 0.0).unwrap();
        let middle = bucket_span(at).0 as f64 / 3_600_000.0;
        assert!((36.0..44.0).contains(&middle), "{middle} h");
        assert!((sum.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let mut either = point(Span::hours(2)).map(|x| x * 0.25);
        either[bucket(Span::hours(20))] += 0.75;
        let mixed = convolve(&point(Span::hours(1)), &either);
        let shares: Vec<f64> = mixed.iter().copied().filter(|&x| x > 0.0).collect();
        assert_eq!(shares, [0.25, 0.75]);
    }

    #[test]
    fn a_leg_that_lasted_is_judged_by_the_legs_that_lasted_as_long_and_where_they_went() {
        let mut lane = Lane::default();
        // Twenty legs of 2 h lead to an arrival; twenty of 30 h to a place 20 h from it.
        let (short, long) = (bucket(Span::hours(2)), bucket(Span::hours(30)));
        (0..20).for_each(|_| lane.add(short));
        (0..20).for_each(|_| lane.add(long));
        let (arrived, farther) = (Arc::new(shares(&ARRIVED)), Arc::new(shares(&point(Span::hours(20)))));
        let (mut to_arrival, mut to_farther) = ([0; BANDS], [0; BANDS]);
        to_arrival[band(short)] = 20;
        to_farther[band(long)] = 20;
        let spread = Spread::new(&lane, vec![(arrived, to_arrival), (farther, to_farther)]);
        let share_before = |times: &[(i64, f64)], hours: i64| -> f64 {
            times.iter().filter(|(t, _)| *t < hours * 3_600_000).map(|(_, w)| w).sum()
        };
        // Fresh: half are short legs, arriving at once in 22.5 of 25 (the
        // band's twenty legs, and the prior's five of the overall mixture).
        let fresh = spread.arrival(Span::minutes(30)).unwrap();
        assert!((share_before(&fresh, 3) - 0.5 * 22.5 / 25.0).abs() < 1e-9, "{fresh:?}");
        assert!(share_before(&fresh, 40) < 0.65, "{fresh:?}");
        // After 10 h only the long legs are left: 20 h of leg, then mostly 20 h more.
        let lasted = spread.arrival(Span::hours(10)).unwrap();
        assert!(share_before(&lasted, 15) < 0.01, "{lasted:?}");
        assert!(share_before(&lasted, 30) < 0.35 && share_before(&lasted, 50) > 0.95, "{lasted:?}");
        // Past 30 h, no leg lasted as long: nothing to say.
        assert_eq!(spread.arrival(Span::hours(60)), None);
    }
}
