//! Branch-wide aggregates: how many of a branch's parcels hit some rules in a
//! sliding event-time window, against the branch's own usual rate; and the
//! same per facility (`by = "facility"`): a hub where parcels stop moving.
//!
//! This stage is fed [`Fact`]s (a member rule fired for a parcel of the
//! branch or at the facility, or a parcel joined the branch) and a
//! watermark. It knows nothing of parcels, so it can run inside the engine
//! (replay, one process) or behind a JetStream subject keyed by the place
//! counted when partitions are split across processes: its input is a few
//! small facts per alert, not the event stream.
//!
//! Facts wait until the watermark passes them, then count in event-time
//! order, and episodes close at the exact instant their condition stops
//! holding. So the alerts depend on the set of facts only: not on the order
//! they arrived in, nor on how the watermark stepped, nor on how many
//! engines sent them. A fact seen twice (a re-sent fact after a restart)
//! counts once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use hashbrown::HashMap;

use crate::alert::{Alert, AlertId, AlertState, BranchFacts, Usual};
use crate::partition;
use crate::rules::{BranchRule, By, RuleSet, Threshold};
use crate::time::{Span, Ts};

const HOUR: Span = Span::hours(1);
/// The grain of a branch's history: a window's usual count is that of the
/// slots ending within the same window of the days before, so its edges are
/// right to this much.
const SLOT: Span = Span::minutes(10);
const DAY: Span = Span::hours(24);
/// The usual rate is learnt over at least this long, so a branch's first hour is not its norm.
const MIN_BASELINE_HOURS: i64 = 24;

/// What the stage counts. Ordered by event time; intakes (no rule) before hits at one instant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fact {
    pub at: Ts,
    /// The member rule that fired, or `None` when a parcel joined the branch.
    pub rule: Option<Arc<str>>,
    /// The parcel's branch: the place the fact counts for, or for a facility
    /// fact the branch to tell of the facility's episode (empty when unknown).
    pub branch: Arc<str>,
    /// A facility fact: it counts for the `by = "facility"` rules, at this facility.
    pub facility: Option<Arc<str>>,
    /// Tells apart facts of different parcels at one instant: the hit's alert
    /// id, or the parcel's hash for an intake.
    pub key: u128,
}

impl Fact {
    /// What the fact counts for: its facility or its branch.
    pub fn place(&self) -> &Arc<str> {
        self.facility.as_ref().unwrap_or(&self.branch)
    }

    fn by(&self) -> By {
        if self.facility.is_some() {
            By::Facility
        } else {
            By::Branch
        }
    }
}

#[derive(Default)]
struct BranchState {
    /// Hit times within the window, sorted.
    hits: VecDeque<Ts>,
    /// Intake times within the window, sorted (share thresholds).
    intake: VecDeque<Ts>,
    /// Hits per hour over the baseline, oldest first: (hour number, count).
    slots: VecDeque<(Number, u32)>,
    first_seen: Option<Ts>,
    /// The instant the open episode fired at.
    open: Option<Ts>,
    /// The usual the open episode fired against, when the place had no
    /// history of its own: it is judged against it until it has (its peers'
    /// hits come and go at instants that are not its own, and would make its
    /// end depend on when it is checked).
    opened_against: Option<Usual>,
    /// Since when the open episode's condition has not held: it ends after a
    /// whole window of that, so a branch at the edge does not flap.
    failing_since: Option<Ts>,
    /// A facility's hits by the parcels' branches: the latest hit of each,
    /// within the window (the branches its episode concerns).
    seen: BTreeMap<Arc<str>, Ts>,
}

/// One branch rule with its state per place (branch or facility).
struct Aggregate {
    id: Arc<str>,
    rule: BranchRule,
    branches: BTreeMap<Arc<str>, BranchState>,
    /// Places with an open episode: the only ones time alone can change.
    open: Vec<Arc<str>>,
    /// A rule that cold-starts from peers: its hits within the window, per
    /// peer group, sorted.
    group_hits: GroupHits,
}

type GroupHits = BTreeMap<u16, VecDeque<Ts>>;

/// Whether a place with no history of its own is judged against its peers:
/// rules comparing a branch with its own same hours (`by_hour`) by count.
fn cold_starts(rule: &BranchRule) -> bool {
    rule.by_hour && rule.window < DAY && rule.by == By::Branch && matches!(rule.threshold, Threshold::Count { .. })
}

/// Parcels that joined a place, by hour number, oldest first.
type Volume = VecDeque<(Number, u32)>;

/// Counts `n` parcels at hour `hour`.
fn add_hour(v: &mut Volume, hour: Number, n: u32) {
    match v.iter_mut().rev().find(|(h, _)| *h == hour) {
        Some((_, count)) => *count += n,
        None => {
            let i = v.partition_point(|(h, _)| *h < hour);
            v.insert(i, (hour, n));
        }
    }
}

/// Forgets the hours before `horizon`.
fn forget_before(v: &mut Volume, horizon: Number) {
    while v.front().is_some_and(|(h, _)| *h < horizon) {
        v.pop_front();
    }
}

/// The parcels of `v` from hour `from` on.
fn volume_since(v: Option<&Volume>, from: Number) -> u64 {
    v.map_or(0, |v| v.iter().filter(|(h, _)| *h >= from).map(|(_, n)| u64::from(*n)).sum())
}

/// What a place's peers (the other places of its facts partition) show in
/// the window now, for a place with no history of its own yet.
#[derive(Clone, Copy)]
struct Peers {
    /// The peers' hits in the window.
    hits: u64,
    /// The peers' parcels, and the place's, over the baseline.
    volume: u64,
    own_volume: u64,
}

pub struct BranchStage {
    aggregates: Vec<Aggregate>,
    /// The next instant an open episode may end: a hit leaves a window or an
    /// hour passes (the usual rate changes by the hour).
    next_check: Ts,
    /// For each member rule id, the aggregates that count its hits.
    by_member: BTreeMap<Arc<str>, Vec<usize>>,
    /// For each parcel rule of the pack, whether a rule by branch, and one
    /// by facility, counts it.
    member: Vec<[bool; 2]>,
    /// Facts the watermark has not passed yet.
    pending: BTreeSet<Fact>,
    /// Every fact at or before this instant is counted.
    done: Ts,
    /// Facts that came after the watermark passed them, counted late.
    late: u64,
    volumes: Volumes,
}

/// The parcels of each branch and of its peers: what a place with no
/// history of its own is judged by.
struct Volumes {
    /// Places are peers when they share a facts partition, out of this many:
    /// so a stage sees the same peers whether it runs inside one engine or
    /// behind the facts subject of its partition.
    groups: u16,
    /// Parcels that joined each branch, by hour, over `span`; and the same
    /// per peer group. Hashed: every fact looks its place up here (a
    /// national network has 30,000 of them), and nothing depends on their
    /// order but the checkpoint, which sorts them.
    by_place: HashMap<Arc<str>, Volume>,
    by_group: BTreeMap<u16, Volume>,
    /// The longest baseline of a rule that cold-starts (0 when none does).
    span: Span,
}

impl Volumes {
    /// The peer group of a place.
    fn group(&self, place: &str) -> u16 {
        partition::of(place, self.groups)
    }

    fn add(&mut self, branch: &Arc<str>, at: Ts) {
        let (hour, horizon) = (hour_of(at), hour_of(at.minus(self.span)));
        let group = self.group(branch);
        for v in [self.by_place.entry(branch.clone()).or_default(), self.by_group.entry(group).or_default()] {
            add_hour(v, hour, 1);
            forget_before(v, horizon);
        }
    }

    /// What the peers of `place` show at `now`, for a rule that cold-starts.
    fn peers(
        &self,
        rule: &BranchRule,
        group_hits: &GroupHits,
        place: &str,
        own: &VecDeque<Ts>,
        now: Ts,
    ) -> Option<Peers> {
        if !cold_starts(rule) {
            return None;
        }
        let group = self.group(place);
        let since = now.minus(rule.window);
        let within = |q: &VecDeque<Ts>| (q.len() - q.partition_point(|&t| t <= since)) as u64;
        let from = hour_of(now.minus(rule.baseline));
        let own_volume = volume_since(self.by_place.get(place), from);
        Some(Peers {
            hits: group_hits.get(&group).map_or(0, within).saturating_sub(within(own)),
            volume: volume_since(self.by_group.get(&group), from).saturating_sub(own_volume),
            own_volume,
        })
    }
}

fn insert_sorted(q: &mut VecDeque<Ts>, at: Ts) {
    let i = q.partition_point(|&t| t <= at);
    q.insert(i, at);
}

fn prune(q: &mut VecDeque<Ts>, after: Ts) {
    while q.front().is_some_and(|&t| t <= after) {
        q.pop_front();
    }
}

impl BranchStage {
    /// A stage for `set`, its places grouped into peers by their partition among `partitions`.
    pub fn new(set: &RuleSet, partitions: u16) -> BranchStage {
        let mut stage = BranchStage {
            aggregates: Vec::new(),
            next_check: Ts::MAX,
            by_member: BTreeMap::new(),
            member: Vec::new(),
            pending: BTreeSet::new(),
            done: Ts::MIN,
            late: 0,
            volumes: Volumes {
                groups: partitions.max(1),
                by_place: HashMap::new(),
                by_group: BTreeMap::new(),
                span: Span(0),
            },
        };
        stage.replace_rules(set);
        stage
    }

    /// Takes a new rule set, keeping the state of branch rules whose id survives.
    pub fn replace_rules(&mut self, set: &RuleSet) {
        let mut old: BTreeMap<Arc<str>, Aggregate> = self.aggregates.drain(..).map(|a| (a.id.clone(), a)).collect();
        self.by_member.clear();
        self.member = vec![[false; 2]; set.rules.len()];
        for (i, rule) in set.branch_rules.iter().enumerate() {
            let id: Arc<str> = Arc::from(rule.voice.id.as_str());
            let (branches, open, group_hits) =
                old.remove(&id).map(|a| (a.branches, a.open, a.group_hits)).unwrap_or_default();
            for &m in &rule.members {
                self.member[m][rule.by as usize] = true;
                self.by_member.entry(Arc::from(set.rules[m].voice.id.as_str())).or_default().push(i);
            }
            self.aggregates.push(Aggregate { id, rule: rule.clone(), branches, open, group_hits });
        }
        self.volumes.span =
            set.branch_rules.iter().filter(|r| cold_starts(r)).map(|r| r.baseline).max().unwrap_or(Span(0));
        // The new rules may end open episodes sooner: check right after what is counted.
        self.next_check = self.next_check.min(Ts(self.done.0 + 1));
    }

    /// Whether any branch rule needs intake facts (share thresholds, and
    /// the volumes behind cold starts).
    pub fn wants_intake(&self) -> bool {
        self.volumes.span > Span(0)
            || self.aggregates.iter().any(|a| matches!(a.rule.threshold, Threshold::Share { .. }))
    }

    /// Whether a branch rule counting `by` counts the hits of the pack's parcel rule `rule`.
    pub fn counts(&self, rule: usize, by: By) -> bool {
        self.member.get(rule).is_some_and(|m| m[by as usize])
    }

    /// Facts waiting for the watermark.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Facts that arrived after the watermark had passed their instant.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Takes a fact; it counts once the watermark passes it. A fact already
    /// passed counts at the next step, as if it happened just after.
    pub fn add(&mut self, mut fact: Fact) {
        let wanted = match &fact.rule {
            None => self.wants_intake(),
            Some(rule) => self.by_member.contains_key(rule),
        };
        if !wanted {
            return;
        }
        // A fact read from the facts stream has names of its own: it waits
        // with the ones the stage holds (a national network's stage holds
        // 300,000 facts at its peaks, two names each).
        if let Some((rule, _)) = fact.rule.as_ref().and_then(|r| self.by_member.get_key_value(r)) {
            fact.rule = Some(rule.clone());
        }
        if let Some((branch, _)) = self.volumes.by_place.get_key_value(&fact.branch) {
            fact.branch = branch.clone();
        }
        if fact.at <= self.done {
            self.late += 1;
            fact.at = Ts(self.done.0 + 1);
        }
        self.pending.insert(fact);
    }

    /// Counts the facts up to `watermark` in event-time order and closes the
    /// episodes whose condition stopped holding a window ago, at that instant.
    pub fn advance(&mut self, watermark: Ts, out: &mut Vec<Alert>) {
        if watermark <= self.done {
            return;
        }
        while self.pending.first().is_some_and(|f| f.at <= watermark) {
            let Some(fact) = self.pending.pop_first() else { break };
            // Checks at this instant come after all its facts: a hit leaving the
            // window as another arrives is no drop.
            self.close_until(Ts(fact.at.0 - 1), out);
            match &fact.rule {
                None => self.intake(&fact.branch, fact.at),
                Some(_) => self.hit(&fact, out),
            }
        }
        self.close_until(watermark, out);
        self.done = watermark;
    }

    fn intake(&mut self, branch: &Arc<str>, at: Ts) {
        for a in &mut self.aggregates {
            if matches!(a.rule.threshold, Threshold::Share { .. }) {
                let s = a.branches.entry(branch.clone()).or_default();
                insert_sorted(&mut s.intake, at);
            }
        }
        if self.volumes.span > Span(0) {
            self.volumes.add(branch, at);
        }
    }

    fn hit(&mut self, fact: &Fact, out: &mut Vec<Alert>) {
        let Some(aggregates) = fact.rule.as_ref().and_then(|r| self.by_member.get(r)) else {
            return;
        };
        let (place, at) = (fact.place(), fact.at);
        for &i in aggregates {
            let a = &mut self.aggregates[i];
            if a.rule.by != fact.by() {
                continue;
            }
            if cold_starts(&a.rule) {
                let q = a.group_hits.entry(self.volumes.group(place)).or_default();
                insert_sorted(q, at);
                prune(q, at.minus(a.rule.window));
            }
            let s = a.branches.entry(place.clone()).or_default();
            if a.rule.by == By::Facility && !fact.branch.is_empty() {
                s.seen.insert(fact.branch.clone(), at);
                s.seen.retain(|_, t| *t > at.minus(a.rule.window));
            }
            s.first_seen = Some(s.first_seen.map_or(at, |f| f.min(at)));
            insert_sorted(&mut s.hits, at);
            let slot = slot_of(at);
            match s.slots.iter_mut().rev().find(|(h, _)| *h == slot) {
                Some((_, n)) => *n += 1,
                None => {
                    let i = s.slots.partition_point(|(h, _)| *h < slot);
                    s.slots.insert(i, (slot, 1));
                }
            }
            prune(&mut s.hits, at.minus(a.rule.window));
            prune(&mut s.intake, at.minus(a.rule.window));
            // The oldest day's window starts a window before the baseline does.
            let baseline_start = slot_of(at.minus(a.rule.baseline).minus(a.rule.window));
            while s.slots.front().is_some_and(|(h, _)| *h < baseline_start) {
                s.slots.pop_front();
            }
            let peers = || self.volumes.peers(&a.rule, &a.group_hits, place, &s.hits, at);
            if s.open.is_some() {
                if judge(&a.rule, s, at, peers).is_some() {
                    s.failing_since = None;
                }
            } else if let Some(facts) = judge(&a.rule, s, at, peers) {
                s.open = Some(at);
                s.opened_against = Some(facts.usual);
                a.open.push(place.clone());
                // The next check finds the instant this episode may end.
                self.next_check = self.next_check.min(Ts(at.0 + 1));
                out.push(branch_alert(a, place, AlertState::Firing, at, at, facts));
            }
        }
    }

    /// Runs every episode check due at or before `limit`, in time order.
    fn close_until(&mut self, limit: Ts, out: &mut Vec<Alert>) {
        while self.next_check <= limit {
            let at = self.next_check;
            self.next_check = self.check(at, out);
        }
    }

    /// Closes the episodes whose condition has not held for a window at `now`; returns
    /// the next instant one may end.
    fn check(&mut self, now: Ts, out: &mut Vec<Alert>) -> Ts {
        let mut next = Ts::MAX;
        for a in &mut self.aggregates {
            let window = a.rule.window;
            let mut i = 0;
            while i < a.open.len() {
                let branch = a.open[i].clone();
                let Some(s) = a.branches.get_mut(&branch) else {
                    a.open.swap_remove(i);
                    continue;
                };
                prune(&mut s.hits, now.minus(window));
                prune(&mut s.intake, now.minus(window));
                let peers = || self.volumes.peers(&a.rule, &a.group_hits, &branch, &s.hits, now);
                let ends = match judge(&a.rule, s, now, peers) {
                    Some(_) => {
                        s.failing_since = None;
                        Ts::MAX
                    }
                    None => s.failing_since.get_or_insert(now).plus(window),
                };
                if ends > now {
                    let leaves = [s.hits.front(), s.intake.front()].into_iter().flatten().map(|t| t.plus(window));
                    let next_slot = Ts((now.0.div_euclid(SLOT.0) + 1) * SLOT.0);
                    next = leaves.fold(next.min(next_slot).min(ends), Ts::min);
                    i += 1;
                    continue;
                }
                s.failing_since = None;
                let usual = usual(&a.rule, s, now, peers);
                let started = s.open.take().unwrap_or(now);
                s.opened_against = None;
                let facts = facts(&a.rule, s.hits.len() as u32, usual, None);
                a.open.remove(i);
                out.push(branch_alert(a, &branch, AlertState::Resolved, now, started, facts));
            }
        }
        next
    }
}

/// The slot a hit counts in: slot `k` holds the hits in `(k, k + 1]` slots, as a
/// window holds those in `(now - window, now]`. Hits on the hour (parcels
/// all promised for one time) then count in the same windows as today's.
fn slot_of(at: Ts) -> Number {
    number((at.0 - 1).div_euclid(SLOT.0))
}

/// The slots that end at or before `t` are those numbered below this.
fn ended_by(t: Ts) -> Number {
    number(t.0.div_euclid(SLOT.0))
}

/// The hour `at` falls in.
fn hour_of(at: Ts) -> Number {
    number(at.0.div_euclid(HOUR.0))
}

/// A slot's or an hour's number since 1970. Events are dated up to 2099
/// (some 7 million slots), so four bytes hold it; a place's history keeps
/// hundreds of them, and a national network has tens of thousands of places.
type Number = i32;

/// `n` as a [`Number`], the far past and future at its ends.
fn number(n: i64) -> Number {
    n.clamp(Number::MIN.into(), Number::MAX.into()) as Number
}

/// The hits a branch usually has in one window, from its history
/// before the window (before the open episode's, if one is open): over all
/// its hours, or (`by_hour`) in the same window of each previous day it was
/// watched all through, on average. Before a whole day is known (`by_hour`),
/// the place has no normal of its own yet: its peers' hits in the window
/// per parcel, for its volume, when both are known; else none. `peers` is
/// asked only then: an episode check visits every open episode, and on a
/// national network most are judged by their own history or the usual they
/// opened against.
fn usual(rule: &BranchRule, s: &BranchState, now: Ts, peers: impl FnOnce() -> Option<Peers>) -> Usual {
    let observed = s.first_seen.map_or(0, |f| now.since(f).0 / HOUR.0);
    if rule.by_hour && rule.window < DAY {
        // The same window on each previous day the branch was watched all through.
        let (start, end, first) = (now.minus(rule.window).0, now.0, s.first_seen.unwrap_or(Ts::MAX).0);
        let days = (1..=(rule.baseline.0 / DAY.0).max(1)).filter(|d| start - d * DAY.0 >= first);
        let watched = days.clone().count();
        if watched == 0 {
            if let (Some(_), Some(usual)) = (s.open, s.opened_against) {
                return usual;
            }
            return match peers() {
                Some(p) if p.volume > 0 && p.own_volume > 0 => {
                    Usual::Network(p.hits as f64 * p.own_volume as f64 / p.volume as f64)
                }
                _ => Usual::Floor,
            };
        }
        let mut same_window = 0.0;
        for d in days {
            let (from, to) = (start - d * DAY.0, end - d * DAY.0);
            // The slots ending within the window: a burst on the hour (all of a
            // day's parcels promised for one time) counts as today's does.
            let slots = ended_by(Ts(from))..ended_by(Ts(to));
            same_window += s.slots.iter().filter(|(k, _)| slots.contains(k)).map(|(_, n)| f64::from(*n)).sum::<f64>();
        }
        return Usual::Own(same_window / watched as f64);
    }
    // An open episode is judged against the usual from before it: a long one
    // does not become its own normal.
    let asof = s.open.map_or(now, |started| started.min(now));
    let before_window = ended_by(asof.minus(rule.window));
    let before: u32 = s.slots.iter().filter(|(k, _)| *k < before_window).map(|(_, n)| n).sum();
    let hours = observed.clamp(MIN_BASELINE_HOURS, (rule.baseline.0 / HOUR.0).max(MIN_BASELINE_HOURS));
    Usual::Own(f64::from(before) / hours as f64 * (rule.window.0 as f64 / HOUR.0 as f64))
}

/// The facts of an anomaly if the branch is in one now. A place with no
/// normal of its own yet (a branch seen for the first time, or forewarn's
/// first day) is judged against its peers' rate for its volume, or with no
/// peers by the floor alone: `min_count` hits in the window is an anomaly
/// anywhere, one stall is not.
fn judge(rule: &BranchRule, s: &BranchState, now: Ts, peers: impl FnOnce() -> Option<Peers>) -> Option<BranchFacts> {
    let count = s.hits.len() as u32;
    let usual = usual(rule, s, now, peers);
    let holds = match rule.threshold {
        Threshold::Count { min, factor } => {
            count >= min && usual.value().is_none_or(|u| f64::from(count) >= factor * u)
        }
        Threshold::Share { min_share, min_volume } => {
            let volume = s.intake.len() as u32;
            volume >= min_volume.max(1) && f64::from(count) / f64::from(volume) >= min_share
        }
    };
    let volume = matches!(rule.threshold, Threshold::Share { .. }).then_some(s.intake.len() as u32);
    holds.then(|| facts(rule, count, usual, volume))
}

/// What a branch alert counted; [`branch_alert`] adds where.
fn facts(rule: &BranchRule, count: u32, usual: Usual, volume: Option<u32>) -> BranchFacts {
    BranchFacts { count, window: rule.window, usual, volume, facility: None, branches: Vec::new() }
}

/// The alert of a place's episode; a facility's names the branches of its hits in the window.
fn branch_alert(a: &Aggregate, place: &Arc<str>, state: AlertState, at: Ts, started: Ts, facts: BranchFacts) -> Alert {
    let v = &a.rule.voice;
    let facility = (a.rule.by == By::Facility).then(|| place.clone());
    let since = at.minus(a.rule.window);
    let branches = match (&facility, a.branches.get(place)) {
        (Some(_), Some(s)) => s.seen.iter().filter(|(_, t)| **t > since).map(|(b, _)| b.clone()).collect(),
        _ => Vec::new(),
    };
    let facts = BranchFacts { facility: facility.clone(), branches, ..facts };
    Alert {
        id: AlertId::new(&a.id, place, &started.text()),
        rule: a.id.clone(),
        state,
        at,
        severity: v.severity,
        audience: v.audience,
        any_hour: v.any_hour,
        branch: facility.is_none().then(|| place.clone()),
        parcel: None,
        branch_facts: Some(facts),
    }
}

mod checkpoint;
