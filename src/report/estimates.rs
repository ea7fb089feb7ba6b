//! How often the expected arrivals told came true: every estimate of a
//! rule marked `estimate = true`, against the parcel's first delivered,
//! ready or collected scan, by rule and by what was told (a range within a
//! day, a day, or days; see `engine/expected.rs`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{percent, share};
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

/// The expected arrivals told, against the real arrivals.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Estimates {
    pub all: Within,
    pub by_rule: BTreeMap<String, Within>,
    /// `hours` (a range within a day, the goal 90 %), `day` (one whole
    /// day, the goal 80 %) or `days` (whole days, 90 %).
    pub by_kind: BTreeMap<&'static str, Within>,
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
    /// Counts a firing of `rule`, and what it told (from, to) against the
    /// parcel's arrival (`Ts::MAX`: never).
    pub(super) fn add(&mut self, rule: String, told: Option<(Ts, Ts)>, arrived_at: Ts) {
        let by_rule = self.by_rule.entry(rule).or_default();
        by_rule.firings += 1;
        self.all.firings += 1;
        let Some((from, to)) = told else { return };
        let within = (from..=to).contains(&arrived_at);
        by_rule.add(within);
        self.all.add(within);
        self.by_kind.entry(told_kind(from, to)).or_default().add(within);
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
        format!(
            "\nexpected arrivals told ({} of {} firings): {} arrived within\n  by what was told: {}\n  by rule: {}\n",
            self.all.told,
            self.all.firings,
            within(&self.all),
            by(&mut self.by_kind.iter().map(|(k, w)| (*k, w))),
            by(&mut self.by_rule.iter().map(|(k, w)| (k.as_str(), w))),
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
        for line in alerts.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let a: serde_json::Value = serde_json::from_slice(line).unwrap();
            let (Some(from), Some(to)) = (a["expected_from"].as_str(), a["expected_to"].as_str()) else { continue };
            assert_eq!(a["state"], "firing", "only firings tell an expected arrival");
            let (from, to) = (Ts::parse_rfc3339(from).unwrap(), Ts::parse_rfc3339(to).unwrap());
            assert!(from < to, "{a}");
            told += 1;
            rules.insert(a["rule"].as_str().unwrap().to_string());
            let at = arrived.get(a["parcel_id"].as_str().unwrap());
            within += u64::from(at.is_some_and(|&at| from <= at && at <= to));
        }
        assert_eq!((r.estimates.all.told, r.estimates.all.within), (told, within));
        let told_by: BTreeSet<String> =
            r.estimates.by_rule.iter().filter(|(_, w)| w.told > 0).map(|(k, _)| k.clone()).collect();
        assert_eq!(told_by, rules);
        assert!(r.estimates.all.firings > told, "firings without an estimate are counted too");
        assert_eq!(r.estimates.by_kind.values().map(|w| w.told).sum::<u64>(), told);
        // Only rules the pack marks `estimate` tell one, and most came true.
        let marked: Vec<&str> = set.rules.iter().filter(|r| r.estimate).map(|r| r.voice.id.as_str()).collect();
        assert!(rules.iter().all(|r| marked.contains(&r.as_str())), "{rules:?} vs {marked:?}");
        assert!(told > 100 && within as f64 > 0.8 * told as f64, "{within} of {told}");
    }
}
