//! Branch-wide aggregates: how many of a branch's parcels hit some rules in a
//! sliding event-time window, against the branch's own usual rate.
//!
//! This stage is fed hits (a member rule fired for a parcel of the branch) and
//! intakes (a parcel was first seen for the branch), and the watermark. It
//! knows nothing of parcels, so it can run beside the engine (replay, one
//! process) or behind a branch-keyed subject when partitions are split across
//! processes: its input is a few small facts per alert, not the event stream.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::alert::{Alert, AlertId, AlertState, BranchFacts};
use crate::rules::{BranchRule, RuleSet, Threshold};
use crate::time::{Span, Ts};

const HOUR: Span = Span::hours(1);
/// The usual rate is learnt over at least this long, so a branch's first hour is not its norm.
const MIN_BASELINE_HOURS: i64 = 24;

#[derive(Default)]
struct BranchState {
    /// Hit times within the window, sorted.
    hits: VecDeque<Ts>,
    /// Intake times within the window, sorted (share thresholds).
    intake: VecDeque<Ts>,
    /// Hits per hour over the baseline, oldest first: (hour number, count).
    hourly: VecDeque<(i64, u32)>,
    first_seen: Option<Ts>,
    /// The instant the open episode fired at.
    open: Option<Ts>,
}

/// One branch rule with its per-branch state.
struct Aggregate {
    id: Arc<str>,
    rule: BranchRule,
    branches: BTreeMap<Arc<str>, BranchState>,
    /// Branches with an open episode: the only ones the watermark alone can change.
    open: Vec<Arc<str>>,
}

pub struct BranchStage {
    aggregates: Vec<Aggregate>,
    /// Before this instant no open episode can end: no hit leaves a window
    /// and no hour passes (the usual rate changes by the hour).
    next_check: Ts,
    /// For each parcel rule, the aggregates that count its hits.
    by_member: Vec<Vec<usize>>,
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
        let mut stage = BranchStage { aggregates: Vec::new(), next_check: Ts::MIN, by_member: Vec::new() };
        stage.replace_rules(set);
        stage
    }

    /// Takes a new rule set, keeping the state of branch rules whose id survives.
    pub fn replace_rules(&mut self, set: &RuleSet) {
        let mut old: BTreeMap<Arc<str>, Aggregate> = self.aggregates.drain(..).map(|a| (a.id.clone(), a)).collect();
        self.by_member = vec![Vec::new(); set.rules.len()];
        for (i, rule) in set.branch_rules.iter().enumerate() {
            let id: Arc<str> = Arc::from(rule.voice.id.as_str());
            let (branches, open) = old.remove(&id).map(|a| (a.branches, a.open)).unwrap_or_default();
            for &m in &rule.members {
                self.by_member[m].push(i);
            }
            self.aggregates.push(Aggregate { id, rule: rule.clone(), branches, open });
        }
    }

    /// Whether any branch rule needs intake counts.
    pub fn wants_intake(&self) -> bool {
        self.aggregates.iter().any(|a| matches!(a.rule.threshold, Threshold::Share { .. }))
    }

    pub fn intake(&mut self, branch: &Arc<str>, at: Ts) {
        for a in &mut self.aggregates {
            if matches!(a.rule.threshold, Threshold::Share { .. }) {
                let s = a.branches.entry(branch.clone()).or_default();
                insert_sorted(&mut s.intake, at);
            }
        }
    }

    /// A parcel rule fired for a parcel of `branch` at `at`.
    pub fn hit(&mut self, rule: usize, branch: &Arc<str>, at: Ts, out: &mut Vec<Alert>) {
        let Some(aggregates) = self.by_member.get(rule) else {
            return;
        };
        for &i in aggregates {
            let a = &mut self.aggregates[i];
            let s = a.branches.entry(branch.clone()).or_default();
            s.first_seen = Some(s.first_seen.map_or(at, |f| f.min(at)));
            insert_sorted(&mut s.hits, at);
            let hour = at.0.div_euclid(HOUR.0);
            match s.hourly.iter_mut().rev().find(|(h, _)| *h == hour) {
                Some((_, n)) => *n += 1,
                None => {
                    let i = s.hourly.partition_point(|(h, _)| *h < hour);
                    s.hourly.insert(i, (hour, 1));
                }
            }
            let newest = *s.hits.back().unwrap_or(&at);
            prune(&mut s.hits, newest.minus(a.rule.window));
            prune(&mut s.intake, newest.minus(a.rule.window));
            let baseline_start = newest.minus(a.rule.baseline).0.div_euclid(HOUR.0);
            while s.hourly.front().is_some_and(|(h, _)| *h < baseline_start) {
                s.hourly.pop_front();
            }
            if s.open.is_none() {
                if let Some(facts) = judge(&a.rule, s, newest) {
                    s.open = Some(at);
                    a.open.push(branch.clone());
                    self.next_check = Ts::MIN;
                    out.push(branch_alert(a, branch, AlertState::Firing, at, at, facts));
                }
            }
        }
    }

    /// Closes the episodes whose condition no longer holds at `watermark`.
    pub fn advance(&mut self, watermark: Ts, out: &mut Vec<Alert>) {
        if watermark < self.next_check {
            return;
        }
        let next_hour = Ts((watermark.0.div_euclid(HOUR.0) + 1) * HOUR.0);
        let mut next_check = next_hour;
        for a in &mut self.aggregates {
            let window = a.rule.window;
            let mut i = 0;
            while i < a.open.len() {
                let branch = a.open[i].clone();
                let Some(s) = a.branches.get_mut(&branch) else {
                    a.open.swap_remove(i);
                    continue;
                };
                prune(&mut s.hits, watermark.minus(window));
                prune(&mut s.intake, watermark.minus(window));
                if judge(&a.rule, s, watermark).is_some() {
                    let leaves = [s.hits.front(), s.intake.front()].into_iter().flatten().map(|t| t.plus(window));
                    next_check = leaves.fold(next_check, Ts::min);
                    i += 1;
                    continue;
                }
                let started = s.open.take().unwrap_or(watermark);
                let facts = BranchFacts {
                    count: s.hits.len() as u32,
                    window,
                    usual: usual(&a.rule, s, watermark),
                    volume: None,
                };
                a.open.remove(i);
                out.push(branch_alert(a, &branch, AlertState::Resolved, watermark, started, facts));
            }
        }
        self.next_check = next_check;
    }
}

/// The hits a branch usually has in one window, from its hourly history before the window.
fn usual(rule: &BranchRule, s: &BranchState, now: Ts) -> f64 {
    let window_start_hour = now.minus(rule.window).0.div_euclid(HOUR.0);
    let before: u32 = s.hourly.iter().filter(|(h, _)| *h < window_start_hour).map(|(_, n)| n).sum();
    let observed = s.first_seen.map_or(0, |f| now.since(f).0 / HOUR.0);
    let hours = observed.clamp(MIN_BASELINE_HOURS, (rule.baseline.0 / HOUR.0).max(MIN_BASELINE_HOURS));
    f64::from(before) / hours as f64 * (rule.window.0 as f64 / HOUR.0 as f64)
}

/// The facts of an anomaly if the branch is in one now.
fn judge(rule: &BranchRule, s: &BranchState, now: Ts) -> Option<BranchFacts> {
    let count = s.hits.len() as u32;
    let usual = usual(rule, s, now);
    let holds = match rule.threshold {
        Threshold::Count { min, factor } => count >= min && f64::from(count) >= factor * usual,
        Threshold::Share { min_share, min_volume } => {
            let volume = s.intake.len() as u32;
            volume >= min_volume.max(1) && f64::from(count) / f64::from(volume) >= min_share
        }
    };
    let volume = matches!(rule.threshold, Threshold::Share { .. }).then_some(s.intake.len() as u32);
    holds.then_some(BranchFacts { count, window: rule.window, usual, volume })
}

fn branch_alert(a: &Aggregate, branch: &Arc<str>, state: AlertState, at: Ts, started: Ts, facts: BranchFacts) -> Alert {
    let v = &a.rule.voice;
    Alert {
        id: AlertId::new(&a.id, branch, &started.text()),
        rule: a.id.clone(),
        state,
        at,
        severity: v.severity,
        audience: v.audience,
        any_hour: v.any_hour,
        branch: Some(branch.clone()),
        parcel: None,
        branch_facts: Some(facts),
    }
}

mod saved;
