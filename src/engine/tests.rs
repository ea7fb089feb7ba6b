use std::path::Path;

use super::*;
use crate::cases::run_dir;
use crate::event::decode;

fn pack() -> RuleSet {
    RuleSet::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).expect("the default pack loads")
}

/// An engine on the rule pack written in `pack` (TOML).
fn engine_for(pack: &str) -> Engine {
    let set = crate::rules::file::load_sources(&[("x.toml".into(), pack.to_string())]).expect("the pack loads");
    Engine::new(set, Config::default())
}

/// One partition: every scan is one flow, and two scans at an instant vouch
/// for it (one alone may be a scanner's wrong clock), so a test moves event
/// time with two.
fn one_flow() -> Config {
    Config { partitions: 1, ..Config::default() }
}

fn event(json: &str) -> Event<'_> {
    decode(json.as_bytes()).expect("a valid test event")
}

fn ts(text: &str) -> Ts {
    Ts::parse_rfc3339(text).expect("an RFC 3339 test time")
}

/// Feeds JSON lines (v, event_id defaulted) through a fresh engine and returns one line per alert.
fn run(config: Config, lines: &[&str], until: Option<&str>) -> (Engine, Vec<String>) {
    let mut engine = Engine::new(pack(), config);
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let json = format!(r#"{{"v":1,"event_id":"e{i}",{l}}}"#);
        engine.ingest(&event(&json), &mut out);
    }
    if let Some(t) = until {
        engine.advance(ts(t), &mut out);
    }
    let lines = out
        .iter()
        .map(|a| {
            format!("{} {} {} {}", a.rule, a.state.as_str(), a.at, a.parcel.as_ref().map_or("-", |p| &p.parcel_id))
        })
        .collect();
    (engine, lines)
}

#[test]
fn the_default_rule_tests_pass() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
    let results = run_dir(dir, &pack()).expect("the rule tests load");
    assert!(results.len() >= 20, "{} cases", results.len());
    let failures: Vec<String> =
        results.iter().filter(|r| !r.failure.is_empty()).map(|r| format!("{}:\n{}", r.name, r.failure)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn done_parcels_leave_after_the_retention_and_late_duplicates_do_not_revive_them() {
    let config = Config { retention: Span::hours(2), ..one_flow() };
    let (engine, alerts) = run(
        config,
        &[
            r#""parcel_id":"A","kind":"departed","at":"2026-11-20T08:00:00Z""#,
            r#""parcel_id":"A","kind":"delivered","at":"2026-11-20T09:00:00Z""#,
            r#""parcel_id":"B","kind":"departed","at":"2026-11-20T12:00:00Z""#,
            r#""parcel_id":"C","kind":"departed","at":"2026-11-20T12:00:00Z""#,
            r#""parcel_id":"A","kind":"damaged","at":"2026-11-20T08:30:00Z""#,
        ],
        None,
    );
    assert_eq!(engine.stats().evicted_done, 1);
    assert_eq!(engine.stats().closed, 1, "the late event for A is counted, not applied");
    assert_eq!(engine.parcels(), 2);
    assert!(alerts.is_empty(), "{alerts:?}");
}

#[test]
fn a_full_window_evicts_the_earliest_timer_and_counts_it() {
    let config = Config { max_parcels: 2, ..Config::default() };
    let (engine, _) = run(
        config,
        &[
            r#""parcel_id":"A","kind":"departed","at":"2026-11-20T08:00:00Z""#,
            r#""parcel_id":"B","kind":"departed","at":"2026-11-20T09:00:00Z""#,
            r#""parcel_id":"C","kind":"departed","at":"2026-11-20T10:00:00Z""#,
        ],
        None,
    );
    assert_eq!((engine.parcels(), engine.stats().evicted_capacity, engine.stats().peak_parcels), (2, 1, 2));
    // A, the earliest to stall, left; B and C stall later, A never does.
    let mut engine = engine;
    let mut out = Vec::new();
    engine.advance(ts("2026-11-22T00:00:00Z"), &mut out);
    let stalled: Vec<&str> = out.iter().filter_map(|a| a.parcel.as_ref()).map(|p| p.parcel_id.as_str()).collect();
    assert_eq!(stalled, ["B", "C"]);
}

/// An idle parcel leaves the window, but never before a deadline of it still
/// to come, whatever the watermark's steps: once, the one jump past both
/// fired the alert and steps of an hour dropped it.
#[test]
fn idle_parcels_expire_after_their_due_deadlines_whatever_the_steps() {
    let config = Config { max_idle: Span::hours(24), ..Config::default() };
    let label = r#""parcel_id":"A","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-21T08:00:00Z","recipient":{}"#;
    let (jumped, alerts) = run(config.clone(), &[label], Some("2026-11-23T00:00:00Z"));
    assert_eq!(alerts, ["late firing 2026-11-21T10:00:00Z A", "not_handed_over firing 2026-11-22T08:00:00Z A"]);
    assert_eq!((jumped.parcels(), jumped.stats().evicted_idle), (0, 1));
    let (mut stepped, _) = run(config, &[label], None);
    let mut out = Vec::new();
    let mut t = ts("2026-11-20T09:00:00Z");
    while t <= ts("2026-11-23T00:00:00Z") {
        stepped.advance(t, &mut out);
        t = t.plus(Span::hours(1));
    }
    let stepped_alerts: Vec<String> = out.iter().map(|a| format!("{} {}", a.rule, a.at)).collect();
    assert_eq!(stepped_alerts, ["late 2026-11-21T10:00:00Z", "not_handed_over 2026-11-22T08:00:00Z"]);
    assert_eq!((stepped.parcels(), stepped.stats().evicted_idle), (0, 1));
}

#[test]
fn replacing_rules_keeps_open_episodes() {
    let lines = [
        r#""parcel_id":"A","kind":"departed","at":"2026-11-20T08:00:00Z""#,
        r#""parcel_id":"B","kind":"departed","at":"2026-11-21T10:00:00Z""#,
        r#""parcel_id":"C","kind":"departed","at":"2026-11-21T10:00:00Z""#,
    ];
    let (mut engine, alerts) = run(one_flow(), &lines, None);
    assert_eq!(alerts, ["stalled firing 2026-11-21T08:00:00Z A"]);
    // A pack with the rules in another order and `damaged` removed.
    let mut set = pack();
    set.rules.reverse();
    set.rules.retain(|r| r.voice.id != "damaged");
    set.branch_rules.clear();
    engine.replace_rules(set);
    let mut out = Vec::new();
    let json = r#"{"v":1,"event_id":"x","parcel_id":"A","kind":"arrived","at":"2026-11-21T11:00:00Z"}"#;
    engine.ingest(&event(json), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((&*out[0].rule, out[0].state), ("stalled", AlertState::Resolved));
    // The resolved record carries the id the firing one had.
    let (_, first) = run(one_flow(), &lines, None);
    assert_eq!(first.len(), 1);
    assert_eq!(out[0].id, AlertId::new("stalled", "A", "2026-11-21T08:00:00Z"));
}

#[test]
fn the_same_input_gives_the_same_alert_ids() {
    let lines = [
        r#""parcel_id":"A","kind":"damaged","at":"2026-11-20T08:00:00Z""#,
        r#""parcel_id":"B","kind":"departed","at":"2026-11-20T09:00:00Z""#,
        r#""parcel_id":"C","kind":"departed","at":"2026-11-23T09:00:00Z""#,
        r#""parcel_id":"D","kind":"departed","at":"2026-11-23T09:00:00Z""#,
    ];
    let ids = |()| {
        let mut engine = Engine::new(pack(), one_flow());
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let json = format!(r#"{{"v":1,"event_id":"e{i}",{l}}}"#);
            engine.ingest(&event(&json), &mut out);
        }
        out.iter().map(|a| a.id).collect::<Vec<_>>()
    };
    let first = ids(());
    assert_eq!(first.len(), 2);
    assert_eq!(first, ids(()));
    assert_ne!(first[0], first[1]);
}

#[test]
fn a_full_symbol_table_is_counted_and_the_event_still_applies() {
    // The pack itself takes one name ("express", from the stall rule's by_service).
    let config = Config { max_symbols: 2, ..Config::default() };
    let (engine, alerts) = run(
        config,
        &[
            r#""parcel_id":"A","kind":"damaged","at":"2026-11-20T08:00:00Z","branch":"B1""#,
            r#""parcel_id":"B","kind":"damaged","at":"2026-11-20T09:00:00Z","branch":"B2""#,
        ],
        None,
    );
    assert_eq!(alerts.len(), 2, "both damages are told: {alerts:?}");
    assert_eq!(engine.stats().symbol_overflow, 1);
}

#[test]
fn a_recycled_tracking_number_starts_a_new_parcel() {
    let config = Config { retention: Span::hours(1), ..one_flow() };
    let (engine, alerts) = run(
        config,
        &[
            r#""parcel_id":"A","kind":"delivered","at":"2026-11-20T08:00:00Z""#,
            r#""parcel_id":"Z","kind":"departed","at":"2026-11-20T12:00:00Z""#,
            r#""parcel_id":"Y","kind":"departed","at":"2026-11-20T12:00:00Z""#,
            r#""parcel_id":"A","kind":"damaged","at":"2026-11-20T12:30:00Z""#,
            r#""parcel_id":"A","kind":"label_created","at":"2026-11-20T13:00:00Z","promised_by":"2026-11-23T18:00:00Z","recipient":{}"#,
            r#""parcel_id":"A","kind":"damaged","at":"2026-11-20T14:00:00Z""#,
        ],
        None,
    );
    assert_eq!(engine.stats().closed, 1, "the damage for the delivered-and-gone A is ignored");
    assert_eq!(alerts, ["damaged firing 2026-11-20T14:00:00Z A"]);
}

/// A label sent again for a parcel delivered and gone — the same event id
/// or a new one — is its label, not a new parcel's: once, it started the
/// parcel anew and its promise told the customer it was late. A restart
/// from a checkpoint taken between keeps knowing when the parcel ended.
#[test]
fn a_label_sent_again_after_its_parcel_closed_brings_nothing_back() {
    let label = r#""parcel_id":"A","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-21T08:00:00Z","recipient":{"email":"a@example.com"}"#;
    let lines = [
        label,
        r#""parcel_id":"A","kind":"picked_up","at":"2026-11-20T09:00:00Z""#,
        r#""parcel_id":"A","kind":"delivered","at":"2026-11-20T12:00:00Z""#,
        r#""parcel_id":"Z","kind":"departed","at":"2026-11-20T14:00:00Z""#,
        r#""parcel_id":"Y","kind":"departed","at":"2026-11-20T14:00:00Z""#,
    ];
    let config = Config { retention: Span::hours(1), ..one_flow() };
    let (engine, _) = run(config.clone(), &lines, None);
    assert_eq!((engine.stats().evicted_done, engine.lookup("A")), (1, Lookup::Closed));
    let restored = Engine::restore(&engine.checkpoint(), pack(), config).expect("restores");
    for (mut engine, id) in [(engine, "e0"), (restored, "again")] {
        let mut out = Vec::new();
        engine.ingest(&event(&format!(r#"{{"v":1,"event_id":"{id}",{label}}}"#)), &mut out);
        engine.advance(ts("2026-11-25T00:00:00Z"), &mut out);
        let told: Vec<String> = out
            .iter()
            .filter(|a| a.parcel.as_ref().is_some_and(|p| p.parcel_id == "A"))
            .map(|a| format!("{} {}", a.rule, a.at))
            .collect();
        assert!(told.is_empty(), "the label sent again ({id}) told {told:?}");
        assert_eq!((engine.stats().closed, engine.lookup("A")), (1, Lookup::Closed), "{id}");
    }
}

/// A label sent again while the parcel is held at customs (a new event id,
/// a revised promise): the promise moves, the parcel does not. Once, it set
/// the state back to `label_created`, which ended the hold unannounced and,
/// two days on, told the customer the parcel was never handed over.
#[test]
fn a_label_sent_again_on_the_way_revises_the_promise_and_leaves_the_parcel_where_it_is() {
    let label = |at: &str, promised: &str| {
        format!(
            r#""parcel_id":"A","kind":"label_created","at":"{at}","promised_by":"{promised}","recipient":{{"email":"a@example.com"}}"#
        )
    };
    let (first, again) =
        (label("2026-11-20T08:00:00Z", "2026-11-26T18:00:00Z"), label("2026-11-21T10:00:00Z", "2026-11-27T18:00:00Z"));
    let (engine, alerts) = run(
        one_flow(),
        &[
            &first,
            r#""parcel_id":"A","kind":"picked_up","at":"2026-11-20T09:00:00Z","facility":"FR-LYS-01""#,
            r#""parcel_id":"A","kind":"customs_hold","at":"2026-11-20T13:00:00Z","facility":"FR-CDG-CUSTOMS","reason":"documents_missing""#,
            &again,
        ],
        Some("2026-11-24T00:00:00Z"),
    );
    let rules: Vec<&str> = alerts.iter().filter_map(|a| a.split(' ').next()).collect();
    assert!(rules.contains(&"customs_hold"), "the hold is still told: {alerts:?}");
    assert!(!rules.contains(&"not_handed_over"), "it was handed over: {alerts:?}");
    let Lookup::InFlight(view) = engine.lookup("A") else { panic!("A is in flight") };
    assert_eq!(view.facts.state, Kind::CustomsHold);
    assert_eq!(view.facts.facility.as_deref(), Some("FR-CDG-CUSTOMS"));
    assert_eq!(view.facts.promised_by, Some(ts("2026-11-27T18:00:00Z")), "the promise the label revised");
}

/// A delivered parcel scanned again on the way an hour later (another
/// parcel's barcode): once, the scan told its customer "we missed you",
/// then that the parcel was stalled, then late. It stays delivered, the
/// scan counted as superseded; a delivery uploaded after such a scan still
/// ends the parcel; a later end (returned) still applies.
#[test]
fn a_step_on_the_way_after_the_parcel_ended_leaves_it_at_its_end() {
    let lines = [
        r#""parcel_id":"A","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-22T18:00:00Z","recipient":{"email":"a@example.com"}"#,
        r#""parcel_id":"A","kind":"out_for_delivery","at":"2026-11-21T07:00:00Z","facility":"FR-PAR-12""#,
        r#""parcel_id":"A","kind":"delivered","at":"2026-11-21T10:00:00Z","facility":"FR-PAR-12""#,
        r#""parcel_id":"A","kind":"delivery_failed","at":"2026-11-21T11:00:00Z","reason":"no_one_home","facility":"FR-LYS-03""#,
        r#""parcel_id":"A","kind":"out_for_delivery","at":"2026-11-21T12:00:00Z","facility":"FR-LYS-03""#,
    ];
    let (engine, alerts) =
        run(Config { retention: Span::hours(96), ..one_flow() }, &lines, Some("2026-11-24T00:00:00Z"));
    assert!(alerts.is_empty(), "nothing told of a delivered parcel: {alerts:?}");
    assert_eq!(engine.stats().superseded, 2);
    let Lookup::InFlight(view) = engine.lookup("A") else { panic!("A is kept for the retention") };
    assert_eq!((view.facts.state, view.facts.facility.as_deref()), (Kind::Delivered, Some("FR-PAR-12")));
    // The delivery uploaded after the wrong scan: the scan was news when it
    // came (its own alert), but the end still ends the parcel.
    let (engine, alerts) = run(
        Config { retention: Span::hours(96), ..one_flow() },
        &[lines[0], lines[1], lines[3], lines[2]],
        Some("2026-11-24T00:00:00Z"),
    );
    assert_eq!(alerts, ["delivery_failed firing 2026-11-21T11:00:00Z A"], "then neither stalled nor late");
    let Lookup::InFlight(view) = engine.lookup("A") else { panic!("A is kept for the retention") };
    assert_eq!(view.facts.state, Kind::Delivered);
    let returned = r#""parcel_id":"A","kind":"returned","at":"2026-11-22T09:00:00Z""#;
    let (engine, _) = run(Config { retention: Span::hours(96), ..one_flow() }, &[lines[0], lines[2], returned], None);
    let Lookup::InFlight(view) = engine.lookup("A") else { panic!("A is kept for the retention") };
    assert_eq!(view.facts.state, Kind::Returned, "an end after the end applies");
}

#[test]
fn a_lookup_shows_state_open_alerts_recipient_and_contacts_without_changing_anything() {
    let (engine, alerts) = run(
        Config { retention: Span::hours(1), ..Config::default() },
        &[
            r#""parcel_id":"A","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-22T18:00:00Z","recipient":{"phone":"+33612345678","channels":["sms"]}"#,
            r#""parcel_id":"A","kind":"customs_hold","at":"2026-11-20T09:00:00Z","facility":"FR-CDG-CUSTOMS","reason":"documents_missing""#,
            r#""parcel_id":"A","kind":"customer_contact","at":"2026-11-20T09:30:00Z","topic":"customs","channel":"phone""#,
            r#""parcel_id":"B","kind":"departed","at":"2026-11-20T07:00:00Z""#,
            r#""parcel_id":"B","kind":"delivered","at":"2026-11-20T07:30:00Z""#,
        ],
        Some("2026-11-21T10:00:00Z"),
    );
    assert!(alerts.iter().any(|a| a.starts_with("customs_hold firing")), "{alerts:?}");
    let Lookup::InFlight(view) = engine.lookup("A") else { panic!("A is in flight") };
    assert_eq!(view.facts.state, Kind::CustomsHold);
    assert_eq!(view.state_since, Some(ts("2026-11-20T09:00:00Z")));
    assert_eq!(view.facts.facility.as_deref(), Some("FR-CDG-CUSTOMS"));
    assert_eq!(view.facts.promised_by, Some(ts("2026-11-22T18:00:00Z")));
    assert_eq!(view.facts.recipient.as_ref().and_then(|r| r.phone.as_deref()), Some("+33612345678"));
    let open: Vec<(&str, Option<Ts>)> = view.open.iter().map(|o| (&*o.rule, o.since)).collect();
    // The 24 h rule resolves (it has a since); customs_action fired once, on the hold.
    assert_eq!(open, [("customs_hold", Some(ts("2026-11-21T09:00:00Z"))), ("customs_action", None)]);
    assert_eq!(view.contacts, [ts("2026-11-20T09:30:00Z")]);
    assert_eq!(engine.lookup("B"), Lookup::Closed, "delivered, then gone after the retention");
    assert_eq!(engine.lookup("C"), Lookup::Unknown);
}

#[test]
fn contacts_are_judged_against_the_first_customer_alert_whichever_comes_first() {
    let label = |p: &str| {
        format!(
            r#""parcel_id":"{p}","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-25T18:00:00Z","recipient":{{"channels":["sms"]}}"#
        )
    };
    let hold = |p: &str| format!(r#""parcel_id":"{p}","kind":"customs_hold","at":"2026-11-20T09:00:00Z""#);
    let contact = |p: &str, at: &str, topic: &str| {
        format!(r#""parcel_id":"{p}","kind":"customer_contact","at":"{at}","topic":"{topic}","channel":"phone""#)
    };
    let (label_a, hold_a, label_b, hold_b, label_c) = (label("A"), hold("A"), label("B"), hold("B"), label("C"));
    // A: held at 09:00, told at 09:00 the next day (24 h rule), calls 6 h later.
    // B: held at 09:00, calls at 11:00, told at 09:00 the next day: 22 h too late.
    // C: calls, nothing wrong: not judged.
    let (call_a, call_b, call_c) = (
        contact("A", "2026-11-21T15:00:00Z", "customs"),
        contact("B", "2026-11-20T11:00:00Z", "international"),
        contact("C", "2026-11-20T12:00:00Z", "track"),
    );
    let lines = [&label_a, &hold_a, &label_b, &hold_b, &label_c, &call_a, &call_b, &call_c].map(String::as_str);
    let (mut engine, alerts) = run(Config::default(), &lines, Some("2026-11-22T00:00:00Z"));
    assert_eq!(alerts.iter().filter(|a| a.starts_with("customs_hold firing")).count(), 2, "{alerts:?}");
    let mut judged = Vec::new();
    engine.take_judged(&mut judged, &mut Vec::new());
    judged.sort_by_key(|j| j.topic);
    let seen: Vec<(Topic, bool, Span, &str)> =
        judged.iter().map(|j| (j.topic, j.told_first, j.gap, &*j.rule)).collect();
    assert_eq!(
        seen,
        [
            (Topic::International, false, Span::hours(22), "customs_hold"),
            (Topic::Customs, true, Span::hours(6), "customs_hold"),
        ]
    );
    engine.take_judged(&mut judged, &mut Vec::new());
    assert_eq!(judged.len(), 2, "taken once");
}

mod branches;
mod event_time;
mod predicted;

#[test]
fn one_scan_dated_days_ahead_moves_no_one_elses_event_time() {
    // A steady flow of departures, a minute apart, and one scanner whose clock
    // is three days ahead: before, its scan moved the watermark three days
    // and every parcel of the flow "stalled" at once.
    let flow: Vec<String> = (0..300)
        .map(|i| {
            let at = ts("2026-11-20T08:00:00Z").plus(Span::minutes(i));
            format!(r#""parcel_id":"P{i}","kind":"departed","at":"{at}""#)
        })
        .collect();
    let mut with_outlier = flow.clone();
    with_outlier.insert(150, r#""parcel_id":"X","kind":"arrived","at":"2026-11-23T10:00:00Z""#.into());
    let (clean_lines, dirty_lines): (Vec<&str>, Vec<&str>) =
        (flow.iter().map(String::as_str).collect(), with_outlier.iter().map(String::as_str).collect());
    let (clean, clean_alerts) = run(Config::default(), &clean_lines, None);
    let (dirty, dirty_alerts) = run(Config::default(), &dirty_lines, None);
    assert!(clean_alerts.is_empty(), "{clean_alerts:?}");
    assert!(dirty_alerts.is_empty(), "{} alerts, first {:?}", dirty_alerts.len(), dirty_alerts.first());
    assert_eq!(dirty.watermark(), clean.watermark());
    assert!(clean.watermark() > ts("2026-11-20T11:00:00Z"), "the flow moves time: {:?}", clean.watermark());
    assert_eq!(dirty.newest(), ts("2026-11-23T10:00:00Z"), "the outlier is applied to its own parcel");
}

#[test]
fn a_full_window_keeps_no_timer_of_the_parcels_it_let_go() {
    // 150,000 distinct parcels in a window of 100,000 once held 150,000
    // timers, and each eviction walked past every earlier one: quadratic.
    let config = Config { max_parcels: 100, ..Config::default() };
    let mut engine = Engine::new(pack(), config);
    let mut out = Vec::new();
    for i in 0..1000 {
        let at = ts("2026-11-20T08:00:00Z").plus(Span::minutes(i));
        let json = format!(r#"{{"v":1,"event_id":"e{i}","parcel_id":"P{i}","kind":"departed","at":"{at}"}}"#);
        engine.ingest(&event(&json), &mut out);
    }
    assert_eq!((engine.parcels(), engine.stats().evicted_capacity), (100, 900));
    assert!(engine.timers() <= 101, "{} timers for 100 parcels", engine.timers());
    assert!(out.is_empty());
}

/// A watermark step taken in pieces (what the live processor does, handing
/// a burst's alerts out as they come) fires what the step taken whole
/// fires, in the same order and saying the same things, and makes the same
/// branch facts, dated alike: checked against an engine that steps whole,
/// on a simulated network, stopping the pieced one after every batch of
/// wake-ups that said anything.
#[test]
fn a_step_taken_in_pieces_fires_what_the_whole_step_fires() {
    use crate::simulate::{self, Network, Shape};
    let start = ts("2026-11-16T00:00:00Z");
    let shape = Shape::preset("national-cn").expect("a preset");
    let mut data = Vec::new();
    let net = Network { parcels: 4000, seed: 3, start, days: 2.0, shape, reaction: Default::default() };
    simulate::write(&net, &mut data, |_| {}).expect("simulates");
    let apart = || Engine::new(pack(), Config::default()).without_branch_stage();
    let (mut whole, mut pieced) = (apart(), apart());
    let (mut expected, mut got, mut out) = (Vec::new(), Vec::new(), Vec::new());
    let (mut expected_facts, mut facts) = (Vec::new(), Vec::new());
    let mut stops = 0;
    let mut step = |engine: &mut Engine, to: Ts, out: &mut Vec<Alert>, got: &mut Vec<Alert>| {
        while !engine.advance_within(to, out, 1) {
            stops += 1;
            got.append(out);
        }
        got.append(out);
    };
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let event = decode(line).expect("simulated events decode");
        whole.ingest(&event, &mut expected);
        pieced.apply(&event, parcel_hash(&event.parcel_id), &mut out);
        let to = pieced.input_watermark();
        step(&mut pieced, to, &mut out, &mut got);
    }
    let end = start.plus(Span::hours(24 * 12));
    whole.advance(end, &mut expected);
    step(&mut pieced, end, &mut out, &mut got);
    whole.take_facts(&mut expected_facts);
    pieced.take_facts(&mut facts);
    let lines = |alerts: &[Alert]| -> Vec<String> {
        alerts
            .iter()
            .map(|a| {
                let mut line = Vec::new();
                a.write_json_line(&mut line);
                String::from_utf8(line).expect("JSON is UTF-8")
            })
            .collect()
    };
    let (expected, got) = (lines(&expected), lines(&got));
    assert!(
        expected.len() > 4000 && expected_facts.len() > 4000,
        "{} alerts, {} facts",
        expected.len(),
        expected_facts.len()
    );
    assert!(stops > 100, "the step stopped {stops} times");
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "alert {i} of {}", expected.len());
    }
    assert_eq!(facts.len(), expected_facts.len());
    if let Some(i) = facts.iter().zip(&expected_facts).position(|(f, e)| f != e) {
        panic!("fact {i}: {:?}, the whole step made {:?}", facts[i], expected_facts[i]);
    }
}
