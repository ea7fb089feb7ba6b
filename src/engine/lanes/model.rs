//! One lane's legs (a histogram and where parcels went next) and one
//! partition's lanes, which publish the forecasts the predictions read.

use std::cmp::Reverse;
use std::sync::{Arc, LazyLock};

use hashbrown::HashMap;

use super::{Params, Place, BUCKETS, HALVE_AT, MAX_HOPS, MAX_LANES, MEDIAN, MINUTE_MS, NEXT, NONE, STEP};
use crate::engine::window::Sym;
use crate::time::{Span, Ts};

/// What a lane's published version says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Forecast {
    /// The chosen quantile of the leg out of this place, knowing it lasted
    /// at least the start of bucket `i` (`u32::MAX`: too few such legs), in
    /// minutes. A leg that overran the usual is then judged by the legs that
    /// overran as much: a parcel a day late at a branch is likely to stay.
    pub(super) leg: Box<[u32; BUCKETS]>,
    /// The sum of the quantiles of the legs after it, to the arrival.
    pub(super) after: Span,
    /// The longest of `leg`, in milliseconds: a parcel with more time than
    /// that left is late only once its leg lasts longer than that time.
    longest: i64,
}

impl Forecast {
    pub(super) fn new(leg: Box<[u32; BUCKETS]>, after: Span) -> Forecast {
        let longest = leg.iter().filter(|&&m| m != NONE).max().map_or(0, |&m| i64::from(m) * 60_000);
        Forecast { leg, after, longest }
    }

    /// When a parcel that entered this place at `since` is first expected
    /// after `limit`, if ever (legs past the last bucket: never).
    pub(super) fn crossing(&self, since: Ts, limit: Ts) -> Option<Ts> {
        let budget = limit.since(since).0 - self.after.0;
        if budget >= self.longest {
            return Some(since.plus(Span(budget + 1)));
        }
        let starts = &*STARTS;
        for i in 0..BUCKETS {
            let (lo, hi) = (starts[i], starts[i + 1]);
            if self.leg[i] != NONE && i64::from(self.leg[i]) * 60_000 > budget {
                return Some(since.plus(Span(lo)));
            }
            // Past the quantile, the leg is at least as long as it has lasted.
            if budget < hi {
                return Some(since.plus(Span(lo.max(budget + 1))));
            }
        }
        None
    }
}

/// How many legs must have lasted as long for the quantile of the overrun to count.
pub(super) const MIN_TAIL: u32 = 5;

pub(super) fn bucket(span: Span) -> usize {
    let minutes = span.0 as f64 / MINUTE_MS;
    if minutes < 1.0 {
        0
    } else {
        ((minutes.ln() / STEP) as usize + 1).min(BUCKETS - 1)
    }
}

/// Where each bucket starts, in milliseconds (and `i64::MAX` after the last).
pub(super) static STARTS: LazyLock<[i64; BUCKETS + 1]> = LazyLock::new(|| {
    let mut starts = [i64::MAX; BUCKETS + 1];
    for (i, s) in starts.iter_mut().enumerate().take(BUCKETS) {
        *s = if i == 0 { 0 } else { (MINUTE_MS * ((i as f64 - 1.0) * STEP).exp()) as i64 };
    }
    starts
});

/// A bucket's representative duration: its geometric middle.
pub(super) fn bucket_span(i: usize) -> Span {
    if i == 0 {
        return Span(30_000);
    }
    Span((MINUTE_MS * ((i as f64 - 0.5) * STEP).exp()) as i64)
}

#[derive(Clone)]
pub(super) struct Lane {
    pub(super) counts: [u32; BUCKETS],
    pub(super) total: u32,
    /// The places parcels went next, with how often; `NONE` marks a free entry.
    pub(super) next: [(u32, u32); NEXT],
}

impl Default for Lane {
    fn default() -> Self {
        Lane { counts: [0; BUCKETS], total: 0, next: [(NONE, 0); NEXT] }
    }
}

impl Lane {
    pub(super) fn add(&mut self, leg: Span) {
        self.counts[bucket(leg)] += 1;
        self.total += 1;
    }

    pub(super) fn went(&mut self, next: u32) {
        if let Some(e) = self.next.iter_mut().find(|e| e.0 == next) {
            e.1 += 1;
        } else if let Some(e) = self.next.iter_mut().min_by_key(|e| (e.0 != NONE, e.1)) {
            // A new place takes a free entry, or the rarest one's.
            *e = (next, 1);
        }
    }

    pub(super) fn halve(&mut self) {
        self.counts.iter_mut().for_each(|c| *c /= 2);
        self.total = self.counts.iter().sum();
        self.next.iter_mut().for_each(|e| e.1 /= 2);
    }

    /// The `q` quantile of the legs, if there are at least `min`.
    pub(super) fn quantile(&self, q: f64, min: u32) -> Option<Span> {
        let total = self.total;
        if total < min.max(1) {
            return None;
        }
        let rank = (q * f64::from(total)).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_span(i));
            }
        }
        Some(bucket_span(BUCKETS - 1))
    }

    /// The quantile of the leg given each bucket it has reached, in minutes.
    pub(super) fn overrun_quantiles(&self, q: f64) -> Box<[u32; BUCKETS]> {
        // suffix[i]: the legs in bucket i or later.
        let mut suffix = [0u32; BUCKETS + 1];
        for i in (0..BUCKETS).rev() {
            suffix[i] = suffix[i + 1] + self.counts[i];
        }
        let mut out = Box::new([NONE; BUCKETS]);
        // The quantile's bucket never moves back as the overrun grows.
        let mut j = 0;
        for i in 0..BUCKETS {
            if suffix[i] < MIN_TAIL {
                break;
            }
            let rank = (q * f64::from(suffix[i])).ceil().max(1.0) as u32;
            j = j.max(i);
            while j + 1 < BUCKETS && suffix[i] - suffix[j + 1] < rank {
                j += 1;
            }
            out[i] = (bucket_span(j).0 / 60_000).max(1) as u32;
        }
        out
    }

    /// Where parcels usually go next (ties: the lower lane).
    pub(super) fn usual_next(&self) -> Option<u32> {
        self.next.iter().filter(|e| e.0 != NONE && e.1 > 0).max_by_key(|e| (e.1, Reverse(e.0))).map(|e| e.0)
    }
}

/// The place with only its state and service: where a lane's rare long legs
/// are learnt from all the lanes alike.
pub(super) fn coarse(place: Place) -> Place {
    Place { facility: Sym::NONE, country: [0; 2], branch: Sym::NONE, ..place }
}

/// One partition's lanes.
#[derive(Default)]
pub(super) struct Model {
    pub(super) index: HashMap<Place, u32>,
    pub(super) places: Vec<Place>,
    pub(super) lanes: Vec<Lane>,
    /// Each lane's coarse lane (itself for a coarse lane).
    pub(super) coarse: Vec<u32>,
    /// The version judging now: published an epoch before it came into force.
    pub(super) in_force: Vec<Option<Arc<Forecast>>>,
    /// The version published last, in force from the next boundary.
    /// A lane whose forecast did not change shares it with `in_force`.
    pub(super) coming: Vec<Option<Arc<Forecast>>>,
}

impl Model {
    pub(super) fn lane(&mut self, place: Place) -> Option<u32> {
        if let Some(&i) = self.index.get(&place) {
            return Some(i);
        }
        let wide = coarse(place);
        let wide = if wide == place { None } else { Some(self.lane(wide)?) };
        if self.lanes.len() >= MAX_LANES {
            return None;
        }
        let i = self.lanes.len() as u32;
        self.index.insert(place, i);
        self.places.push(place);
        self.lanes.push(Lane::default());
        self.coarse.push(wide.unwrap_or(i));
        Some(i)
    }

    /// Halves the lanes that passed [`HALVE_AT`], then publishes their
    /// forecasts as the coming version; the coming one comes into force.
    pub(super) fn publish(&mut self, params: Params) {
        for lane in self.lanes.iter_mut().filter(|l| l.total > HALVE_AT) {
            lane.halve();
        }
        let fresh = self.forecasts(params);
        let coming = share(fresh, &self.coming);
        self.in_force = std::mem::replace(&mut self.coming, coming);
    }

    /// Forecasts again from the counts with new parameters, in force at once.
    pub(super) fn reforecast(&mut self, params: Params) {
        self.coming = share(self.forecasts(params), &[]);
        self.in_force = self.coming.clone();
    }

    /// Every lane's forecast from its counts.
    fn forecasts(&self, params: Params) -> Vec<Option<Forecast>> {
        let legs: Vec<Option<Span>> = self.lanes.iter().map(|l| l.quantile(MEDIAN, params.min_history)).collect();
        // The time after each lane's leg, following the usual next places.
        let mut after: Vec<Option<Option<Span>>> = vec![None; self.lanes.len()];
        for start in 0..self.lanes.len() {
            let mut path = Vec::new();
            let mut at = start as u32;
            let mut total = loop {
                if let Some(known) = after[at as usize] {
                    break known;
                }
                let next = self.lanes[at as usize].usual_next();
                path.push(at);
                match next {
                    None => break None,
                    Some(n) if self.places[n as usize].arrived() => break Some(Span::ZERO),
                    Some(_) if path.len() > MAX_HOPS => break None,
                    Some(n) => at = n,
                }
            };
            // Walk back: each lane's after is the next lane's leg plus its after.
            while let Some(lane) = path.pop() {
                after[lane as usize] = Some(total);
                if let (Some(t), Some(leg)) = (total, legs[lane as usize]) {
                    total = Some(Span(t.0 + leg.0));
                } else {
                    total = None;
                }
            }
        }
        legs.iter()
            .zip(after)
            .enumerate()
            .map(|(i, (leg, after))| {
                leg.as_ref()?;
                let mut overrun = self.lanes[i].overrun_quantiles(params.quantile);
                let wide = self.lanes[self.coarse[i] as usize].overrun_quantiles(params.quantile);
                for (own, wide) in overrun.iter_mut().zip(wide.iter()) {
                    if *own == NONE {
                        *own = *wide;
                    }
                }
                Some(Forecast::new(overrun, after.flatten()?))
            })
            .collect()
    }
}

/// Shares each forecast equal to the one before it, so that a lane's
/// unchanged forecast costs no memory twice.
pub(super) fn share(fresh: Vec<Option<Forecast>>, before: &[Option<Arc<Forecast>>]) -> Vec<Option<Arc<Forecast>>> {
    fresh
        .into_iter()
        .enumerate()
        .map(|(i, f)| match (f, before.get(i).cloned().flatten()) {
            (Some(f), Some(old)) if *old == f => Some(old),
            (f, _) => f.map(Arc::new),
        })
        .collect()
}
