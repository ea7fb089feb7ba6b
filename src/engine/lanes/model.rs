//! One lane's legs (a histogram and where parcels went next) and one
//! partition's lanes, which publish the forecasts the predictions read.

use std::sync::{Arc, LazyLock};

use hashbrown::HashMap;

use super::spread::{self, Dist, Spread};
use super::{Params, Place, BUCKETS, HALVE_AT, MAX_LANES, MEDIAN, MINUTE_MS, NEXT, NONE, STEP};
use crate::engine::sym::{prefetch, Sym};
use crate::time::{Span, Ts};

/// What a lane's published version says. Kept in the lane's [`Versions`]:
/// most judgments need only `after` and `longest`, read there with no
/// further miss; the leg quantiles are behind a pointer, shared by the
/// versions that did not change.
#[derive(Clone, Debug, PartialEq)]
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
    /// A class's or network lane's time to the arrival as a distribution
    /// (fine lanes tell their class's), for the expected arrival told.
    pub(super) spread: Option<Arc<Spread>>,
}

impl Forecast {
    pub(super) fn new(leg: [u16; BUCKETS], after: Span, spread: Option<Spread>) -> Forecast {
        let longest = leg.iter().filter(|&&m| m != NO_QUANTILE).max().map_or(0, |&m| i64::from(m) * 60_000);
        Forecast { after, longest, leg: Arc::new(leg), spread: spread.map(Arc::new) }
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
    /// For each `next` place, how often parcels went there after a leg of
    /// each [`BANDS`] band: where a parcel goes depends on how long its
    /// leg lasted (a hub's long legs are the ones abroad).
    pub(super) bands: [[u32; BANDS]; NEXT],
}

impl Default for Lane {
    fn default() -> Self {
        Lane { counts: [0; BUCKETS], total: 0, next: [(NONE, 0); NEXT], bands: [[0; BANDS]; NEXT] }
    }
}

/// The bands of leg durations the next places are counted by: eight of
/// eight buckets each (1 min, 4 min, 14 min, 55 min, 3.5 h, 13 h, 2 days,
/// 8 days, and longer).
pub(super) const BANDS: usize = BUCKETS / BAND;
const BAND: usize = 8;

/// The band of bucket `b`.
pub(super) fn band(b: usize) -> usize {
    b / BAND
}

impl Lane {
    /// Counts a leg that fell in bucket `b` (see [`bucket`]).
    pub(super) fn add(&mut self, b: usize) {
        self.counts[b] += 1;
        self.total += 1;
    }

    /// Counts a leg in bucket `b` that led to `next`.
    pub(super) fn went(&mut self, next: u32, b: usize) {
        if let Some(i) = self.next.iter().position(|e| e.0 == next) {
            self.next[i].1 += 1;
            self.bands[i][band(b)] += 1;
        } else if let Some(i) = (0..NEXT).min_by_key(|&i| (self.next[i].0 != NONE, self.next[i].1)) {
            // A new place takes a free entry, or the rarest one's.
            self.next[i] = (next, 1);
            self.bands[i] = [0; BANDS];
            self.bands[i][band(b)] = 1;
        }
    }

    pub(super) fn halve(&mut self) {
        self.counts.iter_mut().for_each(|c| *c /= 2);
        self.total = self.counts.iter().sum();
        self.next.iter_mut().for_each(|e| e.1 /= 2);
        self.bands.iter_mut().flatten().for_each(|c| *c /= 2);
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

    /// The share of the legs out of this lane whose next class has a known
    /// time to the arrival, and the mean of those times, weighted by how
    /// often parcels went there (arrivals count at zero). `None` when no
    /// next class is known.
    fn expected_after(&self, places: &[Place], rest: &[Option<i64>]) -> Option<(f64, i64)> {
        let (mut all, mut known, mut sum) = (0u64, 0u64, 0f64);
        for &(class, count) in self.next.iter().filter(|e| e.0 != NONE && e.1 > 0) {
            all += u64::from(count);
            let time = if places[class as usize].arrived() { Some(0) } else { rest[class as usize] };
            if let Some(t) = time {
                known += u64::from(count);
                sum += t as f64 * f64::from(count);
            }
        }
        (known > 0).then(|| (known as f64 / all as f64, (sum / known as f64) as i64))
    }
}

/// The place without its facility: its *class*, where the legs of every
/// facility alike are learnt (in one country, for one service, at the
/// parcel's own branch or on the way to it).
pub(super) fn class(place: Place) -> Place {
    Place { facility: Sym::NONE, ..place }
}

/// The place with only its state, its sorts and whether it is the parcel's
/// own branch: the whole network's legs, where a class too thin backs off to.
pub(super) fn network(place: Place) -> Place {
    Place { facility: Sym::NONE, country: [0; 2], service: Sym::NONE, ..place }
}

/// One partition's lanes, at three levels: a *fine* lane per place (at
/// most the configured number, the first places seen), a lane per class
/// and one per network-wide state. A leg counts in its lane and in the
/// lanes it backs off to; a place past the fine lanes is learnt in its
/// class alone. The lanes grow with the facilities, states, services and
/// countries, never with the destinations: the destination is only in the
/// `here` of a place (the parcel's last mile, at its own branch).
#[derive(Default)]
pub(super) struct Model {
    index: HashMap<Place, u32>,
    pub(super) places: Vec<Place>,
    pub(super) lanes: Vec<Lane>,
    /// The lane each backs off to when its history is thin: a fine lane's
    /// class, a class's network lane; a network lane is its own.
    pub(super) parent: Vec<u32>,
    /// How many lanes are fine.
    fine: usize,
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
    /// The lane that learns `place`: its own, new if need be while fewer
    /// than `max_fine` lanes are fine, else its class's. `None` past
    /// [`MAX_LANES`] lanes in all.
    pub(super) fn lane(&mut self, place: Place, max_fine: usize) -> Option<u32> {
        if let Some(&lane) = self.index.get(&place) {
            return Some(lane);
        }
        let (class, network) = (class(place), network(place));
        if place != class && self.fine >= max_fine {
            // Past the bound, most scans meet a known class: one probe more.
            if let Some(&lane) = self.index.get(&class) {
                return Some(lane);
            }
        }
        if place == network {
            return self.push(place, None);
        }
        let wide = self.lane(network, max_fine)?;
        if place == class {
            return self.push(place, Some(wide));
        }
        let class = self.lane(class, max_fine)?;
        if self.fine >= max_fine {
            return Some(class);
        }
        let lane = self.push(place, Some(class))?;
        self.fine += 1;
        Some(lane)
    }

    /// A new lane for `place`, backing off to `parent` (itself when `None`).
    fn push(&mut self, place: Place, parent: Option<u32>) -> Option<u32> {
        if self.lanes.len() >= MAX_LANES {
            return None;
        }
        let i = self.lanes.len() as u32;
        self.index.insert(place, i);
        self.places.push(place);
        self.lanes.push(Lane::default());
        self.parent.push(parent.unwrap_or(i));
        Some(i)
    }

    /// The lane of `place` here, its own or its class's, if either exists.
    pub(super) fn lane_of(&self, place: &Place) -> Option<u32> {
        self.index.get(place).or_else(|| self.index.get(&class(*place))).copied()
    }

    /// How many lanes are fine.
    pub(super) fn fine(&self) -> usize {
        self.fine
    }

    /// Hints the CPU to fetch what counting a leg of `lane` in bucket `b` touches.
    pub(super) fn prefetch(&self, lane: u32, b: usize) {
        if let (Some(l), Some(parent)) = (self.lanes.get(lane as usize), self.parent.get(lane as usize)) {
            prefetch(&l.total);
            prefetch(&l.counts[b]);
            // Where it went next, by band: two lines, the entry not known yet.
            prefetch(&l.bands[0]);
            prefetch(&l.bands[NEXT / 2]);
            prefetch(parent);
        }
    }

    /// Counts a leg out of `from` in bucket `b` to lane `to`, in `from` and
    /// in the lanes it backs off to. Each level learns where parcels went at
    /// its own level: a fine lane or a class the next class, a network lane
    /// the next network lane.
    pub(super) fn count(&mut self, from: u32, b: usize, to: u32) {
        let mut at = from as usize;
        loop {
            let parent = self.parent[at] as usize;
            let next = if parent == at { self.network_of(to) } else { self.class_of(to) };
            self.lanes[at].add(b);
            self.lanes[at].went(next, b);
            if parent == at {
                break;
            }
            at = parent;
        }
    }

    /// A lane's class lane: a fine lane's parent (only a fine place has a
    /// facility), else the lane itself.
    pub(super) fn class_of(&self, lane: u32) -> u32 {
        if self.places[lane as usize].facility == Sym::NONE {
            lane
        } else {
            self.parent[lane as usize]
        }
    }

    /// The network lane a lane backs off to in the end.
    fn network_of(&self, lane: u32) -> u32 {
        let mut at = lane;
        while self.parent[at as usize] != at {
            at = self.parent[at as usize];
        }
        at
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

    /// The lane that speaks for `lane`: itself, or the first lane it backs
    /// off to, with at least `min` legs.
    fn backed_off(&self, lane: usize, min: u32) -> Option<usize> {
        let mut at = lane;
        loop {
            if self.lanes[at].total >= min.max(1) {
                return Some(at);
            }
            let parent = self.parent[at] as usize;
            if parent == at {
                return None;
            }
            at = parent;
        }
    }

    /// How long each class (and network lane) takes from a parcel's entry to
    /// its arrival: its leg's median plus the mean of what its next classes
    /// take, weighted by how often parcels went there; a class with too few
    /// legs takes its network lane's median and next lanes. The sorts keep
    /// the graph from going round (a first sort leads to a second), but
    /// nothing guarantees it: it is swept until no time moves by a minute.
    fn rests(&self, min: u32) -> Vec<Option<i64>> {
        let classes: Vec<(usize, Span, usize)> = (0..self.lanes.len())
            .filter(|&i| self.class_of(i as u32) as usize == i)
            .filter_map(|i| {
                let speaks = self.backed_off(i, min)?;
                Some((i, self.lanes[speaks].quantile(MEDIAN, min)?, speaks))
            })
            .collect();
        let mut rest = vec![None; self.lanes.len()];
        for _ in 0..MAX_SWEEPS {
            let mut moved = false;
            for &(i, leg, speaks) in &classes {
                let Some((_, after)) = self.lanes[speaks].expected_after(&self.places, &rest) else { continue };
                let time = (leg.0 + after).min(MAX_REST.0);
                if rest[i].is_none_or(|r: i64| (r - time).abs() >= MINUTE_MS as i64) {
                    rest[i] = Some(time);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        rest
    }

    /// Every lane's forecast from its counts: the leg's quantiles from the
    /// lane itself, or the first lane it backs off to with `min_history`
    /// legs (buckets with too few overruns from the lanes after it), and the
    /// time after the leg from where its parcels went next. A forecast equal
    /// to the lane's coming one is that one: it costs no memory twice.
    fn forecasts(&self, params: Params) -> Vec<Option<Forecast>> {
        let rest = self.rests(params.min_history);
        let mut spreads = self.spreads(params.min_history);
        let mut overruns: HashMap<usize, [u16; BUCKETS]> = HashMap::new();
        (0..self.lanes.len())
            .map(|i| {
                let speaks = self.backed_off(i, params.min_history)?;
                let (known, after) = self.lanes[speaks].expected_after(&self.places, &rest)?;
                if known < MIN_KNOWN {
                    return None;
                }
                let mut overrun = self.overrun(speaks, params.quantile, &mut overruns);
                let mut at = speaks;
                while self.parent[at] as usize != at && overrun.contains(&NO_QUANTILE) {
                    at = self.parent[at] as usize;
                    let wide = self.overrun(at, params.quantile, &mut overruns);
                    for (own, wide) in overrun.iter_mut().zip(wide.iter()) {
                        if *own == NO_QUANTILE {
                            *own = *wide;
                        }
                    }
                }
                let fresh = Forecast::new(overrun, Span(after), spreads[i].take());
                match self.versions.get(i).and_then(|v| v.coming.as_ref()) {
                    Some(old) if *old == fresh => Some(old.clone()),
                    _ => Some(fresh),
                }
            })
            .collect()
    }

    /// Each class's and network lane's [`Spread`], from its leg (the first
    /// lane it backs off to with `min` legs speaks, as for its median, and
    /// alone: the tail of a wider lane is not the class's, a whole
    /// network's 13 h legs are not what an express parcel's 13 h mean) and
    /// its next classes' times to the arrival as distributions, swept as
    /// [`Model::rests`] sweeps the medians.
    fn spreads(&self, min: u32) -> Vec<Option<Spread>> {
        let n = self.lanes.len();
        let classes: Vec<(usize, usize, Dist)> = (0..n)
            .filter(|&i| self.class_of(i as u32) as usize == i)
            .filter_map(|i| {
                let speaks = self.backed_off(i, min)?;
                let lane = &self.lanes[speaks];
                Some((i, speaks, lane.counts.map(|c| f64::from(c) / f64::from(lane.total))))
            })
            .collect();
        let mut rest: Vec<Option<Dist>> = vec![None; n];
        for _ in 0..MAX_SPREAD_SWEEPS {
            let mut moved = false;
            // Where parcels go next was mostly seen later, so made later:
            // the last classes first settle a route in a sweep or two.
            for (i, speaks, leg) in classes.iter().rev() {
                let Some(next) = spread::known_next(&self.lanes[*speaks], &self.places, &rest, 0.0) else { continue };
                let next: Vec<_> = next.into_iter().map(|(d, bands, _)| (d, bands)).collect();
                let time = spread::through(leg, &next);
                let same = |r: &Dist| r.iter().zip(&time).all(|(a, b)| (a - b).abs() < SETTLED);
                if !rest[*i].as_ref().is_some_and(same) {
                    rest[*i] = Some(time);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        // Each place's time published once, shared by the spreads leading there.
        let arrived = Arc::new(spread::shares(&spread::ARRIVED));
        let published: Vec<Option<Arc<[u16; BUCKETS]>>> =
            rest.iter().map(|r| r.as_ref().map(|d| Arc::new(spread::shares(d)))).collect();
        let mut spreads = vec![None; n];
        for &(i, speaks, _) in classes.iter().filter(|(i, speaks, _)| i == speaks) {
            let Some(next) = spread::known_next(&self.lanes[speaks], &self.places, &rest, MIN_KNOWN) else { continue };
            let next = next
                .into_iter()
                .filter_map(|(_, bands, class)| {
                    let time = if self.places[class as usize].arrived() {
                        Some(Arc::clone(&arrived))
                    } else {
                        published[class as usize].clone()
                    };
                    Some((time?, bands))
                })
                .collect();
            spreads[i] = Some(Spread::new(&self.lanes[speaks], next));
        }
        spreads
    }

    /// A lane's overrun quantiles, worked out once per publication.
    fn overrun(&self, lane: usize, q: f64, done: &mut HashMap<usize, [u16; BUCKETS]>) -> [u16; BUCKETS] {
        *done.entry(lane).or_insert_with(|| self.lanes[lane].overrun_quantiles(q))
    }
}

/// How many sweeps the classes' distributions get to settle: routes are
/// shorter, and each sweep convolves every class (a delivery's retries go
/// round, and would take every sweep given).
const MAX_SPREAD_SWEEPS: usize = 8;
/// A distribution moving less than this in every bucket has settled.
const SETTLED: f64 = 1e-3;
/// How many sweeps the classes' times get to settle.
const MAX_SWEEPS: usize = 100;
/// A class whose parcels take longer than this to arrive has no forecast
/// (parcels going round in circles).
const MAX_REST: Span = Span::hours(24 * 60);
/// The least share of a lane's next classes whose times must be known for
/// the lane to forecast.
const MIN_KNOWN: f64 = 0.5;
