//! One lane's legs (a histogram and where parcels went next) and one
//! partition's lanes, which publish the forecasts the predictions read.

use std::cmp::Reverse;
use std::sync::{Arc, LazyLock};

use hashbrown::HashMap;

use super::{Params, Place, BUCKETS, HALVE_AT, MAX_HOPS, MAX_LANES, MAX_PLACES, MEDIAN, MINUTE_MS, NEXT, NONE, STEP};
use crate::engine::sym::{prefetch, Sym};
use crate::time::{Span, Ts};

/// What a lane's published version says. Kept in the lane's [`Versions`]:
/// most judgments need only `after` and `longest`, read there with no
/// further miss; the leg quantiles are behind a pointer, shared by the
/// versions that did not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Forecast {
    /// The sum of the quantiles of the legs after it, to the arrival.
    pub(super) after: Span,
    /// The longest of `leg`, in milliseconds: a parcel with more time than
    /// that left is late only once its leg lasts longer than that time.
    longest: i64,
    /// The chosen quantile of the leg out of this place, knowing it lasted
    /// at least the start of bucket `i` ([`NO_QUANTILE`]: too few such
    /// legs), in minutes (the last bucket's are some 33,700: 16 bits keep
    /// them to two cache lines). A leg that overran the usual is then
    /// judged by the legs that overran as much: a parcel a day late at a
    /// branch is likely to stay.
    pub(super) leg: Arc<[u16; BUCKETS]>,
}

impl Forecast {
    pub(super) fn new(leg: [u16; BUCKETS], after: Span) -> Forecast {
        let longest = leg.iter().filter(|&&m| m != NO_QUANTILE).max().map_or(0, |&m| i64::from(m) * 60_000);
        Forecast { after, longest, leg: Arc::new(leg) }
    }

    /// The same published forecast: one version carried over to the next.
    pub(super) fn same(&self, other: &Forecast) -> bool {
        Arc::ptr_eq(&self.leg, &other.leg) && self.after == other.after
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
            if self.leg[i] != NO_QUANTILE && i64::from(self.leg[i]) * 60_000 > budget {
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

/// A bucket of a forecast's `leg` with too few legs to say.
pub(super) const NO_QUANTILE: u16 = u16::MAX;

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

/// The rank of the `q` quantile among `n` legs, from 1: `⌈q·n⌉`, worked
/// out without the C library's `ceil` (a call per bucket at publications).
fn rank(q: f64, n: u32) -> u32 {
    let x = q * f64::from(n);
    let floor = x as u32;
    (if f64::from(floor) < x { floor + 1 } else { floor }).max(1)
}

/// Where each bucket starts, in milliseconds (and `i64::MAX` after the last).
pub(super) static STARTS: LazyLock<[i64; BUCKETS + 1]> = LazyLock::new(|| {
    let mut starts = [i64::MAX; BUCKETS + 1];
    for (i, s) in starts.iter_mut().enumerate().take(BUCKETS) {
        *s = if i == 0 { 0 } else { (MINUTE_MS * ((i as f64 - 1.0) * STEP).exp()) as i64 };
    }
    starts
});

/// Each bucket's representative duration: its geometric middle.
static SPANS: LazyLock<[Span; BUCKETS]> = LazyLock::new(|| {
    let mut spans = [Span(30_000); BUCKETS];
    for (i, s) in spans.iter_mut().enumerate().skip(1) {
        *s = Span((MINUTE_MS * ((i as f64 - 0.5) * STEP).exp()) as i64);
    }
    spans
});

/// Each bucket's representative duration in whole minutes, as a forecast keeps it.
static MINUTES: LazyLock<[u16; BUCKETS]> =
    LazyLock::new(|| SPANS.map(|s| (s.0 / 60_000).clamp(1, i64::from(NO_QUANTILE) - 1) as u16));

/// A bucket's representative duration.
pub(super) fn bucket_span(i: usize) -> Span {
    SPANS[i]
}

/// Laid out on cache lines, what every leg counted touches first: a leg
/// reads and writes one line for `total` and `next` and one for its bucket.
#[derive(Clone)]
#[repr(C, align(64))]
pub(super) struct Lane {
    pub(super) total: u32,
    /// The places parcels went next, with how often; `NONE` marks a free entry.
    pub(super) next: [(u32, u32); NEXT],
    pub(super) counts: [u32; BUCKETS],
}

impl Default for Lane {
    fn default() -> Self {
        Lane { counts: [0; BUCKETS], total: 0, next: [(NONE, 0); NEXT] }
    }
}

impl Lane {
    /// Counts a leg that fell in bucket `b` (see [`bucket`]).
    pub(super) fn add(&mut self, b: usize) {
        self.counts[b] += 1;
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
        let rank = rank(q, total);
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
    pub(super) fn overrun_quantiles(&self, q: f64) -> [u16; BUCKETS] {
        // suffix[i]: the legs in bucket i or later.
        let mut suffix = [0u32; BUCKETS + 1];
        for i in (0..BUCKETS).rev() {
            suffix[i] = suffix[i + 1] + self.counts[i];
        }
        let (mut out, minutes) = ([NO_QUANTILE; BUCKETS], &*MINUTES);
        // The quantile's bucket never moves back as the overrun grows.
        let mut j = 0;
        for i in 0..BUCKETS {
            if suffix[i] < MIN_TAIL {
                break;
            }
            let rank = rank(q, suffix[i]);
            j = j.max(i);
            while j + 1 < BUCKETS && suffix[i] - suffix[j + 1] < rank {
                j += 1;
            }
            out[i] = minutes[j];
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

/// Every place any partition of this engine has seen, numbered; each
/// [`Model`] keeps its lane for a place at the place's number. Every
/// state-setting scan looks its place up.
#[derive(Default)]
pub(super) struct Places {
    index: HashMap<Place, u32>,
}

const NO_LANE: u16 = u16::MAX;

impl Places {
    /// The place's number, if it has one.
    pub(super) fn number_of(&self, place: &Place) -> Option<usize> {
        self.index.get(place).map(|&n| n as usize)
    }

    /// The place's number, new if need be; `None` when [`MAX_PLACES`] places are known.
    fn number(&mut self, place: Place) -> Option<usize> {
        if let Some(&n) = self.index.get(&place) {
            return Some(n as usize);
        }
        let n = self.index.len();
        if n >= MAX_PLACES {
            return None;
        }
        self.index.insert(place, n as u32);
        Some(n)
    }
}

/// One partition's lanes.
#[derive(Default)]
pub(super) struct Model {
    /// By place number ([`Places`]): the place's lane here, or [`NO_LANE`].
    by_place: Vec<u16>,
    pub(super) places: Vec<Place>,
    pub(super) lanes: Vec<Lane>,
    /// Each lane's coarse lane (itself for a coarse lane).
    pub(super) coarse: Vec<u32>,
    /// Each lane's forecasts, side by side: a prediction reads both. Set
    /// with [`Model::set_versions`], which keeps `forecasting` in step.
    pub(super) versions: Vec<Versions>,
    /// Whether each lane has a forecast in either version. Most judgments
    /// meet a lane without one: this byte a lane stays in the cache, where
    /// reading the versions themselves missed it.
    forecasting: Vec<bool>,
}

/// A lane's forecasts, if it had enough history.
#[derive(Debug)]
pub(super) struct Versions {
    /// The version judging now: published an epoch before it came into force.
    pub(super) in_force: Option<Forecast>,
    /// The version published last, in force from the next boundary. When
    /// it did not change, it is the [same](Forecast::same) as `in_force`.
    pub(super) coming: Option<Forecast>,
}

impl Model {
    /// The lane of a place in this model, new if need be;
    /// `None` past [`MAX_LANES`] lanes or [`MAX_PLACES`] places.
    pub(super) fn lane(&mut self, places: &mut Places, place: Place) -> Option<u32> {
        let n = places.number(place)?;
        if let Some(lane) = self.lane_at(n) {
            return Some(lane);
        }
        let wide = coarse(place);
        let wide = if wide == place { None } else { Some(self.lane(places, wide)?) };
        if self.lanes.len() >= MAX_LANES {
            return None;
        }
        let i = self.lanes.len() as u32;
        if self.by_place.len() <= n {
            self.by_place.resize(n + 1, NO_LANE);
        }
        self.by_place[n] = i as u16;
        self.places.push(place);
        self.lanes.push(Lane::default());
        self.coarse.push(wide.unwrap_or(i));
        Some(i)
    }

    /// The lane of place number `n` here, if it has one.
    pub(super) fn lane_at(&self, n: usize) -> Option<u32> {
        self.by_place.get(n).filter(|&&lane| lane != NO_LANE).map(|&lane| u32::from(lane))
    }

    /// Hints the CPU to fetch what counting a leg of `lane` in bucket `b` touches.
    pub(super) fn prefetch(&self, lane: u32, b: usize) {
        if let (Some(l), Some(wide)) = (self.lanes.get(lane as usize), self.coarse.get(lane as usize)) {
            prefetch(&l.total);
            prefetch(&l.counts[b]);
            prefetch(wide);
        }
    }

    /// Halves the lanes that passed [`HALVE_AT`], then publishes their
    /// forecasts as the coming version; the coming one comes into force.
    pub(super) fn publish(&mut self, params: Params) {
        for lane in self.lanes.iter_mut().filter(|l| l.total > HALVE_AT) {
            lane.halve();
        }
        let fresh = self.forecasts(params);
        let mut before = std::mem::take(&mut self.versions).into_iter();
        let versions =
            fresh.into_iter().map(|coming| Versions { in_force: before.next().and_then(|v| v.coming), coming });
        self.set_versions(versions.collect());
    }

    /// Forecasts again from the counts with new parameters, in force at once.
    pub(super) fn reforecast(&mut self, params: Params) {
        let fresh = self.forecasts(params);
        self.set_versions(fresh.into_iter().map(|f| Versions { in_force: f.clone(), coming: f }).collect());
    }

    pub(super) fn set_versions(&mut self, versions: Vec<Versions>) {
        self.forecasting = versions.iter().map(|v| v.in_force.is_some() || v.coming.is_some()).collect();
        self.versions = versions;
    }

    /// Hints the CPU to fetch what judging a parcel in `lane` reads.
    pub(super) fn prefetch_forecasts(&self, lane: u32) {
        if let (Some(f), Some(v)) = (self.forecasting.get(lane as usize), self.versions.get(lane as usize)) {
            prefetch(f);
            prefetch(v);
        }
    }

    /// A lane's versions, when either has a forecast.
    pub(super) fn forecasts_of(&self, lane: usize) -> Option<&Versions> {
        self.forecasting.get(lane).copied().unwrap_or(false).then(|| &self.versions[lane])
    }

    /// Every lane's forecast from its counts. A forecast equal to the lane's
    /// coming one is that one: it costs no memory twice.
    fn forecasts(&self, params: Params) -> Vec<Option<Forecast>> {
        let legs: Vec<Option<Span>> = self.lanes.iter().map(|l| l.quantile(MEDIAN, params.min_history)).collect();
        // The time after each lane's leg, following the usual next places.
        let mut after: Vec<Option<Option<Span>>> = vec![None; self.lanes.len()];
        let mut path = Vec::new();
        for start in 0..self.lanes.len() {
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
        // The coarse lanes' overruns, each worked out once for all its lanes.
        let mut wides: HashMap<u32, [u16; BUCKETS]> = HashMap::new();
        legs.iter()
            .zip(after)
            .enumerate()
            .map(|(i, (leg, after))| {
                let after = after.flatten().filter(|_| leg.is_some())?;
                let mut overrun = self.lanes[i].overrun_quantiles(params.quantile);
                let c = self.coarse[i];
                let wide = wides.entry(c).or_insert_with(|| self.lanes[c as usize].overrun_quantiles(params.quantile));
                for (own, wide) in overrun.iter_mut().zip(wide.iter()) {
                    if *own == NO_QUANTILE {
                        *own = *wide;
                    }
                }
                let fresh = Forecast::new(overrun, after);
                match self.versions.get(i).and_then(|v| v.coming.as_ref()) {
                    Some(old) if *old == fresh => Some(old.clone()),
                    _ => Some(fresh),
                }
            })
            .collect()
    }
}
