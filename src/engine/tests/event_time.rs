//! Alerts judged in event time: the same events within the lateness give the
//! same alerts, saying the same things, whatever order they arrive in.

use super::*;

/// Alerts as `rule state at parcel_state facility`, for comparing orders.
fn said(config: Config, lines: &[&str]) -> Vec<String> {
    let mut engine = Engine::new(pack(), config);
    let mut out = Vec::new();
    for l in lines {
        engine.ingest(&event(&format!(r#"{{"v":1,{l}}}"#)), &mut out);
    }
    engine.advance(ts("2026-11-21T00:00:00Z"), &mut out);
    out.iter()
        .map(|a| {
            let p = a.parcel.as_ref().expect("a parcel alert");
            format!("{} {} {} {} {}", a.rule, a.state.as_str(), a.at, p.state, p.facility.as_deref().unwrap_or("-"))
        })
        .collect()
}

const LABEL: &str = r#""event_id":"l","parcel_id":"A","kind":"label_created","at":"2026-11-20T06:00:00Z","promised_by":"2026-11-22T18:00:00Z","branch":"B1","recipient":{}"#;
const OUT: &str =
    r#""event_id":"o","parcel_id":"A","kind":"out_for_delivery","at":"2026-11-20T09:00:00Z","facility":"B1""#;
const DAMAGED: &str =
    r#""event_id":"d","parcel_id":"A","kind":"damaged","at":"2026-11-20T10:00:00Z","facility":"VAN-7""#;
const DELIVERED: &str =
    r#""event_id":"v","parcel_id":"A","kind":"delivered","at":"2026-11-20T10:30:00Z","facility":"DOOR""#;

#[test]
fn a_damage_scan_uploaded_after_the_delivery_still_raises_its_alert() {
    // The van's scanner uploads its damage scan after the door's delivery
    // scan reached us, within the lateness: judged by arrival ("a scan older
    // than the parcel's end is history"), it raised nothing.
    let in_time = said(one_flow(), &[LABEL, OUT, DAMAGED, DELIVERED]);
    let late = said(one_flow(), &[LABEL, OUT, DELIVERED, DAMAGED]);
    assert!(in_time.iter().any(|a| a.starts_with("damaged firing 2026-11-20T10:00:00Z")), "{in_time:?}");
    assert_eq!(late, in_time);
}

#[test]
fn an_alert_tells_the_parcel_state_and_place_at_its_event_time() {
    // The damage happened in the van, out for delivery; the delivery was
    // only processed first.
    let late = said(one_flow(), &[LABEL, OUT, DELIVERED, DAMAGED]);
    let damaged: Vec<_> = late.iter().filter(|a| a.starts_with("damaged")).collect();
    assert_eq!(damaged, ["damaged firing 2026-11-20T10:00:00Z out_for_delivery VAN-7"], "{late:?}");
}

#[test]
fn a_scan_of_a_done_parcel_beyond_the_lateness_is_history() {
    // Days after the delivery, a depot uploads an old damage scan: the
    // customer was told of the delivery long ago; it raises nothing.
    let config = Config { lateness: Span::minutes(10), ..one_flow() };
    let mut engine = Engine::new(pack(), config);
    let mut out = Vec::new();
    for l in [LABEL, OUT, DELIVERED] {
        engine.ingest(&event(&format!(r#"{{"v":1,{l}}}"#)), &mut out);
    }
    engine.advance(ts("2026-11-20T20:00:00Z"), &mut out);
    let before = out.len();
    engine.ingest(&event(&format!(r#"{{"v":1,{DAMAGED}}}"#)), &mut out);
    assert_eq!(out.len(), before, "{:?}", &out[before..]);
    assert_eq!(engine.stats().superseded, 1);
}

/// `late` alone, with `once` as given.
fn late_pack(once: bool) -> RuleSet {
    let toml = format!(
        r#"
[[rule]]
id = "late"
audience = ["customer"]
severity = "warning"
resolve = true
once = {once}
deadline = {{ field = "promised_by", offset = "2h", while_in = ["picked_up", "arrived", "departed"] }}
"#
    );
    crate::rules::file::load_sources(&[("x.toml".into(), toml)]).expect("the pack loads")
}

#[test]
fn a_rule_that_fires_once_stays_quiet_when_a_revised_promise_is_missed_too() {
    let lines = [
        r#""event_id":"p","parcel_id":"A","kind":"picked_up","at":"2026-11-20T06:00:00Z","promised_by":"2026-11-20T12:00:00Z""#,
        r#""event_id":"r","parcel_id":"A","kind":"arrived","at":"2026-11-20T16:00:00Z","promised_by":"2026-11-21T12:00:00Z""#,
    ];
    let alerts = |once| {
        let mut engine = Engine::new(late_pack(once), one_flow());
        let mut out = Vec::new();
        engine.ingest(&event(&format!(r#"{{"v":1,{}}}"#, lines[0])), &mut out);
        engine.advance(ts("2026-11-20T15:00:00Z"), &mut out);
        engine.ingest(&event(&format!(r#"{{"v":1,{}}}"#, lines[1])), &mut out);
        engine.advance(ts("2026-11-22T00:00:00Z"), &mut out);
        let open = match engine.lookup("A") {
            Lookup::InFlight(view) => view.open.len(),
            _ => panic!("A is in flight"),
        };
        (out.iter().map(|a| format!("{} {}", a.state.as_str(), a.at)).collect::<Vec<_>>(), open)
    };
    // Each promise is its own episode: missed, revised, missed again.
    let (each, open) = alerts(false);
    assert_eq!(each, ["firing 2026-11-20T14:00:00Z", "resolved 2026-11-20T16:00:00Z", "firing 2026-11-21T14:00:00Z"]);
    assert_eq!(open, 1);
    let (once, open) = alerts(true);
    assert_eq!(once, ["firing 2026-11-20T14:00:00Z", "resolved 2026-11-20T16:00:00Z"]);
    assert_eq!(open, 0, "a spent rule is not an open alert");
}

#[test]
fn contacts_uploaded_after_the_delivery_count_as_when_they_happened() {
    // Contacts come on their own stream: live, a lagging consumer brings them
    // after scans they preceded. Judged as history ("superseded" by the
    // delivery), two calls before it made no repeat_contact, while the same
    // events in time order did: live and replay disagreed, run to run.
    let config = Config { lateness: Span::hours(6), ..one_flow() };
    let label = r#""parcel_id":"A","kind":"label_created","at":"2026-11-20T06:00:00Z","promised_by":"2026-11-22T18:00:00Z","recipient":{}"#;
    let calls = [
        r#""parcel_id":"A","kind":"customer_contact","at":"2026-11-20T08:00:00Z","topic":"track""#,
        r#""parcel_id":"A","kind":"customer_contact","at":"2026-11-20T10:00:00Z","topic":"delivery_time""#,
    ];
    let delivered = r#""parcel_id":"A","kind":"delivered","at":"2026-11-20T12:00:00Z""#;
    let in_time = [label, calls[0], calls[1], delivered];
    let calls_late = [label, delivered, calls[0], calls[1]];
    let until = Some("2026-11-21T00:00:00Z");
    let (_, first) = run(config.clone(), &in_time, until);
    let (_, second) = run(config, &calls_late, until);
    assert!(first.iter().any(|a| a.starts_with("repeat_contact firing 2026-11-20T10:00:00Z")), "{first:?}");
    assert_eq!(first, second);
}
