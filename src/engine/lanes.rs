//! What the rest of a parcel's route usually takes, learnt from the stream
//! itself, for the `predicted` rules (`predicted_late`).
//!
//! A *lane* learns the legs out of a place in the network, as a parcel's
//! last state-setting scan left it: how long the leg to the next scan takes
//! (64 log-spaced buckets from 1 min to three weeks, ±9 %), and which
//! *class* of place parcels went to next. Lanes come in three levels, each
//! a leg counts in:
//! - a *fine* lane per place: facility, state, country, service, and
//!   whether the facility is the parcel's own branch (its last mile: the
//!   only place where the destination says anything the facility does not);
//! - a *class* lane per place without its facility;
//! - a *network* lane per state (and last mile or not).
//!
//! The lanes grow with the network's places, never with its destinations,
//! and the fine lanes are bounded by configuration (`engine.max_lanes` per
//! partition): past it a place is learnt in its class alone. A lane with too
//! few legs backs off to its class, a class to the network, so a forecast
//! exists as soon as the network has history.
//!
//! Every 12 h of event time the lanes are *published*. Each class's time to
//! the arrival (delivered, or ready for pickup) is its leg's median plus
//! the mean of its next classes' times, weighted by how often parcels went
//! there; a lane's forecast is the chosen quantile of its own leg (of the
//! legs that overran as much, when it overran) plus the time of where its
//! parcels went next. A parcel is expected at its last scan plus its lane's
//! leg (or now, when the leg overruns), plus that time.
//!
//! The alerts stay a function of the events, not of their arrival order,
//! the watermark's steps or the deployment's split of the partitions:
//! - each partition learns its own model from its own parcels (a random
//!   1/N sample of the network), so a partition learns the same in a replay
//!   and in whichever instance owns it;
//! - a leg counts once the watermark passes its end, in event-time order; a
//!   scan uploaded out of order within the lateness splits the leg it falls
//!   in, as if it had come in order;
//! - a version is published as the watermark crosses an [`EPOCH`] boundary,
//!   with exactly the legs ended by then, and comes into force at the next
//!   boundary. The events of a boundary's first hour arrive before the
//!   watermark passes it (the lateness), and the version judging them is
//!   then already known: they need not wait. A parcel whose forecast does
//!   not cross its promise within the two versions known is judged again
//!   when the next one comes into force.
//!
//! Memory is bounded: the configured fine lanes per partition and the
//! classes (about 400 bytes each, and 144 for each leg forecast a version
//! holds), counts halved past [`HALVE_AT`] so a lane follows its recent
//! times, and the legs not yet counted are those of the last hour or so of
//! scans.

use legs::{Legs, Pending};
use model::{bucket, Forecast, Model};
use spread::Spread;

use super::parcel::{LaneRef, Parcel};
use super::sym::Sym;
use crate::event::Kind;
use crate::partition;
use crate::rules::{RuleSet, Trigger};
use crate::time::{Span, Ts};

const BUCKETS: usize = 64;
/// The width of a bucket, in natural log of minutes: 64 buckets span 1 min to ~3 weeks.
const STEP: f64 = 0.1668;
const MINUTE_MS: f64 = 60_000.0;
/// The most lanes of all levels one partition has: a lane number fits a
/// [`LaneRef`]'s 16 bits. The configuration bounds the fine lanes below it.
pub const MAX_LANES: usize = u16::MAX as usize - 1;
/// The default bound on the fine lanes of one partition.
pub const FINE_LANES: usize = 1024;
/// Next places remembered per lane (the most frequent wins).
const NEXT: usize = 4;
/// A lane's counts are halved when they pass this, at a publication.
pub const HALVE_AT: u32 = 1 << 16;
/// How far the watermark moves between two batches of legs counted.
const SETTLE_EVERY: Span = Span::minutes(10);
/// How often the model is published, in event time. A version is in force
/// from one epoch after it is published, for one epoch: forecasts are 12 to
/// 24 h old. Longer than the lateness, so that events never wait for one.
pub const EPOCH: Span = Span::hours(12);
const NONE: u32 = u32::MAX;
/// How many legs ahead the counting asks the CPU to fetch the lanes.
const PREFETCH_AHEAD: usize = 8;
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
    pub service: Sym,
    /// The facility is the parcel's own branch: its last mile.
    pub here: bool,
    /// The sorts the parcel went through before (`departed` scans, up to
    /// [`MAX_SORTS`]): a hub's first sort leads to another hub, its second
    /// to the last mile.
    pub sorts: u8,
}

/// The sorts a place tells apart; more count as this many.
const MAX_SORTS: u8 = 7;

impl std::hash::Hash for Place {
    /// One word for the hasher, not five fields.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let syms = u128::from(self.facility.index()) | u128::from(self.service.index()) << 32;
        let rest = u128::from(self.here) | u128::from(self.sorts) << 8 | u128::from(self.state as u8) << 32;
        let country = u128::from(u16::from_le_bytes(self.country));
        h.write_u128(syms | rest << 64 | country << 112);
    }
}

impl Place {
    pub fn of(p: &Parcel) -> Place {
        // The parcel's sorts count its present state's when it is a departure.
        let sorts = p.sorts.saturating_sub(u8::from(p.state == Kind::Departed)).min(MAX_SORTS);
        let here = p.facility != Sym::NONE && p.facility == p.branch;
        Place { facility: p.facility, state: p.state, country: p.country, service: p.service, here, sorts }
    }

    /// The place a scan of `state` at `facility` makes of this one, for a
    /// parcel going to `branch`.
    pub fn next(self, facility: Sym, state: Kind, country: [u8; 2], branch: Sym) -> Place {
        let here = facility != Sym::NONE && facility == branch;
        let sorts = (self.sorts + u8::from(self.state == Kind::Departed)).min(MAX_SORTS);
        Place { facility, state, country, here, sorts, ..self }
    }

    /// The same place one sort later: where a departure uploaded late puts
    /// the places after it.
    fn sorted_once_more(self) -> Place {
        Place { sorts: (self.sorts + 1).min(MAX_SORTS), ..self }
    }

    /// The parcel has arrived: delivered, or waiting at a pickup point.
    pub(super) fn arrived(&self) -> bool {
        matches!(self.state, Kind::Delivered | Kind::ReadyForPickup | Kind::Collected)
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
    /// Legs learnt in their class alone: their place had no fine lane, the
    /// partition having `engine.max_lanes` of them.
    pub overflow: u64,
    pub publications: u64,
}

/// Every partition's lanes, the legs not counted yet, and the published version.
pub struct Lanes {
    /// `None` when the pack has no `predicted` rule: nothing is learnt then.
    params: Option<Params>,
    partitions: u16,
    lateness: Span,
    /// The most fine lanes of a partition.
    max_fine: usize,
    models: Vec<Model>,
    /// The legs not counted yet, until the watermark passes their end.
    pending: Legs,
    /// Legs are counted in batches, when the watermark moved this far.
    settled_to: Ts,
    /// The boundary the last version was published at, `Ts::MIN` before the first.
    published_at: Ts,
    pub stats: LaneStats,
}

/// The `predicted` rule's parameters; a pack with none whose rules tell
/// an `estimate` learns the lanes all the same, judging a lane by its
/// median and with [`MIN_HISTORY`] legs.
fn params(set: &RuleSet) -> Option<Params> {
    let predicted = set.rules.iter().find_map(|r| match r.trigger {
        Trigger::Predicted { quantile, min_history, .. } => Some(Params { quantile, min_history }),
        _ => None,
    });
    predicted.or_else(|| {
        set.rules.iter().any(|r| r.estimate).then_some(Params { quantile: MEDIAN, min_history: MIN_HISTORY })
    })
}

/// The publications (4 days) before the spreads are told: a leg is learnt
/// when it ends, so the first days' history holds the short legs and not
/// yet the long ones, and estimates drawn from it come too early (on the
/// simulator, 17 % to 66 % of parcels arrived within the range told on the
/// first three days, 83 % to 87 % from the fourth).
const WARM_UP: u64 = 8;

/// The legs a lane needs to speak for itself, without a `predicted` rule to say.
const MIN_HISTORY: u32 = 50;

fn floor_epoch(t: Ts) -> Ts {
    Ts(t.0 - t.0.rem_euclid(EPOCH.0))
}

impl Lanes {
    pub fn new(set: &RuleSet, partitions: u16, lateness: Span, max_fine: usize) -> Lanes {
        Lanes {
            params: params(set),
            partitions: partitions.max(1),
            lateness,
            max_fine,
            models: Vec::new(),
            pending: Legs::default(),
            settled_to: Ts::MIN,
            published_at: Ts::MIN,
            stats: LaneStats::default(),
        }
    }

    /// Whether the pack has a `predicted` rule (the engine feeds scans only then).
    pub fn active(&self) -> bool {
        self.params.is_some()
    }

    /// Takes a new pack's parameters; the forecasts follow at once. True
    /// when the lanes were forgotten (the pack has no `predicted` rule left):
    /// every parcel's [`LaneRef`] must be forgotten too.
    pub fn replace_rules(&mut self, set: &RuleSet) -> bool {
        self.params = params(set);
        match self.params {
            Some(p) => {
                self.models.iter_mut().for_each(|m| m.reforecast(p));
                false
            }
            None => {
                self.models.clear();
                self.pending.clear();
                true
            }
        }
    }

    /// The lanes of every level, and how many of them are fine.
    pub fn lanes(&self) -> (usize, usize) {
        self.models.iter().fold((0, 0), |(all, fine), m| (all + m.lanes.len(), fine + m.fine()))
    }

    fn partition(&self, p: &Parcel) -> u16 {
        partition::of(p.id(), self.partitions)
    }

    /// The lane of `place` in `partition`, new if need be.
    fn lane(&mut self, partition: u16, place: Place) -> Option<u32> {
        let i = usize::from(partition);
        if self.models.len() <= i {
            self.models.resize_with(i + 1, Model::default);
        }
        self.models[i].lane(place, self.max_fine)
    }

    /// A leg of parcel `hash` ended at its present place at `to_at`; its
    /// place before was `from` (lane `known`, when the parcel had it), since
    /// `from_at`. Keeps the present place's lane in the parcel.
    pub fn observe(&mut self, p: &mut Parcel, hash: u64, (place, known): (Place, LaneRef), from_at: Ts, to_at: Ts) {
        let partition = known.get().map_or_else(|| self.partition(p), |(partition, _)| partition);
        let from = match known.get() {
            Some((_, lane)) => Some(lane),
            None => self.lane(partition, place),
        };
        let (Some(from), Some(to)) = (from, self.lane(partition, Place::of(p))) else {
            return;
        };
        if self.models[usize::from(partition)].places[from as usize] != place {
            self.stats.overflow += 1;
        }
        p.lane = LaneRef::new(partition, to as u16);
        // The parcel is judged next: its lane's forecasts come in meanwhile.
        self.models[usize::from(partition)].prefetch_forecasts(to);
        self.pending.push(Pending { to_at, hash, leg: Leg { partition, from, to, from_at } });
    }

    /// A state-setting scan at `at`, within the lateness, came after a later
    /// one of its parcel (whose latest state-setting scan is at `latest`): it
    /// splits the leg it falls in, or starts the parcel's first leg. `place`
    /// makes its place from the place before it, as applying it in order
    /// would; a departure also moves the places after it one sort on.
    pub fn insert(&mut self, p: &Parcel, hash: u64, latest: Ts, at: Ts, place: impl Fn(Place) -> Place) {
        let (mut end, mut end_place) = (latest, Place::of(p));
        // The legs after the scan, by their end.
        let mut after = Vec::new();
        while let Some(&mut Pending { leg, .. }) = self.pending.find(hash, end) {
            if leg.from_at == at {
                return;
            }
            let from = self.models[usize::from(leg.partition)].places[leg.from as usize];
            if leg.from_at < at {
                let mid_place = place(from);
                let Some(mid) = self.lane(leg.partition, mid_place) else {
                    self.stats.overflow += 1;
                    return;
                };
                if let Some(later) = self.pending.find(hash, end) {
                    later.leg = Leg { from: mid, from_at: at, ..leg };
                }
                self.pending.push(Pending { to_at: at, hash, leg: Leg { to: mid, ..leg } });
                self.stats.splits += 1;
                if mid_place.state == Kind::Departed {
                    after.push(end);
                    self.sort_once_more(hash, leg.partition, &after, mid);
                }
                return;
            }
            after.push(end);
            (end, end_place) = (leg.from_at, from);
        }
        // Before every leg still pending, so before the parcel's first scan:
        // the leg into `end` would still be pending, `at` being within the lateness.
        let first = Place {
            facility: Sym::NONE,
            country: [0; 2],
            here: false,
            sorts: 0,
            state: Kind::LabelCreated,
            ..end_place
        };
        let partition = self.partition(p);
        let mid_place = place(first);
        let moved = mid_place.state == Kind::Departed && !after.is_empty();
        let end_place = if moved { end_place.sorted_once_more() } else { end_place };
        let (Some(from), Some(to)) = (self.lane(partition, mid_place), self.lane(partition, end_place)) else {
            self.stats.overflow += 1;
            return;
        };
        self.pending.push(Pending { to_at: end, hash, leg: Leg { partition, from, to, from_at: at } });
        if moved {
            self.sort_once_more(hash, partition, &after, NONE);
        }
    }

    /// Moves the places of the parcel's legs ending at `ends` one sort on: a
    /// departure uploaded late came before them. The leg out of `mid` (the
    /// departure itself) keeps its start.
    fn sort_once_more(&mut self, hash: u64, partition: u16, ends: &[Ts], mid: u32) {
        for &end in ends {
            let Some(Pending { leg, .. }) = self.pending.find(hash, end).copied() else { continue };
            let model = &self.models[usize::from(partition)];
            let (from, to) = (model.places[leg.from as usize], model.places[leg.to as usize]);
            let from = if leg.from == mid { Some(leg.from) } else { self.lane(partition, from.sorted_once_more()) };
            let (Some(from), Some(to)) = (from, self.lane(partition, to.sorted_once_more())) else { continue };
            if let Some(pending) = self.pending.find(hash, end) {
                pending.leg = Leg { from, to, ..leg };
            }
        }
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
        // A batch's lists are not kept for the next: they would keep the
        // busiest batch's size for ever.
        let mut due = Vec::new();
        self.pending.take_until(upto, &mut due);
        let buckets: Vec<u8> = due.iter().map(|p| bucket(p.to_at.since(p.leg.from_at)) as u8).collect();
        for (i, (p, &b)) in due.iter().zip(&buckets).enumerate() {
            // The lanes are all over memory: ask for those of the legs ahead.
            if let (Some(ahead), Some(&b)) = (due.get(i + PREFETCH_AHEAD), buckets.get(i + PREFETCH_AHEAD)) {
                self.models[usize::from(ahead.leg.partition)].prefetch(ahead.leg.from, usize::from(b));
            }
            self.models[usize::from(p.leg.partition)].count(p.leg.from, usize::from(b), p.leg.to);
        }
        self.stats.legs += due.len() as u64;
    }

    /// The next boundary in `(from, to]` at which a version is due.
    pub fn boundary_within(&self, from: Ts, to: Ts) -> Option<Ts> {
        if !self.active() || to == Ts::MIN {
            return None;
        }
        let next = if self.published_at == Ts::MIN { floor_epoch(to) } else { self.published_at.plus(EPOCH) };
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

    /// The parcel's lane (its place's, or its class's), if it has one.
    fn lane_of(&self, p: &Parcel) -> Option<(&Model, usize)> {
        let (model, lane) = match p.lane.get() {
            Some((partition, lane)) => (self.models.get(usize::from(partition))?, lane),
            None => {
                let model = self.models.get(usize::from(self.partition(p)))?;
                (model, model.lane_of(&Place::of(p))?)
            }
        };
        debug_assert!(
            model.places.get(lane as usize).is_some_and(|&at| at == Place::of(p) || at == model::class(Place::of(p))),
            "a parcel's lane follows its place"
        );
        Some((model, lane as usize))
    }

    /// When the parcel is expected to arrive, as judged at `at`: instants
    /// with their shares, in time order, from its class's spread in the
    /// version in force then. `None` in the model's first days
    /// ([`WARM_UP`]), for a parcel that arrived, or when no history says
    /// how its leg goes on. A leg just begun (a scan that sets the state
    /// asks for every parcel told an estimate) is drawn once a version.
    pub fn arrival(&self, p: &Parcel, at: Ts) -> Option<Vec<(Ts, f64)>> {
        let spread = self.spread(p, at)?;
        if at <= p.state_at.get() {
            let times = spread.fresh()?;
            return Some(
                times
                    .iter()
                    .map(|&(s, share)| (p.state_at.get().plus(Span(i64::from(s) * 1000)), share.into()))
                    .collect(),
            );
        }
        let times = spread.arrival(at.since(p.state_at.get()))?;
        Some(times.into_iter().map(|(ms, share)| (at.plus(Span(ms)), share)).collect())
    }

    /// The spread of the parcel's class in the version in force at `at`;
    /// none in the model's first days, for a parcel that arrived, and for
    /// one its sender still has (only a label): when it comes is up to the
    /// sender, not the network (told anyway, 39 % of such estimates came
    /// true on national-cn).
    fn spread(&self, p: &Parcel, at: Ts) -> Option<&Spread> {
        if self.stats.publications < WARM_UP || Place::of(p).arrived() || p.state == Kind::LabelCreated {
            return None;
        }
        let (model, lane) = self.lane_of(p)?;
        // Only classes and network lanes have spreads: a fine lane tells its class's.
        let versions = model.forecasts_of(model.class_of(lane as u32) as usize)?;
        let version = if at >= self.published_at.plus(EPOCH) { &versions.coming } else { &versions.in_force };
        version.as_ref()?.spread.as_deref()
    }

    /// When the parcel's expected arrival passes `limit`, judged no later
    /// than `latest`: the instant, or the boundary at which a version not
    /// published yet comes into force (it may say). `None` when neither
    /// comes by `latest`.
    pub fn late_at(&self, p: &Parcel, limit: Ts, latest: Ts) -> Option<Ts> {
        if self.published_at == Ts::MIN {
            // Nothing is published: the first version comes into force an
            // epoch after the boundary the watermark crosses first.
            let first = floor_epoch(p.last_scan_at.get().minus(self.lateness)).plus(EPOCH);
            return (first <= latest).then_some(first);
        }
        let (now, next, after) =
            (self.published_at, self.published_at.plus(EPOCH), self.published_at.plus(Span(2 * EPOCH.0)));
        if let Some((model, lane)) = self.lane_of(p) {
            let versions = model.forecasts_of(lane);
            let (in_force, coming) =
                (versions.and_then(|v| v.in_force.as_ref()), versions.and_then(|v| v.coming.as_ref()));
            let crossing = |f: &Forecast| f.crossing(p.state_at.get(), limit).map(|at| at.max(p.last_scan_at.get()));
            let first = in_force.and_then(crossing);
            let second = match (in_force, coming) {
                (Some(a), Some(b)) if a.same(b) => first,
                _ => coming.and_then(crossing),
            };
            for (at, from, until) in [(first, now, next), (second, next, after)] {
                if let Some(at) = at.map(|at| at.max(from)).filter(|&at| at < until) {
                    return (at <= latest).then_some(at);
                }
            }
        }
        (after <= latest).then_some(after)
    }
}

mod checkpoint;
mod legs;
mod model;
mod spread;
