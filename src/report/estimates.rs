//! How often the expected arrivals told came true: every estimate of a
//! rule marked `estimate = true`, against the parcel's first delivered,
//! ready or collected scan, by rule, by what was told (a range within a
//! day, a day, or days; see `engine/expected.rs`) and by the kind of leg
//! the parcel was on (its state); and what the revised
//! estimates changed: whether the one they replaced was wrong, and whether
//! the last told came true more often than the first.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{percent, share};
use crate::event::Kind;
use crate::time::Ts;

/// How many expected arrivals told came true.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Within {
    /// Firings of the rules that tell one (`estimate = true`; not counted by kind).
    pub firings: u64,
    /// Those that told one: the lanes had enough history of the parcel's place.
    pub told: u64,
    /// The parcel arrived (delivered, or ready at a pickup point) between the two instants told.
    pub within: u64,
    pub share: Option<f64>,
}

impl Within {
    fn add(&mut self, within: bool) {
        self.told += 1;
        self.within += u64::from(within);
        self.share = share(self.within, self.told);
    }
}

/// What the revised estimates changed for the customers told one.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Revisions {
    /// Parcels whose customer was told an expected arrival…
    pub parcels: u64,
    /// …whose first one came true…
    pub first_within: Option<f64>,
    /// …and whose last one did, after the revisions (and later delay messages)…
    pub last_within: Option<f64>,
    /// …and whose last but for the revisions did.
    pub last_unrevised_within: Option<f64>,
    /// Revised estimates told (firings of a `revised` rule)…
    pub revised: u64,
    /// …that replaced one that would not have come true: the news was needed.
    pub replaced_wrong: u64,
    pub replaced_wrong_share: Option<f64>,
}

impl Revisions {
    /// Counts one parcel's estimates told, in the order told (whether each
    /// is a revision, and its range), against its arrival.
    fn add(&mut self, told: &[(bool, (Ts, Ts))], arrived_at: Ts, tally: &mut [u64; 3]) {
        let (Some(first), Some(last)) = (told.first(), told.last()) else { return };
        let unrevised = told.iter().rev().find(|(revision, _)| !revision).unwrap_or(first);
        let within = |(from, to): (Ts, Ts)| (from..=to).contains(&arrived_at);
        self.parcels += 1;
        for (n, (_, range)) in tally.iter_mut().zip([first, last, unrevised]) {
            *n += u64::from(within(*range));
        }
        for pair in told.windows(2).filter(|pair| pair[1].0) {
            self.revised += 1;
            self.replaced_wrong += u64::from(!within(pair[0].1));
        }
        [self.first_within, self.last_within, self.last_unrevised_within] = tally.map(|n| share(n, self.parcels));
        self.replaced_wrong_share = share(self.replaced_wrong, self.revised);
    }
}

/// The expected arrivals told, against the real arrivals.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Estimates {
    pub all: Within,
    pub by_rule: BTreeMap<String, Within>,
    /// `hours` (a range within a day, the goal 90 %), `day` (one whole
    /// day, the goal 80 %) or `days` (whole days, 90 %).
    pub by_kind: BTreeMap<&'static str, Within>,
    /// By the kind of lane the parcel was on: its state when told (in
    /// transit, at a hub or branch, in customs, out for delivery…).
    pub by_state: BTreeMap<&'static str, Within>,
    pub revisions: Revisions,
    /// The parcels whose first, last, and last unrevised estimates came true.
    #[serde(skip)]
    came_true: [u64; 3],
}

/// What an expected arrival from `from` to `to` told, by its length: whole
/// days are 23 to 25 h each (a change of clocks), a range within a day less.
fn told_kind(from: Ts, to: Ts) -> &'static str {
    match to.0 - from.0 {
        d if d < 23 * 3_600_000 => "hours",
        d if d <= 25 * 3_600_000 => "day",
        _ => "days",
    }
}

impl Estimates {
    /// Counts one parcel's firings of the rules that tell an estimate, in
    /// the order told: rule, the parcel's state, what it told (from, to),
    /// and whether it is a revision; against its arrival (`Ts::MAX`: never).
    pub(super) fn add_parcel(
        &mut self,
        firings: impl Iterator<Item = (String, Option<Kind>, Option<(Ts, Ts)>, bool)>,
        arrived_at: Ts,
    ) {
        let mut told = Vec::new();
        for (rule, state, range, revision) in firings {
            self.add(rule, state, range, arrived_at);
            told.extend(range.map(|range| (revision, range)));
        }
        self.revisions.add(&told, arrived_at, &mut self.came_true);
    }

    /// Counts a firing of `rule`, and what it told (from, to) against the
    /// parcel's arrival.
    fn add(&mut self, rule: String, state: Option<Kind>, told: Option<(Ts, Ts)>, arrived_at: Ts) {
        let by_rule = self.by_rule.entry(rule).or_default();
        by_rule.firings += 1;
        self.all.firings += 1;
        let Some((from, to)) = told else { return };
        let within = (from..=to).contains(&arrived_at);
        by_rule.add(within);
        self.all.add(within);
        self.by_kind.entry(told_kind(from, to)).or_default().add(within);
        self.by_state.entry(state.map_or("unknown", Kind::as_str)).or_default().add(within);
    }

    /// The report's lines about them; none when none was told.
    pub(super) fn text(&self) -> String {
        if self.all.told == 0 {
            return String::new();
        }
        let within = |w: &Within| format!("{} of {} ({})", w.within, w.told, percent(w.share));
        let by = |m: &mut dyn Iterator<Item = (&str, &Within)>| {
            m.map(|(k, w)| format!("{k} {}", within(w))).collect::<Vec<_>>().join(", ")
        };
        let v = &self.revisions;
        format!(
            "\nexpected arrivals told ({} of {} firings): {} arrived within\n  by what was told: {}\n  by rule: {}\n  \
             by the parcel's state: {}\n  \
             revised {} times, {} of them ({}) replacing one that would not have come true; \
             of the {} parcels told one, the first came true for {}, the last for {} ({} but for the revisions)\n",
            self.all.told,
            self.all.firings,
            within(&self.all),
            by(&mut self.by_kind.iter().map(|(k, w)| (*k, w))),
            by(&mut self.by_rule.iter().map(|(k, w)| (k.as_str(), w))),
            by(&mut self.by_state.iter().map(|(k, w)| (*k, w))),
            v.revised,
            v.replaced_wrong,
            percent(v.replaced_wrong_share),
            v.parcels,
            percent(v.first_within),
            percent(v.last_within),
            percent(v.last_unrevised_within),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::io::{self, Read};

    use super::super::run;
    use crate::engine::Split;
    use crate::replay::{self, Sinks};
    use crate::rules::RuleSet;
    use crate::time::Ts;

    /// The estimate accuracy against a slow, obvious count: every firing
    /// line of the replay with an expected arrival, joined by parcel with the
    /// first delivered, ready or collected scan of the events. Six simulated
    /// days, so that the lanes are past their warm-up (a network this small
    /// tells few: most classes have too few legs of their own).
    #[test]
    fn the_expected_arrivals_told_are_checked_against_the_real_arrivals() {
        use crate::simulate::{self, Network, Shape};
        let set = RuleSet::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).unwrap();
        let start = Ts::parse_rfc3339("2026-11-16T00:00:00Z").unwrap();
        let net = Network {
            parcels: 20_000,
            seed: 7,
            start,
            days: 6.0,
            shape: Shape::default(),
            reaction: Default::default(),
        };
        let mut events = Vec::new();
        simulate::write(&net, &mut events, |_| {}).unwrap();
        let open = || -> io::Result<Box<dyn Read>> { Ok(Box::new(io::Cursor::new(events.clone()))) };
        let r = run(&mut Split::new(set.clone(), crate::engine::Config::default()), &set, 0.0, open).unwrap();

        let mut alerts = Vec::new();
        let mut sinks = Sinks { alerts: &mut alerts, rejects: None };
        let mut engine = Split::new(set.clone(), crate::engine::Config::default());
        replay::run(&mut io::Cursor::new(events.clone()), &mut engine, &mut sinks, &mut |_| {}).unwrap();
        let mut arrived: HashMap<String, Ts> = HashMap::new();
        for line in events.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let e: serde_json::Value = serde_json::from_slice(line).unwrap();
            if ["delivered", "ready_for_pickup", "collected"].contains(&e["kind"].as_str().unwrap()) {
                let at = Ts::parse_rfc3339(e["at"].as_str().unwrap()).unwrap();
                let first = arrived.entry(e["parcel_id"].as_str().unwrap().to_string()).or_insert(at);
                *first = (*first).min(at);
            }
        }
        let (mut told, mut within, mut rules) = (0u64, 0u64, BTreeSet::new());
        // Each parcel's estimates in the order told: a revision?, from, to, told at.
        let mut by_parcel: HashMap<String, Vec<(bool, Ts, Ts, Ts)>> = HashMap::new();
        let mut by_state: std::collections::BTreeMap<String, super::Within> = Default::default();
        let mut last_told: HashMap<String, String> = HashMap::new();
        for line in alerts.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let a: serde_json::Value = serde_json::from_slice(line).unwrap();
            let (Some(from), Some(to)) = (a["expected_from"].as_str(), a["expected_to"].as_str()) else { continue };
            assert_eq!(a["state"], "firing", "only firings tell an expected arrival");
            let (from, to) = (Ts::parse_rfc3339(from).unwrap(), Ts::parse_rfc3339(to).unwrap());
            assert!(from < to, "{a}");
            told += 1;
            rules.insert(a["rule"].as_str().unwrap().to_string());
            let id = a["parcel_id"].as_str().unwrap();
            let came_true = arrived.get(id).is_some_and(|&at| from <= at && at <= to);
            within += u64::from(came_true);
            let state = by_state.entry(a["parcel_state"].as_str().unwrap().to_string()).or_default();
            (state.told, state.within) = (state.told + 1, state.within + u64::from(came_true));
            state.share = Some((state.within as f64 / state.told as f64 * 10_000.0).round() / 10_000.0);
            let revision = a["rule"] == "revised_estimate";
            if revision {
                let last = last_told.get(id).map(String::as_str);
                assert_eq!(a["revises"].as_str(), last, "{a}: a revision names the estimate it revises");
            }
            last_told.insert(id.to_string(), a["alert_id"].as_str().unwrap().to_string());
            let told_at = Ts::parse_rfc3339(a["at"].as_str().unwrap()).unwrap();
            by_parcel.entry(id.to_string()).or_default().push((revision, from, to, told_at));
        }
        revisions_agree(&r.estimates.revisions, &events, &arrived, &by_parcel);
        assert_eq!((r.estimates.all.told, r.estimates.all.within), (told, within));
        let told_by: BTreeSet<String> =
            r.estimates.by_rule.iter().filter(|(_, w)| w.told > 0).map(|(k, _)| k.clone()).collect();
        assert_eq!(told_by, rules);
        assert!(r.estimates.all.firings > told, "firings without an estimate are counted too");
        assert_eq!(r.estimates.by_kind.values().map(|w| w.told).sum::<u64>(), told);
        let got: std::collections::BTreeMap<String, super::Within> =
            r.estimates.by_state.iter().map(|(k, w)| (k.to_string(), w.clone())).collect();
        assert_eq!(got, by_state, "by the parcel's state when told");
        // Only rules the pack marks `estimate` tell one, and most came true.
        let marked: Vec<&str> = set.rules.iter().filter(|r| r.estimate).map(|r| r.voice.id.as_str()).collect();
        assert!(rules.iter().all(|r| marked.contains(&r.as_str())), "{rules:?} vs {marked:?}");
        assert!(told > 100 && within as f64 > 0.8 * told as f64, "{within} of {told}");
    }

    /// Every revision told follows an estimate told on another of the
    /// customer's days and shares no day with it; the report's revision
    /// figures are those of the same lines, counted the slow way.
    fn revisions_agree(
        got: &super::Revisions,
        events: &[u8],
        arrived: &HashMap<String, Ts>,
        by_parcel: &HashMap<String, Vec<(bool, Ts, Ts, Ts)>>,
    ) {
        let mut zones: HashMap<String, chrono_tz::Tz> = HashMap::new();
        for line in events.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let e: serde_json::Value = serde_json::from_slice(line).unwrap();
            if let Some(tz) = e["recipient"]["tz"].as_str() {
                zones.insert(e["parcel_id"].as_str().unwrap().to_string(), tz.parse().unwrap());
            }
        }
        let (mut revised, mut replaced_wrong, mut first, mut last, mut unrevised) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for (id, told) in by_parcel {
            let tz = zones.get(id).copied().unwrap_or(chrono_tz::Tz::UTC);
            let day = |t: Ts| chrono::DateTime::from_timestamp_millis(t.0).unwrap().with_timezone(&tz).date_naive();
            let came_true =
                |&(_, from, to, _): &(bool, Ts, Ts, Ts)| arrived.get(id).is_some_and(|&at| from <= at && at <= to);
            assert!(!told[0].0, "{id}: a revision with nothing told before it");
            for i in 1..told.len() {
                let ((_, from, to, at), (revision, new_from, new_to, new_at)) = (told[i - 1], told[i]);
                if !revision {
                    continue;
                }
                revised += 1;
                replaced_wrong += u64::from(!came_true(&told[i - 1]));
                assert_ne!(day(new_at), day(at), "{id}: two estimates told on one day");
                let (new_last, last) = (day(Ts(new_to.0 - 1)), day(Ts(to.0 - 1)));
                assert!(
                    day(new_from) > last || new_last < day(from),
                    "{id}: a revision sharing a day with what was told"
                );
            }
            first += u64::from(came_true(&told[0]));
            last += u64::from(came_true(told.last().unwrap()));
            unrevised += u64::from(told.iter().rev().find(|t| !t.0).is_some_and(came_true));
        }
        let parcels = by_parcel.len() as u64;
        assert!(revised > 0, "the network has revisions to check");
        assert_eq!((got.parcels, got.revised, got.replaced_wrong), (parcels, revised, replaced_wrong));
        let share = |n: u64| Some((n as f64 / parcels as f64 * 10_000.0).round() / 10_000.0);
        assert_eq!(
            (got.first_within, got.last_within, got.last_unrevised_within),
            (share(first), share(last), share(unrevised))
        );
    }
}
