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

use crate::alert::{Alert, AlertId, AlertState, BranchFacts};
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
    slots: VecDeque<(i64, u32)>,
    first_seen: Option<Ts>,
    /// The instant the open episode fired at.
    open: Option<Ts>,
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
    pub fn new(set: &RuleSet) -> BranchStage {
        let mut stage = BranchStage {
            aggregates: Vec::new(),
            next_check: Ts::MAX,
            by_member: BTreeMap::new(),
            member: Vec::new(),
            pending: BTreeSet::new(),
            done: Ts::MIN,
            late: 0,
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
            let (branches, open) = old.remove(&id).map(|a| (a.branches, a.open)).unwrap_or_default();
            for &m in &rule.members {
                self.member[m][rule.by as usize] = true;
                self.by_member.entry(Arc::from(set.rules[m].voice.id.as_str())).or_default().push(i);
            }
            self.aggregates.push(Aggregate { id, rule: rule.clone(), branches, open });
        }
        // The new rules may end open episodes sooner: check right after what is counted.
        self.next_check = self.next_check.min(Ts(self.done.0 + 1));
    }

    /// Whether any branch rule needs intake facts.
    pub fn wants_intake(&self) -> bool {
        self.aggregates.iter().any(|a| matches!(a.rule.threshold, Threshold::Share { .. }))
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
            if s.open.is_some() {
                if judge(&a.rule, s, at).is_some() {
                    s.failing_since = None;
                }
            } else if let Some(facts) = judge(&a.rule, s, at) {
                s.open = Some(at);
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
                let ends = match judge(&a.rule, s, now) {
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
                let usual = usual(&a.rule, s, now).unwrap_or(0.0);
                let started = s.open.take().unwrap_or(now);
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
fn slot_of(at: Ts) -> i64 {
    (at.0 - 1).div_euclid(SLOT.0)
}

/// The slots that end at or before `t` are those numbered below this.
fn ended_by(t: Ts) -> i64 {
    t.0.div_euclid(SLOT.0)
}

/// The hits a branch usually has in one window, from its history
/// before the window (before the open episode's, if one is open): over all
/// its hours, or (`by_hour`) in the same window of each previous day it was
/// watched all through, on average. `None` for `by_hour` before a whole day
/// is known: no normal, no departure from it.
fn usual(rule: &BranchRule, s: &BranchState, now: Ts) -> Option<f64> {
    let observed = s.first_seen.map_or(0, |f| now.since(f).0 / HOUR.0);
    if rule.by_hour && rule.window < DAY {
        // The same window on each previous day the branch was watched all through.
        let (start, end, first) = (now.minus(rule.window).0, now.0, s.first_seen.unwrap_or(Ts::MAX).0);
        let days: Vec<i64> = (1..=(rule.baseline.0 / DAY.0).max(1)).filter(|d| start - d * DAY.0 >= first).collect();
        if days.is_empty() {
            return None;
        }
        let mut same_window = 0.0;
        for d in &days {
            let (from, to) = (start - d * DAY.0, end - d * DAY.0);
            // The slots ending within the window: a burst on the hour (all of a
            // day's parcels promised for one time) counts as today's does.
            let slots = ended_by(Ts(from))..ended_by(Ts(to));
            same_window += s.slots.iter().filter(|(k, _)| slots.contains(k)).map(|(_, n)| f64::from(*n)).sum::<f64>();
        }
        return Some(same_window / days.len() as f64);
    }
    // An open episode is judged against the usual from before it: a long one
    // does not become its own normal.
    let asof = s.open.map_or(now, |started| started.min(now));
    let before_window = ended_by(asof.minus(rule.window));
    let before: u32 = s.slots.iter().filter(|(k, _)| *k < before_window).map(|(_, n)| n).sum();
    let hours = observed.clamp(MIN_BASELINE_HOURS, (rule.baseline.0 / HOUR.0).max(MIN_BASELINE_HOURS));
    Some(f64::from(before) / hours as f64 * (rule.window.0 as f64 / HOUR.0 as f64))
}

/// The facts of an anomaly if the branch is in one now.
fn judge(rule: &BranchRule, s: &BranchState, now: Ts) -> Option<BranchFacts> {
    let count = s.hits.len() as u32;
    let usual = usual(rule, s, now);
    let holds = match rule.threshold {
        Threshold::Count { min, factor } => usual.is_some_and(|u| count >= min && f64::from(count) >= factor * u),
        Threshold::Share { min_share, min_volume } => {
            let volume = s.intake.len() as u32;
            volume >= min_volume.max(1) && f64::from(count) / f64::from(volume) >= min_share
        }
    };
    let volume = matches!(rule.threshold, Threshold::Share { .. }).then_some(s.intake.len() as u32);
    holds.then(|| facts(rule, count, usual.unwrap_or(0.0), volume))
}

/// What a branch alert counted; [`branch_alert`] adds where.
fn facts(rule: &BranchRule, count: u32, usual: f64, volume: Option<u32>) -> BranchFacts {
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
