//! What the rest of a parcel's route usually takes, learnt from the stream
//! itself, for the `predicted` rules (`predicted_late`).
//!
//! A *lane* is a place in the network as a parcel's last state-setting scan
//! left it (facility, state, country) for the parcels going to one branch
//! with one service. Each lane learns, from the parcels passing through it,
//! how long the leg to their next scan takes (64 log-spaced buckets from
//! 1 min to three weeks, ±9 %) and where they go next. Once a day of event
//! time the lanes are *published*: for each lane with enough history, the
//! chosen quantile of its leg and the sum of the quantiles of the legs that
//! usually follow it, down to the arrival (delivered, or ready for pickup).
//! A parcel is expected at its last scan plus its lane's leg (or now, when
//! the leg overruns), plus that sum.
//!
//! The alerts stay a function of the events, not of their arrival order,
//! the watermark's steps or the deployment's split of the partitions:
//! - each partition learns its own model from its own parcels (a random
//!   1/N sample of the network), so a partition learns the same in a replay
//!   and in whichever instance owns it;
//! - a leg counts once the watermark passes its end, in event-time order; a
//!   scan uploaded out of order within the lateness splits the leg it falls
//!   in, as if it had come in order;
//! - a version is published as the watermark crosses a day boundary, with
//!   exactly the legs ended by then. Judgments until the next boundary use
//!   it, and parcels waiting on a forecast are judged again at each boundary.
//!
//! Memory is bounded: at most [`MAX_LANES`] lanes per partition (about
//! 300 bytes each), counts halved past [`HALVE_AT`] so a lane follows its
//! recent times, and the legs not yet counted are those of the last hour
//! or so of scans.

use std::cmp::Reverse;
use std::sync::LazyLock;

use hashbrown::HashMap;

use super::checkpoint::{CheckpointError, R, W};
use super::window::saved::{put_sym, sym};
use super::window::{Parcel, Sym};
use crate::event::Kind;
use crate::partition;
use crate::rules::{RuleSet, Trigger};
use crate::time::{Span, Ts};

const BUCKETS: usize = 64;
/// The width of a bucket, in natural log of minutes: 64 buckets span 1 min to ~3 weeks.
const STEP: f64 = 0.1668;
const MINUTE_MS: f64 = 60_000.0;
/// The most lanes one partition learns; legs of further lanes are counted as overflow.
pub const MAX_LANES: usize = 1 << 14;
/// Next places remembered per lane (the most frequent wins).
const NEXT: usize = 4;
/// A lane's counts are halved when they pass this, at a publication.
pub const HALVE_AT: u32 = 1 << 16;
/// The most legs followed from a lane to the arrival.
const MAX_HOPS: usize = 32;
/// How far the watermark moves between two batches of legs counted.
const SETTLE_EVERY: Span = Span::minutes(10);
/// How often the model is published, in event time.
pub const EPOCH: Span = Span::hours(24);
const NONE: u32 = u32::MAX;
/// The legs after the current one count at their median: summing medians
/// estimates the median of the sum, where summing higher quantiles would
/// overstate it; the uncertainty that matters is the current leg's.
const MEDIAN: f64 = 0.5;

/// Where a parcel stands, as its lane sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub facility: Sym,
    pub state: Kind,
    pub country: [u8; 2],
    pub branch: Sym,
    pub service: Sym,
}

impl std::hash::Hash for Place {
    /// One word for the hasher, not five fields.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let syms = u128::from(self.facility.index()) | u128::from(self.branch.index()) << 32;
        let rest = u128::from(self.service.index()) | u128::from(self.state as u8) << 32;
        let country = u128::from(u16::from_le_bytes(self.country));
        h.write_u128(syms | rest << 64 | country << 112);
    }
}

impl Place {
    pub fn of(p: &Parcel) -> Place {
        Place { facility: p.facility, state: p.state, country: p.country, branch: p.branch, service: p.service }
    }

    /// The parcel has arrived: delivered, or waiting at a pickup point.
    fn arrived(&self) -> bool {
        matches!(self.state, Kind::Delivered | Kind::ReadyForPickup | Kind::Collected)
    }
}

/// What a lane's published version says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forecast {
    /// The chosen quantile of the leg out of this place, knowing it lasted
    /// at least the start of bucket `i` (`u32::MAX`: too few such legs), in
    /// minutes. A leg that overran the usual is then judged by the legs that
    /// overran as much: a parcel a day late at a branch is likely to stay.
    pub leg: Box<[u32; BUCKETS]>,
    /// The sum of the quantiles of the legs after it, to the arrival.
    pub after: Span,
}

impl Forecast {
    /// When a parcel that entered this place at `since` is first expected
    /// after `limit`, if ever (legs past the last bucket: never).
    fn crossing(&self, since: Ts, limit: Ts) -> Option<Ts> {
        let budget = limit.since(since).0 - self.after.0;
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
const MIN_TAIL: u32 = 5;

fn bucket(span: Span) -> usize {
    let minutes = span.0 as f64 / MINUTE_MS;
    if minutes < 1.0 {
        0
    } else {
        ((minutes.ln() / STEP) as usize + 1).min(BUCKETS - 1)
    }
}

/// Where each bucket starts, in milliseconds (and `i64::MAX` after the last).
static STARTS: LazyLock<[i64; BUCKETS + 1]> = LazyLock::new(|| {
    let mut starts = [i64::MAX; BUCKETS + 1];
    for (i, s) in starts.iter_mut().enumerate().take(BUCKETS) {
        *s = if i == 0 { 0 } else { (MINUTE_MS * ((i as f64 - 1.0) * STEP).exp()) as i64 };
    }
    starts
});

/// A bucket's representative duration: its geometric middle.
fn bucket_span(i: usize) -> Span {
    if i == 0 {
        return Span(30_000);
    }
    Span((MINUTE_MS * ((i as f64 - 0.5) * STEP).exp()) as i64)
}

#[derive(Clone)]
struct Lane {
    counts: [u32; BUCKETS],
    total: u32,
    /// The places parcels went next, with how often; `NONE` marks a free entry.
    next: [(u32, u32); NEXT],
}

impl Default for Lane {
    fn default() -> Self {
        Lane { counts: [0; BUCKETS], total: 0, next: [(NONE, 0); NEXT] }
    }
}

impl Lane {
    fn add(&mut self, leg: Span) {
        self.counts[bucket(leg)] += 1;
        self.total += 1;
    }

    fn went(&mut self, next: u32) {
        if let Some(e) = self.next.iter_mut().find(|e| e.0 == next) {
            e.1 += 1;
        } else if let Some(e) = self.next.iter_mut().min_by_key(|e| (e.0 != NONE, e.1)) {
            // A new place takes a free entry, or the rarest one's.
            *e = (next, 1);
        }
    }

    fn halve(&mut self) {
        self.counts.iter_mut().for_each(|c| *c /= 2);
        self.total = self.counts.iter().sum();
        self.next.iter_mut().for_each(|e| e.1 /= 2);
    }

    /// The `q` quantile of the legs in bucket `from` or later, if at least `min` are.
    fn quantile(&self, q: f64, from: usize, min: u32) -> Option<Span> {
        let total: u32 = self.counts[from..].iter().sum();
        if total < min.max(1) {
            return None;
        }
        let rank = (q * f64::from(total)).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate().skip(from) {
            seen += c;
            if seen >= rank {
                return Some(bucket_span(i));
            }
        }
        Some(bucket_span(BUCKETS - 1))
    }

    /// The quantile of the leg given each bucket it has reached, in minutes.
    fn overrun_quantiles(&self, q: f64) -> Box<[u32; BUCKETS]> {
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
    fn usual_next(&self) -> Option<u32> {
        self.next.iter().filter(|e| e.0 != NONE && e.1 > 0).max_by_key(|e| (e.1, Reverse(e.0))).map(|e| e.0)
    }
}

/// The place with only its state and service: where a lane's rare long legs
/// are learnt from all the lanes alike.
fn coarse(place: Place) -> Place {
    Place { facility: Sym::NONE, country: [0; 2], branch: Sym::NONE, ..place }
}

/// One partition's lanes.
#[derive(Default)]
struct Model {
    index: HashMap<Place, u32>,
    places: Vec<Place>,
    lanes: Vec<Lane>,
    /// Each lane's coarse lane (itself for a coarse lane).
    coarse: Vec<u32>,
    published: Vec<Option<Forecast>>,
}

impl Model {
    fn lane(&mut self, place: Place) -> Option<u32> {
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

    /// Halves the lanes that passed [`HALVE_AT`], then forecasts.
    fn publish(&mut self, params: Params) {
        for lane in self.lanes.iter_mut().filter(|l| l.total > HALVE_AT) {
            lane.halve();
        }
        self.forecast(params);
    }

    /// Computes every lane's forecast from its counts.
    fn forecast(&mut self, params: Params) {
        let legs: Vec<Option<Span>> = self.lanes.iter().map(|l| l.quantile(MEDIAN, 0, params.min_history)).collect();
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
        self.published = legs
            .iter()
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
                Some(Forecast { leg: overrun, after: after.flatten()? })
            })
            .collect();
    }
}

/// The parameters of the pack's `predicted` rule.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Params {
    quantile: f64,
    min_history: u32,
}

/// A leg not counted yet: from a place at `from_at` to the next at the key's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leg {
    partition: u16,
    from: u32,
    to: u32,
    from_at: Ts,
}

/// Counters an operator wants to see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaneStats {
    pub legs: u64,
    /// Legs split by a scan uploaded out of order.
    pub splits: u64,
    /// Legs not learnt because their partition had [`MAX_LANES`] lanes.
    pub overflow: u64,
    pub publications: u64,
}

/// Every partition's lanes, the legs not counted yet, and the published version.
pub struct Lanes {
    /// `None` when the pack has no `predicted` rule: nothing is learnt then.
    params: Option<Params>,
    partitions: u16,
    lateness: Span,
    models: Vec<Model>,
    /// Legs by (parcel hash, end time), until the watermark passes their end.
    pending: HashMap<(u64, Ts), Leg>,
    /// The keys of `pending` in the order they came, sorted when settled.
    queue: Vec<(Ts, u64)>,
    /// Legs are counted in batches, when the watermark moved this far.
    settled_to: Ts,
    /// The day boundary of the published version, `Ts::MIN` before the first.
    published_at: Ts,
    pub stats: LaneStats,
}

fn params(set: &RuleSet) -> Option<Params> {
    set.rules.iter().find_map(|r| match r.trigger {
        Trigger::Predicted { quantile, min_history, .. } => Some(Params { quantile, min_history }),
        _ => None,
    })
}

fn floor_day(t: Ts) -> Ts {
    Ts(t.0 - t.0.rem_euclid(EPOCH.0))
}

impl Lanes {
    pub fn new(set: &RuleSet, partitions: u16, lateness: Span) -> Lanes {
        Lanes {
            params: params(set),
            partitions: partitions.max(1),
            lateness,
            models: Vec::new(),
            pending: HashMap::new(),
            queue: Vec::new(),
            settled_to: Ts::MIN,
            published_at: Ts::MIN,
            stats: LaneStats::default(),
        }
    }

    /// Whether the pack has a `predicted` rule (the engine feeds scans only then).
    pub fn active(&self) -> bool {
        self.params.is_some()
    }

    /// Takes a new pack's parameters; the forecasts follow at once.
    pub fn replace_rules(&mut self, set: &RuleSet) {
        self.params = params(set);
        match self.params {
            Some(p) => self.models.iter_mut().for_each(|m| m.forecast(p)),
            None => {
                self.models.clear();
                self.pending.clear();
                self.queue.clear();
            }
        }
    }

    pub fn lanes(&self) -> usize {
        self.models.iter().map(|m| m.lanes.len()).sum()
    }

    fn partition(&self, p: &Parcel) -> u16 {
        partition::of(p.id(), self.partitions)
    }

    fn model(&mut self, partition: u16) -> &mut Model {
        let i = usize::from(partition);
        if self.models.len() <= i {
            self.models.resize_with(i + 1, Model::default);
        }
        &mut self.models[i]
    }

    /// A leg of parcel `hash` (whose place was `from` at `from_at`) ended at `to` at `to_at`.
    pub fn observe(&mut self, p: &Parcel, hash: u64, from: Place, from_at: Ts, to_at: Ts) {
        let partition = self.partition(p);
        let model = self.model(partition);
        let (Some(from), Some(to)) = (model.lane(from), model.lane(Place::of(p))) else {
            self.stats.overflow += 1;
            return;
        };
        self.pending.insert((hash, to_at), Leg { partition, from, to, from_at });
        self.queue.push((to_at, hash));
    }

    /// A state-setting scan at `at`, within the lateness, came after a later
    /// one of its parcel (whose latest state-setting scan is at `latest`): it
    /// splits the leg it falls in, or starts the parcel's first leg. `place`
    /// makes its place from the place before it, as applying it in order would.
    pub fn insert(&mut self, p: &Parcel, hash: u64, latest: Ts, at: Ts, place: impl Fn(Place) -> Place) {
        let (mut end, mut end_place) = (latest, Place::of(p));
        while let Some(&leg) = self.pending.get(&(hash, end)) {
            if leg.from_at == at {
                return;
            }
            let model = self.model(leg.partition);
            let from = model.places[leg.from as usize];
            if leg.from_at < at {
                let Some(mid) = model.lane(place(from)) else {
                    self.stats.overflow += 1;
                    return;
                };
                self.pending.insert((hash, end), Leg { from: mid, from_at: at, ..leg });
                self.pending.insert((hash, at), Leg { to: mid, ..leg });
                self.queue.push((at, hash));
                self.stats.splits += 1;
                return;
            }
            (end, end_place) = (leg.from_at, from);
        }
        // Before every leg still pending, so before the parcel's first scan:
        // the leg into `end` would still be pending, `at` being within the lateness.
        let first = Place { facility: Sym::NONE, country: [0; 2], ..end_place };
        let partition = self.partition(p);
        let model = self.model(partition);
        let (Some(from), Some(to)) = (model.lane(place(first)), model.lane(end_place)) else {
            self.stats.overflow += 1;
            return;
        };
        self.pending.insert((hash, end), Leg { partition, from, to, from_at: at });
        self.queue.push((end, hash));
    }

    /// Counts the legs that ended at or before `upto`, in event-time order
    /// (ties by parcel), in batches of [`SETTLE_EVERY`] of event time:
    /// the order, and so the counts, do not depend on the batches.
    pub fn settle(&mut self, upto: Ts) {
        if upto < self.settled_to.plus(SETTLE_EVERY) {
            return;
        }
        self.settle_now(upto);
    }

    fn settle_now(&mut self, upto: Ts) {
        self.settled_to = upto;
        // Nearly sorted already: legs end at the newest scans.
        self.queue.sort_unstable();
        let due = self.queue.partition_point(|(to_at, _)| *to_at <= upto);
        for (to_at, hash) in self.queue.drain(..due) {
            if let Some(leg) = self.pending.remove(&(hash, to_at)) {
                let model = &mut self.models[usize::from(leg.partition)];
                let (from, span) = (leg.from as usize, to_at.since(leg.from_at));
                model.lanes[from].add(span);
                model.lanes[from].went(leg.to);
                let wide = model.coarse[from] as usize;
                if wide != from {
                    model.lanes[wide].add(span);
                }
                self.stats.legs += 1;
            }
        }
    }

    /// The next day boundary in `(from, to]` at which a version is due.
    pub fn boundary_within(&self, from: Ts, to: Ts) -> Option<Ts> {
        if !self.active() || to == Ts::MIN {
            return None;
        }
        let next = if self.published_at == Ts::MIN { floor_day(to) } else { self.published_at.plus(EPOCH) };
        (next <= to && (next > from || self.published_at == Ts::MIN)).then_some(next)
    }

    /// Counts the legs ended by `boundary` and publishes the forecasts.
    pub fn publish(&mut self, boundary: Ts) {
        self.settle_now(boundary);
        if let Some(params) = self.params {
            self.models.iter_mut().for_each(|m| m.publish(params));
        }
        self.published_at = boundary;
        self.stats.publications += 1;
    }

    /// When the next version may change a forecast: the boundary after the published one.
    fn recheck(&self, p: &Parcel) -> Ts {
        if self.published_at == Ts::MIN {
            floor_day(p.last_scan_at.minus(self.lateness))
        } else {
            self.published_at.plus(EPOCH)
        }
    }

    /// The parcel's forecast, if its lane and the lanes after it have enough history.
    fn forecast(&self, p: &Parcel) -> Option<&Forecast> {
        let model = self.models.get(usize::from(self.partition(p)))?;
        let lane = *model.index.get(&Place::of(p))?;
        model.published.get(lane as usize)?.as_ref()
    }

    /// When the parcel's expected arrival passes `limit`, judged no later
    /// than `latest`: the instant, or the next publication when this version
    /// does not say (a later one may). `None` when neither comes by `latest`.
    pub fn late_at(&self, p: &Parcel, limit: Ts, latest: Ts) -> Option<Ts> {
        let recheck = self.recheck(p);
        let at = self
            .forecast(p)
            .and_then(|f| f.crossing(p.state_at, limit))
            .map(|at| at.max(p.last_scan_at).max(self.published_at));
        match at {
            Some(at) if at <= recheck => (at <= latest).then_some(at),
            _ => (recheck <= latest).then_some(recheck),
        }
    }

    pub(super) fn save(&self, w: &mut W) {
        w.u(u64::from(self.partitions));
        w.ts(self.published_at);
        for v in [self.stats.legs, self.stats.splits, self.stats.overflow, self.stats.publications] {
            w.u(v);
        }
        w.u(self.models.len() as u64);
        for m in &self.models {
            w.u(m.places.len() as u64);
            for (place, lane) in m.places.iter().zip(&m.lanes) {
                put_sym(w, place.facility);
                w.u(place.state as u64);
                w.u(u64::from(u16::from_le_bytes(place.country)));
                put_sym(w, place.branch);
                put_sym(w, place.service);
                let used: Vec<(usize, u32)> =
                    lane.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i, *c)).collect();
                w.u(used.len() as u64);
                for (i, c) in used {
                    w.u(i as u64);
                    w.u(u64::from(c));
                }
                for (next, count) in lane.next {
                    w.u(if next == NONE { 0 } else { u64::from(next) + 1 });
                    w.u(u64::from(count));
                }
            }
            // The published version as it was: the counts moved on since.
            w.u(m.published.len() as u64);
            for f in &m.published {
                match f {
                    None => w.u(0),
                    Some(f) => {
                        w.u(1);
                        w.u(f.after.0 as u64);
                        f.leg.iter().for_each(|&v| w.u(if v == NONE { 0 } else { u64::from(v) + 1 }));
                    }
                }
            }
        }
        let mut pending: Vec<(&(u64, Ts), &Leg)> = self.pending.iter().collect();
        pending.sort_unstable_by_key(|(k, _)| **k);
        w.u(pending.len() as u64);
        for ((hash, to_at), leg) in pending {
            w.u(*hash);
            w.ts(*to_at);
            w.u(u64::from(leg.partition));
            w.u(u64::from(leg.from));
            w.u(u64::from(leg.to));
            w.ts(leg.from_at);
        }
    }

    /// Restores what [`Lanes::save`] wrote; a checkpoint made with another
    /// partition count starts the model afresh (its lanes were other samples).
    pub(super) fn load(&mut self, r: &mut R<'_>) -> Result<(), CheckpointError> {
        let partitions = r.u()?;
        self.published_at = r.ts()?;
        self.stats = LaneStats { legs: r.u()?, splits: r.u()?, overflow: r.u()?, publications: r.u()? };
        let mut models = Vec::new();
        for _ in 0..r.n(usize::from(u16::MAX) + 1, "lane models")? {
            let mut m = Model::default();
            let count = r.n(MAX_LANES, "lanes")?;
            for _ in 0..count {
                let facility = sym(r)?;
                let state = r.kind()?;
                let country =
                    u16::try_from(r.u()?).map_err(|_| CheckpointError::Corrupt("lane country".into()))?.to_le_bytes();
                let place = Place { facility, state, country, branch: sym(r)?, service: sym(r)? };
                let mut lane = Lane::default();
                for _ in 0..r.n(BUCKETS, "lane buckets")? {
                    let i = r.n(BUCKETS - 1, "lane bucket")?;
                    lane.counts[i] = r.u32()?;
                }
                lane.total = lane.counts.iter().sum();
                for e in lane.next.iter_mut() {
                    let next = r.n(count, "next lane")?;
                    *e = (if next == 0 { NONE } else { next as u32 - 1 }, r.u32()?);
                }
                m.lane(place);
                if let Some(last) = m.lanes.last_mut() {
                    *last = lane;
                }
            }
            for _ in 0..r.n(count, "forecasts")? {
                let forecast = if r.u()? == 0 {
                    None
                } else {
                    let after = Span(i64::try_from(r.u()?).map_err(|_| CheckpointError::Corrupt("forecast".into()))?);
                    let mut leg = Box::new([NONE; BUCKETS]);
                    for v in leg.iter_mut() {
                        *v = match r.u32()? {
                            0 => NONE,
                            v => v - 1,
                        };
                    }
                    Some(Forecast { leg, after })
                };
                m.published.push(forecast);
            }
            models.push(m);
        }
        let mut pending = HashMap::new();
        let mut queue = Vec::new();
        for _ in 0..r.u()? {
            let (hash, to_at) = (r.u()?, r.ts()?);
            let partition = u16::try_from(r.u()?).map_err(|_| CheckpointError::Corrupt("leg partition".into()))?;
            let leg = Leg { partition, from: r.u32()?, to: r.u32()?, from_at: r.ts()? };
            let known = |lane: u32| models.get(usize::from(partition)).is_some_and(|m| (lane as usize) < m.lanes.len());
            if !known(leg.from) || !known(leg.to) {
                return Err(CheckpointError::Corrupt("a leg names an unknown lane".into()));
            }
            pending.insert((hash, to_at), leg);
            queue.push((to_at, hash));
        }
        if partitions == u64::from(self.partitions) {
            self.models = models;
            self.pending = pending;
            self.queue = queue;
        }
        Ok(())
    }
}
