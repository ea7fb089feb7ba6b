//! `forewarn report`: the proof, or not, that forewarn speaks first.
//!
//! The events are replayed through the engine (the same run as `forewarn
//! replay`), and read a second time for what really happened to each
//! parcel: whether it had a problem (damage, loss, a failed delivery, a
//! customs hold, a return, an exception, or arriving after its promised
//! date) and when the customer got in touch. The two are joined by parcel:
//!
//! - a contact about a problem parcel is **preempted** when a customer-facing
//!   alert had fired before it (the lead time is the gap), and a **miss**
//!   otherwise (counted by topic);
//! - a customer-facing alert on a parcel that had no problem is **noise**;
//! - `predicted_late`, when the pack has it, is scored against the parcels
//!   that really arrived late: precision, recall, lead before the promise;
//! - every expected arrival told (`expected_from`, `expected_to`) is checked
//!   against the parcel's real arrival: the share within, by rule and by
//!   what was told (hours within a day, a day, days).
//!
//! - with a hold-out share (`dispatch.holdout`), what the messages changed
//!   ([`holdout`]).
//!
//! Times are event times, as the engine judges them (the live metrics
//! `forewarn_contacts_judged_total` count the same way).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use crate::engine::Split;
use crate::event::{decode, Kind, Topic};
use crate::replay::{self, Sinks};
use crate::rules::{Audience, RuleSet};
use crate::time::Ts;

pub mod estimates;
pub mod holdout;
pub mod html;

pub use estimates::{Estimates, Within};
pub use holdout::{Group, Holdout};

/// The rule whose precision and recall the report measures.
pub const PREDICTED_LATE: &str = "predicted_late";

/// What the report knows of one parcel.
struct Parcel {
    /// The first customer-facing firing, and its rule's index.
    told_at: Ts,
    told_by: u16,
    /// Rules (by index) that fired for the customer.
    customer_rules: u64,
    /// The first `predicted_late` firing, whatever its audience.
    predicted_at: Ts,
    promised_by: Ts,
    promise_at: Ts,
    /// Delivered, or ready at a pickup point, whichever came first.
    arrived_at: Ts,
    problem_at: Ts,
    last_scan_at: Ts,
    contacts: Vec<(Ts, Topic)>,
    /// The firings of rules that tell an expected arrival.
    estimates: Vec<Estimate>,
}

/// A firing of a rule that tells an expected arrival.
#[derive(Clone, Copy)]
struct Estimate {
    rule: u16,
    /// The parcel's state: the kind of leg it was on.
    state: Option<Kind>,
    /// From and to, when one was told.
    told: Option<(Ts, Ts)>,
}

impl Default for Parcel {
    fn default() -> Self {
        Parcel {
            told_at: Ts::MAX,
            told_by: u16::MAX,
            customer_rules: 0,
            predicted_at: Ts::MAX,
            promised_by: Ts::MAX,
            promise_at: Ts::MIN,
            arrived_at: Ts::MAX,
            problem_at: Ts::MAX,
            last_scan_at: Ts::MIN,
            contacts: Vec::new(),
            estimates: Vec::new(),
        }
    }
}

impl Parcel {
    /// Arrived (delivered, or ready at a pickup point, as the `late` rule
    /// counts it) after the promise, or not at all with the promise past.
    fn late(&self) -> bool {
        self.promised_by != Ts::MAX
            && (self.arrived_at != Ts::MAX && self.arrived_at > self.promised_by
                || self.arrived_at == Ts::MAX && self.last_scan_at > self.promised_by)
    }

    fn problem(&self) -> bool {
        self.problem_at != Ts::MAX || self.late()
    }

    /// The contacts in time order, each once (a contact uploaded twice is one).
    fn contacts_once(&self) -> Vec<(Ts, Topic)> {
        let mut contacts = self.contacts.clone();
        contacts.sort_unstable();
        contacts.dedup();
        contacts
    }
}

/// Takes the replay's alert lines as they are written.
struct Tally<'a> {
    set: &'a RuleSet,
    parcels: &'a mut HashMap<Box<str>, Parcel>,
    partial: Vec<u8>,
}

#[derive(Deserialize)]
struct AlertLine<'a> {
    rule: &'a str,
    state: &'a str,
    at: &'a str,
    #[serde(default)]
    audience: Vec<&'a str>,
    parcel_id: Option<&'a str>,
    expected_from: Option<&'a str>,
    expected_to: Option<&'a str>,
    parcel_state: Option<&'a str>,
}

impl Tally<'_> {
    fn line(&mut self, line: &[u8]) {
        let Ok(a) = serde_json::from_slice::<AlertLine>(line) else { return };
        let (Some(id), "firing", Some(at)) = (a.parcel_id, a.state, Ts::parse_rfc3339(a.at)) else { return };
        let Some(rule) = self.set.find(a.rule) else { return };
        let p = self.parcels.entry(id.into()).or_default();
        if a.rule == PREDICTED_LATE {
            p.predicted_at = p.predicted_at.min(at);
        }
        if self.set.rules[rule].estimate {
            let told = a.expected_from.and_then(Ts::parse_rfc3339).zip(a.expected_to.and_then(Ts::parse_rfc3339));
            p.estimates.push(Estimate { rule: rule as u16, state: a.parcel_state.and_then(Kind::parse), told });
        }
        if a.audience.iter().any(|x| Audience::parse(x) == Some(Audience::CUSTOMER)) {
            p.customer_rules |= 1u64 << rule.min(63);
            if at < p.told_at {
                (p.told_at, p.told_by) = (at, rule as u16);
            }
        }
    }
}

impl Write for Tally<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.partial.extend_from_slice(buf);
        if let Some(end) = memchr::memrchr(b'\n', &self.partial) {
            let complete: Vec<u8> = self.partial.drain(..=end).collect();
            for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                self.line(line);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Folds the events of the file into each parcel's truth.
fn truth(input: impl BufRead, parcels: &mut HashMap<Box<str>, Parcel>) -> io::Result<()> {
    for line in input.split(b'\n') {
        let line = line?;
        let Ok(ev) = decode(&line) else { continue };
        let p = match parcels.get_mut(&*ev.parcel_id) {
            Some(p) => p,
            None => parcels.entry(ev.parcel_id.as_ref().into()).or_default(),
        };
        if let Some(t) = ev.promised_by {
            if ev.at >= p.promise_at {
                (p.promised_by, p.promise_at) = (t, ev.at);
            }
        }
        match ev.kind {
            Kind::CustomerContact => p.contacts.push((ev.at, ev.contact.map_or(Topic::Other, |c| c.topic))),
            Kind::Delivered | Kind::ReadyForPickup | Kind::Collected => p.arrived_at = p.arrived_at.min(ev.at),
            Kind::Damaged
            | Kind::Lost
            | Kind::DeliveryFailed
            | Kind::CustomsHold
            | Kind::Returned
            | Kind::Exception => p.problem_at = p.problem_at.min(ev.at),
            _ => {}
        }
        if ev.kind.is_scan() {
            p.last_scan_at = p.last_scan_at.max(ev.at);
        }
    }
    Ok(())
}

/// The figures for one rule (the rule that spoke first to the customer).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RuleFigures {
    /// Problem parcels this rule spoke about to the customer.
    pub problem_parcels: u64,
    /// Contacts about those parcels that came after the rule spoke…
    pub contacts_preempted: u64,
    /// …and before it did.
    pub contacts_missed: u64,
    pub median_lead_hours: Option<f64>,
    pub p10_lead_hours: Option<f64>,
    /// Parcels it spoke to the customer about that had no problem.
    pub noise_parcels: u64,
}

/// Contacts about problem parcels on one topic.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct TopicFigures {
    pub contacts: u64,
    /// Those after forewarn had spoken.
    pub preempted: u64,
}

/// How well `predicted_late` foresaw the parcels that really were late.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Prediction {
    /// Whether the pack has the rule; the figures are null without it.
    pub in_pack: bool,
    pub predicted: u64,
    pub late: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    /// How long before the promised date it fired, for the late parcels it foresaw.
    pub median_lead_hours: Option<f64>,
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Report {
    pub parcels: u64,
    pub problem_parcels: u64,
    /// Problem parcels whose customer forewarn told at all.
    pub problem_parcels_told: u64,
    /// Contacts about problem parcels.
    pub contacts: u64,
    pub contacts_preempted: u64,
    pub contacts_preempted_share: Option<f64>,
    pub median_lead_hours: Option<f64>,
    pub p10_lead_hours: Option<f64>,
    /// Contacts about problem parcels that no customer alert had preceded, by topic.
    pub misses_by_topic: BTreeMap<&'static str, u64>,
    /// Contacts about problem parcels, by topic.
    pub topics: BTreeMap<&'static str, TopicFigures>,
    /// Contacts about parcels without a problem (not judged).
    pub contacts_without_problem: u64,
    /// Parcels told of a problem that never had one.
    pub noise_parcels: u64,
    pub rules: BTreeMap<String, RuleFigures>,
    pub predicted_late: Prediction,
    pub estimates: Estimates,
    /// The hold-out measure, when the report was given a share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout: Option<Holdout>,
    /// The lead times of the preempted contacts, in hours (for the charts).
    #[serde(skip)]
    pub leads: Vec<f64>,
}

fn hours(ms: i64) -> f64 {
    ms as f64 / 3_600_000.0
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let value = sorted[((last as f64) * q).round() as usize];
    Some((value * 100.0).round() / 100.0)
}

/// A share as the text report prints it.
fn percent(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |v| format!("{:.1} %", v * 100.0))
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 / whole as f64 * 10_000.0).round() / 10_000.0)
}

/// Replays `events` (read by `open`, twice) through `engine` and reports;
/// with the hold-out group's share (0: none), what the messages changed.
pub fn run(
    engine: &mut Split,
    set: &RuleSet,
    holdout_share: f64,
    mut open: impl FnMut() -> io::Result<Box<dyn Read>>,
) -> io::Result<Report> {
    let mut parcels: HashMap<Box<str>, Parcel> = HashMap::new();
    {
        let mut tally = Tally { set, parcels: &mut parcels, partial: Vec::new() };
        let mut sinks = Sinks { alerts: &mut tally, rejects: None };
        replay::run(&mut open()?, engine, &mut sinks, &mut |_| {})?;
    }
    truth(io::BufReader::with_capacity(1 << 20, open()?), &mut parcels)?;
    Ok(Report { holdout: holdout::measure(holdout_share, &parcels), ..judge(set, &parcels) })
}

fn judge(set: &RuleSet, parcels: &HashMap<Box<str>, Parcel>) -> Report {
    let name = |i: u16| set.rules.get(usize::from(i)).map_or("(not told)".to_string(), |r| r.voice.id.clone());
    let mut r = Report { parcels: parcels.len() as u64, ..Report::default() };
    let mut leads_by_rule: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let predicted_rule = set.find(PREDICTED_LATE);
    let revised: Vec<u16> = (0..set.rules.len())
        .filter(|&i| matches!(set.rules[i].trigger, crate::rules::Trigger::Revised { .. }))
        .map(|i| i as u16)
        .collect();
    let mut predicted_leads = Vec::new();
    let (mut predicted, mut late, mut hits) = (0u64, 0u64, 0u64);
    for p in parcels.values() {
        let firings = p.estimates.iter().map(|e| (name(e.rule), e.state, e.told, revised.contains(&e.rule)));
        r.estimates.add_parcel(firings, p.arrived_at);
        let problem = p.problem();
        if p.late() {
            late += 1;
        }
        if p.predicted_at != Ts::MAX {
            predicted += 1;
            if p.late() {
                hits += 1;
                predicted_leads.push(hours(p.promised_by.0 - p.predicted_at.0));
            }
        }
        if !problem {
            r.contacts_without_problem += p.contacts.len() as u64;
            if p.customer_rules != 0 {
                r.noise_parcels += 1;
                for (i, rule) in set.rules.iter().enumerate().take(64) {
                    if p.customer_rules & (1 << i) != 0 {
                        r.rules.entry(rule.voice.id.clone()).or_default().noise_parcels += 1;
                    }
                }
            }
            continue;
        }
        r.problem_parcels += 1;
        let told = p.told_at != Ts::MAX;
        let rule = name(p.told_by);
        if told {
            r.problem_parcels_told += 1;
            r.rules.entry(rule.clone()).or_default().problem_parcels += 1;
        }
        for (at, topic) in p.contacts_once() {
            r.contacts += 1;
            let by_topic = r.topics.entry(topic.as_str()).or_default();
            by_topic.contacts += 1;
            by_topic.preempted += u64::from(told && p.told_at <= at);
            let figures = r.rules.entry(rule.clone()).or_default();
            if told && p.told_at <= at {
                r.contacts_preempted += 1;
                figures.contacts_preempted += 1;
                let lead = hours(at.0 - p.told_at.0);
                r.leads.push(lead);
                leads_by_rule.entry(rule.clone()).or_default().push(lead);
            } else {
                figures.contacts_missed += 1;
                *r.misses_by_topic.entry(topic.as_str()).or_default() += 1;
            }
        }
    }
    r.leads.sort_unstable_by(f64::total_cmp);
    r.contacts_preempted_share = share(r.contacts_preempted, r.contacts);
    r.median_lead_hours = quantile(&r.leads, 0.5);
    r.p10_lead_hours = quantile(&r.leads, 0.1);
    for (rule, mut leads) in leads_by_rule {
        leads.sort_unstable_by(f64::total_cmp);
        let figures = r.rules.entry(rule).or_default();
        figures.median_lead_hours = quantile(&leads, 0.5);
        figures.p10_lead_hours = quantile(&leads, 0.1);
    }
    predicted_leads.sort_unstable_by(f64::total_cmp);
    r.predicted_late = Prediction {
        in_pack: predicted_rule.is_some(),
        predicted,
        late,
        precision: predicted_rule.and(share(hits, predicted)),
        recall: predicted_rule.and(share(hits, late)),
        median_lead_hours: predicted_rule.and(quantile(&predicted_leads, 0.5)),
    };
    r
}

impl Report {
    /// The report as a person reads it.
    pub fn text(&self) -> String {
        let h = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1} h"));
        let mut out = format!(
            "parcels {}, with a problem {} (told {}), contacts about them {}\n\
             contacts after forewarn spoke: {} of {} ({}), lead time median {}, p10 {}\n\
             misses (contacts before any alert): {}\n\
             noise (told, no problem): {} parcels; contacts about parcels without a problem: {}\n\n",
            self.parcels,
            self.problem_parcels,
            self.problem_parcels_told,
            self.contacts,
            self.contacts_preempted,
            self.contacts,
            percent(self.contacts_preempted_share),
            h(self.median_lead_hours),
            h(self.p10_lead_hours),
            self.misses_by_topic.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", "),
            self.noise_parcels,
            self.contacts_without_problem,
        );
        out.push_str(&format!(
            "{:<20} {:>9} {:>10} {:>7} {:>9} {:>9} {:>7}\n",
            "rule", "problems", "preempted", "missed", "median", "p10", "noise"
        ));
        for (rule, f) in &self.rules {
            out.push_str(&format!(
                "{:<20} {:>9} {:>10} {:>7} {:>9} {:>9} {:>7}\n",
                rule,
                f.problem_parcels,
                f.contacts_preempted,
                f.contacts_missed,
                h(f.median_lead_hours),
                h(f.p10_lead_hours),
                f.noise_parcels
            ));
        }
        let p = &self.predicted_late;
        if p.in_pack {
            out.push_str(&format!(
                "\npredicted_late: {} predicted, {} late; precision {}, recall {}, median lead before the promise {}\n",
                p.predicted,
                p.late,
                percent(p.precision),
                percent(p.recall),
                h(p.median_lead_hours)
            ));
        } else {
            out.push_str(&format!("\npredicted_late: not in the rule pack ({} parcels were late)\n", p.late));
        }
        out.push_str(&self.estimates.text());
        if let Some(h) = &self.holdout {
            out.push_str(&h.text());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(events: &str) -> Report {
        let set = RuleSet::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).unwrap();
        let mut engine = Split::new(set.clone(), crate::engine::Config::default());
        let bytes = events.as_bytes().to_vec();
        run(&mut engine, &set, 0.0, || Ok(Box::new(io::Cursor::new(bytes.clone())))).unwrap()
    }

    #[test]
    fn contacts_are_preempted_or_missed_and_quiet_parcels_are_noise_free() {
        let recipient = r#""recipient":{"phone":"+33612345678","channels":["sms"]}"#;
        let lines = [
            // A: fails delivery (told at once), calls 5 h later: preempted.
            format!(r#"{{"v":1,"event_id":"a1","parcel_id":"A","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-23T18:00:00Z",{recipient}}}"#),
            r#"{"v":1,"event_id":"a2","parcel_id":"A","kind":"delivery_failed","at":"2026-11-21T10:00:00Z","branch":"FR-PAR-12","reason":"no_one_home"}"#.into(),
            r#"{"v":1,"event_id":"a3","parcel_id":"A","kind":"customer_contact","at":"2026-11-21T15:00:00Z","topic":"reschedule","channel":"phone"}"#.into(),
            r#"{"v":1,"event_id":"a3","parcel_id":"A","kind":"customer_contact","at":"2026-11-21T15:00:00Z","topic":"reschedule","channel":"phone"}"#.into(),
            // B: customs hold, calls 2 h later, told only after 24 h: a miss.
            format!(r#"{{"v":1,"event_id":"b1","parcel_id":"B","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-28T18:00:00Z",{recipient}}}"#),
            r#"{"v":1,"event_id":"b2","parcel_id":"B","kind":"customs_hold","at":"2026-11-20T09:00:00Z","reason":"inspection"}"#.into(),
            r#"{"v":1,"event_id":"b3","parcel_id":"B","kind":"customer_contact","at":"2026-11-20T11:00:00Z","topic":"customs","channel":"chat"}"#.into(),
            // C: delivered on time, asks where it is: not a problem.
            format!(r#"{{"v":1,"event_id":"c1","parcel_id":"C","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-22T18:00:00Z",{recipient}}}"#),
            r#"{"v":1,"event_id":"c2","parcel_id":"C","kind":"customer_contact","at":"2026-11-20T12:00:00Z","topic":"track","channel":"phone"}"#.into(),
            r#"{"v":1,"event_id":"c3","parcel_id":"C","kind":"delivered","at":"2026-11-21T12:00:00Z"}"#.into(),
            // Time moves on for everyone.
            r#"{"v":1,"event_id":"z1","parcel_id":"Z","kind":"picked_up","at":"2026-11-22T12:00:00Z"}"#.into(),
        ];
        let r = report(&(lines.join("\n") + "\n"));
        assert_eq!((r.parcels, r.problem_parcels, r.problem_parcels_told), (4, 2, 2));
        assert_eq!((r.contacts, r.contacts_preempted, r.contacts_without_problem), (2, 1, 1), "{r:?}");
        assert_eq!(r.contacts_preempted_share, Some(0.5));
        assert_eq!(r.median_lead_hours, Some(5.0));
        assert_eq!(r.misses_by_topic, BTreeMap::from([("customs", 1)]));
        assert_eq!(r.noise_parcels, 0);
        assert_eq!(r.rules["delivery_failed"].contacts_preempted, 1);
        assert_eq!(r.rules["customs_hold"].contacts_missed, 1);
        // Four parcels teach the lanes nothing: no prediction, so no precision.
        assert!(r.predicted_late.in_pack && r.predicted_late.predicted == 0 && r.predicted_late.precision.is_none());
        let text = r.text();
        assert!(text.contains("contacts after forewarn spoke: 1 of 2 (50.0 %)"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["contacts_preempted_share"], 0.5);
        assert!(json["predicted_late"]["recall"].is_null());
    }
}
