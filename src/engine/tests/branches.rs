//! Branch-wide warnings: share and count thresholds, a branch's own normal
//! by the hour, and a branch with no history judged against its peers.

use super::*;

#[test]
fn a_share_threshold_counts_the_branch_parcels_seen_in_the_window() {
    let pack = r#"
[[rule]]
id = "failed"
audience = ["customer"]
severity = "info"
on = { kind = ["delivery_failed"], each = true }

[[rule]]
id = "failing_branch"
audience = ["branch"]
severity = "warning"
branch = { rules = ["failed"], window = "2h", min_share = 0.5, min_volume = 4 }
"#;
    let mut engine = engine_for(pack);
    let mut out = Vec::new();
    let feed = |engine: &mut Engine, out: &mut Vec<Alert>, i: usize, parcel: &str, kind: &str, at: &str| {
        let json =
            format!(r#"{{"v":1,"event_id":"e{i}","parcel_id":"{parcel}","kind":"{kind}","at":"{at}","branch":"B1"}}"#);
        engine.ingest(&event(&json), out);
    };
    // Four parcels reach the branch; the first failure is one in four, the second two in four.
    for (i, p) in ["A", "B", "C", "D"].iter().enumerate() {
        feed(&mut engine, &mut out, i, p, "out_for_delivery", "2026-11-20T08:00:00Z");
    }
    feed(&mut engine, &mut out, 10, "A", "delivery_failed", "2026-11-20T09:00:00Z");
    assert!(out.iter().all(|a| &*a.rule == "failed"), "1/4 is under the share");
    feed(&mut engine, &mut out, 11, "B", "delivery_failed", "2026-11-20T09:10:00Z");
    // Branch facts count once the watermark passes them.
    engine.advance(ts("2026-11-20T09:10:00Z"), &mut out);
    let spike: Vec<_> = out.iter().filter(|a| &*a.rule == "failing_branch").collect();
    assert_eq!(spike.len(), 1);
    let facts = spike[0].branch_facts.as_ref().expect("branch facts");
    assert_eq!((facts.count, facts.volume, spike[0].at), (2, Some(4), ts("2026-11-20T09:10:00Z")));
    // Once the intake leaves the window (10:00) the share is unknown (volume 0 < 4);
    // a whole window of that (two hours) ends the episode.
    out.clear();
    engine.advance(ts("2026-11-20T11:59:00Z"), &mut out);
    assert!(out.is_empty(), "{out:?}");
    engine.advance(ts("2026-11-20T13:00:00Z"), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (&*out[0].rule, out[0].state, out[0].at),
        ("failing_branch", AlertState::Resolved, ts("2026-11-20T12:00:00Z"))
    );
}

#[test]
fn a_branch_that_always_stalls_this_much_is_a_spike_by_the_floor_on_its_first_day_then_not_until_it_triples() {
    let mut engine = Engine::new(pack(), Config::default());
    let mut out = Vec::new();
    let start = ts("2026-11-20T00:00:00Z");
    let mut n = 0;
    let mut depart = |engine: &mut Engine, out: &mut Vec<Alert>, at: Ts| {
        n += 1;
        let json =
            format!(r#"{{"v":1,"event_id":"e{n}","parcel_id":"P{n}","kind":"departed","at":"{at}","branch":"B1"}}"#);
        engine.ingest(&event(&json), out);
    };
    // Twelve parcels an hour for 36 hours, none scanned again: twelve stalls an hour, a day later.
    for minute in (0..36 * 60).step_by(5) {
        depart(&mut engine, &mut out, start.plus(Span::minutes(minute)));
    }
    // Then a burst: 90 parcels within ten minutes.
    for second in 0..90 {
        depart(&mut engine, &mut out, start.plus(Span::hours(36)).plus(Span(second * 6_500)));
    }
    engine.advance(start.plus(Span::hours(61)), &mut out);
    let spikes: Vec<(AlertState, Ts, Option<f64>)> = out
        .iter()
        .filter(|a| &*a.rule == "branch_delay_spike")
        .map(|a| (a.state, a.at, a.branch_facts.as_ref().and_then(|b| b.usual.value())))
        .collect();
    // The first day's 36 stalls in 3 h, with no normal of its own yet, are
    // judged by the floor (20): a spike, which ends once the branch's own day
    // shows them usual. Then the steady rate never fires; the burst a day
    // later (its stalls at 60 h, 36 + 90 in 3 h where 36 are usual) does, and
    // is still open.
    let [(AlertState::Firing, first, None), (AlertState::Resolved, ends, Some(_)), (AlertState::Firing, burst, Some(usual))] =
        spikes[..]
    else {
        panic!("{spikes:?}");
    };
    assert!(first < start.plus(Span::hours(48)), "the stalls' first day: {spikes:?}");
    assert!(first < ends && ends < start.plus(Span::hours(60)), "{spikes:?}");
    assert!(burst >= start.plus(Span::hours(60)) && (usual - 36.0).abs() < 1.0, "{spikes:?}");
}

/// Branch spike warnings from a first day: `branches` of 40 parcels each
/// departing 08:00–09:00, of which `stalls(branch)` are never scanned again
/// (the rest are delivered within 2 h); with `restart`, the engine resumes
/// from a checkpoint taken once their volumes are counted, and again amid
/// the stalls. Returns `branch usual` per warning.
fn first_day_spikes(branches: &[&str], stalls: impl Fn(&str) -> usize, restart: bool) -> Vec<String> {
    let mut engine = Engine::new(pack(), one_flow());
    let mut out = Vec::new();
    let start = ts("2026-11-20T08:00:00Z");
    let mut n = 0;
    for i in 0..40 {
        for branch in branches {
            n += 1;
            let at = start.plus(Span(i * 90_000));
            let line = |kind: &str, at: Ts| {
                format!(
                    r#"{{"v":1,"event_id":"{kind}{n}","parcel_id":"P{n}","kind":"{kind}","at":"{at}","branch":"{branch}"}}"#
                )
            };
            engine.ingest(&event(&line("departed", at)), &mut out);
            if i as usize >= stalls(branch) {
                engine.ingest(&event(&line("delivered", at.plus(Span::hours(2)))), &mut out);
            }
        }
    }
    for until in [Span::hours(12), Span::minutes(24 * 60 + 15), Span::hours(30)] {
        engine.advance(start.plus(until), &mut out);
        if restart {
            engine = Engine::restore(&engine.checkpoint(), pack(), one_flow()).expect("restores");
        }
    }
    out.iter()
        .filter(|a| &*a.rule == "branch_delay_spike" && a.state == AlertState::Firing)
        .map(|a| {
            let usual = a.branch_facts.as_ref().map(|b| b.usual);
            format!("{} {}", a.branch.as_deref().unwrap_or("-"), usual.map_or("-".into(), |u| format!("{u:?}")))
        })
        .collect()
}

#[test]
fn a_branch_with_no_history_is_judged_against_its_peers_for_its_volume() {
    let branches = ["B0", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "NEW"];
    // NEW's 40 parcels all stall within the hour; its peers' (400 parcels)
    // one: 0.1 usual for NEW's 40 parcels. One stall is no anomaly at B1.
    let stalls = |b: &str| match b {
        "NEW" => 40,
        "B1" => 1,
        _ => 0,
    };
    assert_eq!(first_day_spikes(&branches, stalls, false), ["NEW Network(0.1111111111111111)"]);
    assert_eq!(first_day_spikes(&branches, stalls, true), ["NEW Network(0.1111111111111111)"], "after a restart");
    // Every branch's parcels stall together (all promised for one time, a
    // network-wide wave): as usual as at its peers, no branch's anomaly.
    assert_eq!(first_day_spikes(&branches, |_| 40, false), Vec::<String>::new());
}

#[test]
fn a_branch_with_no_history_and_no_peers_is_judged_by_the_floor() {
    assert_eq!(first_day_spikes(&["NEW"], |_| 40, false), ["NEW Floor"]);
    assert_eq!(first_day_spikes(&["NEW"], |_| 19, false), Vec::<String>::new(), "under min_count");
}

#[test]
fn an_hour_of_day_baseline_knows_the_branch_mornings_and_still_sees_an_odd_afternoon() {
    let pack = r#"
[[rule]]
id = "broken"
audience = ["customer"]
severity = "warning"
on = { kind = ["damaged"], each = true }

[[rule]]
id = "by_hour"
audience = ["branch"]
severity = "warning"
branch = { rules = ["broken"], window = "1h", min_count = 5, rate_factor = 2.0, by_hour = true }

[[rule]]
id = "flat"
audience = ["branch"]
severity = "warning"
branch = { rules = ["broken"], window = "1h", min_count = 5, rate_factor = 2.0 }
"#;
    let mut engine = engine_for(pack);
    let mut out = Vec::new();
    let mut n = 0;
    // Six broken parcels every morning at 09:10–09:35 for four days, then six one afternoon.
    let mut burst = |engine: &mut Engine, out: &mut Vec<Alert>, day: u32, hour: u32| {
        for m in 0..6 {
            n += 1;
            let at = format!("2026-11-{:02}T{hour:02}:{:02}:00Z", 16 + day, 10 + 5 * m);
            let json =
                format!(r#"{{"v":1,"event_id":"e{n}","parcel_id":"P{n}","kind":"damaged","at":"{at}","branch":"B1"}}"#);
            engine.ingest(&event(&json), out);
        }
        engine.advance(ts(&format!("2026-11-{:02}T{hour:02}:59:00Z", 16 + day)), out);
    };
    // The branch is watched from midnight (a parcel broken then), its first morning on.
    let first =
        r#"{"v":1,"event_id":"e0","parcel_id":"P0","kind":"damaged","at":"2026-11-16T00:00:00Z","branch":"B1"}"#;
    engine.ingest(&event(first), &mut out);
    for day in 0..4 {
        burst(&mut engine, &mut out, day, 9);
    }
    burst(&mut engine, &mut out, 3, 15);
    let fired = |rule: &str| -> Vec<String> {
        out.iter()
            .filter(|a| &*a.rule == rule && a.state == AlertState::Firing)
            .map(|a| a.at.to_string()[5..13].to_string())
            .collect()
    };
    assert_eq!(
        fired("by_hour"),
        ["11-16T09", "11-19T15"],
        "the first morning by the floor (no normal of its own yet); then only the odd afternoon"
    );
    assert!(fired("flat").contains(&"11-19T09".to_string()), "a flat rate calls every morning a spike");
}
