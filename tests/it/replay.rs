//! `simulate` and `replay`: determinism, duplicates, rejects.

use std::collections::BTreeSet;
use std::fs;

use super::{forewarn, simulate, text};

fn alert_ids(alerts: &str) -> BTreeSet<(String, String)> {
    alerts
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["alert_id"].as_str().unwrap().to_string(), v["state"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn simulate_is_deterministic_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let a = fs::read(simulate(dir.path(), "a.jsonl", 2000, 7)).unwrap();
    let b = fs::read(simulate(dir.path(), "b.jsonl", 2000, 7)).unwrap();
    let c = fs::read(simulate(dir.path(), "c.jsonl", 2000, 8)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.len() > 2000 * 5 * 150, "about eight events a parcel");
}

#[test]
fn replaying_the_same_file_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = simulate(dir.path(), "net.jsonl", 5000, 3);
    let run = |name: &str| {
        let out_path = dir.path().join(name);
        let out = forewarn(&["replay", &input, "--out", out_path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        fs::read(out_path).unwrap()
    };
    let first = run("a1.jsonl");
    assert_eq!(first, run("a2.jsonl"));
    let alerts = text(&first);
    let rules: BTreeSet<String> = alerts
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rule"].as_str().unwrap().to_string())
        .collect();
    for rule in ["stalled", "late", "delivery_failed", "repeated_failure", "customs_hold", "repeat_contact", "damaged"]
    {
        assert!(rules.contains(rule), "no {rule} alert in a 5000-parcel network: {rules:?}");
    }
}

#[test]
fn re_uploaded_events_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = simulate(dir.path(), "net.jsonl", 3000, 5);
    let lines: Vec<String> = fs::read_to_string(&input).unwrap().lines().map(str::to_string).collect();
    // Every tenth event is uploaded again, a few lines later.
    let mut doubled = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        doubled.push(l.clone());
        if i % 10 == 0 && i >= 3 {
            doubled.push(lines[i - 3].clone());
        }
    }
    let dup_path = dir.path().join("dup.jsonl");
    fs::write(&dup_path, doubled.join("\n") + "\n").unwrap();
    let replay = |path: &str| {
        let out = forewarn(&["replay", path, "--stats"]);
        assert!(out.status.success());
        (text(&out.stdout), text(&out.stderr))
    };
    let (plain, _) = replay(&input);
    let (with_dups, stats) = replay(dup_path.to_str().unwrap());
    assert_eq!(alert_ids(&plain), alert_ids(&with_dups));
    assert!(!plain.is_empty());
    let dups: u64 = stats
        .lines()
        .find(|l| l.starts_with("duplicates"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(dups as usize >= lines.len() / 10 - 1, "{stats}");
}

/// A 2,000-parcel network replayed (`--stats`) as it is and with one more
/// line for each of its first 40 delivered parcels, made by `extra` from the
/// network's lines and the delivery's event, each after the first line dated
/// `after` past the delivery.
struct Inserted {
    /// The lines added, each with whether it came before its parcel's
    /// delivery line (uploaded late).
    added: Vec<(String, bool)>,
    /// Alerts and statistics of the network as it is, and with the lines.
    plain: (String, String),
    with: (String, String),
}

fn after_deliveries(
    after: forewarn::time::Span,
    extra: impl Fn(&[(i64, String)], &serde_json::Value) -> String,
) -> Inserted {
    let dir = tempfile::tempdir().unwrap();
    let input = simulate(dir.path(), "net.jsonl", 2000, 7);
    let lines = timed_lines(&input);
    let event = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap();
    // A delivery uploaded twice (the network has re-uploads) counts once.
    let mut first = std::collections::HashSet::new();
    let mut pending: Vec<(i64, serde_json::Value)> = lines
        .iter()
        .map(|(at, l)| (*at, event(l)))
        .filter(|(_, e)| e["kind"] == "delivered" && first.insert(e["parcel_id"].to_string()))
        .take(40)
        .collect();
    let (mut out, mut added, mut delivered) = (Vec::new(), Vec::new(), std::collections::HashSet::new());
    let mut newest = i64::MIN;
    for (at, line) in &lines {
        out.push(line.clone());
        newest = newest.max(*at);
        let e = event(line);
        if e["kind"] == "delivered" {
            delivered.insert(e["parcel_id"].to_string());
        }
        pending.retain(|(done, d)| {
            let due = newest >= done + after.0;
            if due {
                let line = extra(&lines, d);
                out.push(line.clone());
                added.push((line, !delivered.contains(&d["parcel_id"].to_string())));
            }
            !due
        });
    }
    assert!(pending.is_empty(), "the network runs on past its first 40 deliveries");
    let path = dir.path().join("with.jsonl");
    fs::write(&path, out.join("\n") + "\n").unwrap();
    Inserted { added, plain: replay_stats(&input), with: replay_stats(path.to_str().unwrap()) }
}

/// `forewarn replay --stats` of `path`: its alerts and its statistics.
fn replay_stats(path: &str) -> (String, String) {
    let out = forewarn(&["replay", path, "--stats"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

/// A carrier's system sends labels again days after their parcels were
/// delivered and left the window (past the 48 h retention): each one once
/// started its parcel anew and its promise told the customer it was late.
#[test]
fn labels_sent_again_after_their_parcels_left_change_nothing() {
    let label_of = |lines: &[(i64, String)], d: &serde_json::Value| {
        let id = d["parcel_id"].to_string();
        let label = lines.iter().find(|(_, l)| l.contains(r#""kind":"label_created""#) && l.contains(&id));
        label.expect("every parcel has its label").1.clone()
    };
    let Inserted { plain: (plain, _), with: (again, stats), .. } =
        after_deliveries(forewarn::time::Span::hours(72), label_of);
    assert!(!plain.is_empty());
    let added: Vec<_> = alert_ids(&again).difference(&alert_ids(&plain)).cloned().collect();
    assert!(added.is_empty(), "{} alerts from labels sent again: {added:?}", added.len());
    assert_eq!(alert_ids(&plain), alert_ids(&again));
    let closed = stats.lines().find_map(|l| l.split("for closed parcels").nth(1)).expect("the closed count");
    assert!(closed.trim().parse::<usize>().unwrap() >= 40, "every label sent again counted: {stats}");
}

/// A failed attempt scanned an hour after a delivery (another parcel's
/// barcode): once, each told the delivered parcel's customer "we missed
/// you", then that it was stalled, then late (120 false alerts for 40).
/// Only a failure that came before its parcel's late-uploaded delivery is
/// news when it comes; nothing else is told of those parcels.
#[test]
fn failed_attempts_scanned_after_deliveries_tell_nothing_false() {
    let failure = |_: &[(i64, String)], d: &serde_json::Value| {
        let at =
            forewarn::time::Ts::parse_rfc3339(d["at"].as_str().unwrap()).unwrap().plus(forewarn::time::Span::hours(1));
        serde_json::json!({
            "v": 1, "event_id": format!("{}-x", d["event_id"].as_str().unwrap()), "parcel_id": d["parcel_id"],
            "kind": "delivery_failed", "at": at.to_string(), "reason": "no_one_home", "facility": d["facility"]
        })
        .to_string()
    };
    let Inserted { added: scanned, plain: (plain, plain_stats), with: (with_scans, stats) } =
        after_deliveries(forewarn::time::Span::hours(1), failure);
    let failed: BTreeSet<String> = scanned
        .iter()
        .map(|(l, _)| serde_json::from_str::<serde_json::Value>(l).unwrap()["parcel_id"].as_str().unwrap().to_string())
        .collect();
    let plain_ids = alert_ids(&plain);
    let added: Vec<(String, String)> = with_scans
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|a| failed.contains(a["parcel_id"].as_str().unwrap_or("")))
        .filter(|a| {
            !plain_ids
                .contains(&(a["alert_id"].as_str().unwrap().to_string(), a["state"].as_str().unwrap().to_string()))
        })
        .map(|a| (a["rule"].as_str().unwrap().to_string(), a["parcel_id"].as_str().unwrap().to_string()))
        .collect();
    assert!(added.iter().all(|(rule, _)| rule == "delivery_failed"), "told of delivered parcels: {added:?}");
    let news = scanned.iter().filter(|(_, before)| *before).count();
    assert!(added.len() <= news, "{} failures told, {news} came before their delivery: {added:?}", added.len());
    let superseded = |stats: &str| -> usize {
        let after = stats.lines().find_map(|l| l.split("superseded").nth(1)).expect("the superseded count");
        after.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert!(stats.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["rejected", "0"]), "{stats}");
    assert!(superseded(&stats) >= superseded(&plain_stats) + 40 - news, "{stats}");
}

#[test]
fn bad_lines_are_kept_with_their_reason_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.jsonl");
    let big = format!(r#"{{"v":1,"pad":"{}"}}"#, "x".repeat(70_000));
    let lines = [
        r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"damaged","at":"2026-11-20T08:00:00Z","branch":"FR-PAR-12"}"#,
        r#"{"v":1,"event_id":"e2","kind":"departed","at":"2026-11-20T09:00:00Z"}"#,
        r#"{"v":1,"event_id":"e3","parcel_id":"P3","kind":"teleported","at":"2026-11-20T09:00:00Z"}"#,
        r#"{"v":1,"event_id":"e4","parcel_id":"P4","kind":"departed","at":"last tuesday"}"#,
        r#"{"v":2,"event_id":"e5","parcel_id":"P5","kind":"departed","at":"2026-11-20T09:00:00Z"}"#,
        r#"not json at all"#,
        &big,
        r#"{"v":1,"event_id":"e6","parcel_id":"P6","kind":"lost","at":"2026-11-20T10:00:00Z"}"#,
    ];
    fs::write(&input, lines.join("\n")).unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let out = forewarn(&["replay", input.to_str().unwrap(), "--rejects", rejects.to_str().unwrap()]);
    assert!(out.status.success(), "rejects do not fail the run");
    let alerts = alert_ids(&text(&out.stdout));
    assert_eq!(alerts.len(), 2, "damaged P1 and lost P6 still alert");
    let rejected: Vec<serde_json::Value> =
        fs::read_to_string(&rejects).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let reasons: Vec<(u64, &str)> =
        rejected.iter().map(|r| (r["line"].as_u64().unwrap(), r["reason"].as_str().unwrap())).collect();
    assert_eq!(reasons[0], (2, "missing parcel_id"));
    assert_eq!(reasons[1], (3, "unknown kind \"teleported\""));
    assert_eq!(reasons[2], (4, "at: not an RFC 3339 timestamp"));
    assert_eq!(reasons[3], (5, "v: unsupported contract version 2 (this processor reads v1)"));
    assert!(reasons[4].1.starts_with("not valid JSON"));
    assert!(reasons[5].1.starts_with("event larger than 64 KiB"));
    assert_eq!(reasons.len(), 6);
    // The original bytes are kept, so an operator can fix and replay them.
    assert_eq!(rejected[0]["input"].as_str().unwrap(), lines[1]);
    assert_eq!(rejected[0]["field"].as_str().unwrap(), "parcel_id");
}

/// The simulated network's lines with their event times.
fn timed_lines(path: &str) -> Vec<(i64, String)> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let at = forewarn::time::Ts::parse_rfc3339(v["at"].as_str().unwrap()).unwrap();
            (at.0, l.to_string())
        })
        .collect()
}

#[test]
fn arrival_order_within_the_lateness_does_not_change_the_alerts() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let mut lines = timed_lines(&simulate(dir.path(), "net.jsonl", 4000, 11));
    lines.sort_by_key(|(at, _)| *at);
    let write = |name: &str, lines: &[(i64, String)]| {
        let path = dir.path().join(name);
        fs::write(&path, lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")).unwrap();
        let out = forewarn(&["replay", path.to_str().unwrap()]);
        assert!(out.status.success());
        text(&out.stdout)
    };
    let on_time = write("on_time.jsonl", &lines);
    // Three events in ten are uploaded up to 40 minutes late: within the 1 h lateness.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut late: Vec<(i64, String)> = lines
        .iter()
        .map(|(at, l)| (at + if rng.gen_bool(0.3) { rng.gen_range(0..40 * 60_000) } else { 0 }, l.clone()))
        .collect();
    late.sort_by_key(|(arrival, _)| *arrival);
    assert_ne!(late, lines, "the order really changed");
    let uploaded_late = write("late.jsonl", &late);
    let (a, b) = (alert_ids(&on_time), alert_ids(&uploaded_late));
    assert!(a.len() > 500, "{} alerts", a.len());
    let missing: Vec<_> = a.difference(&b).collect();
    let extra: Vec<_> = b.difference(&a).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}\nextra {extra:?}");
}

#[test]
fn standard_input_and_a_file_give_the_same_alerts() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let input = simulate(dir.path(), "net.jsonl", 2000, 9);
    let from_file = forewarn(&["replay", &input]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(["replay", "-"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = fs::read(&input).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let from_stdin = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(from_stdin.status.success());
    assert!(!from_file.stdout.is_empty());
    assert_eq!(from_file.stdout, from_stdin.stdout);
}

/// `forewarn report` on a simulated network: its JSON holds the figures the
/// issue names, they agree with each other, and the text says the same.
#[test]
fn the_report_judges_every_contact_about_a_problem_parcel() {
    let dir = tempfile::tempdir().unwrap();
    let events = simulate(dir.path(), "net.jsonl", 4000, 9);
    let out = forewarn(&["report", &events, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert_eq!(n("parcels"), 4000);
    assert!(n("problem_parcels") > 200 && n("problem_parcels_told") <= n("problem_parcels"), "{r}");
    let misses: u64 = r["misses_by_topic"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(n("contacts_preempted") + misses, n("contacts"), "every contact preempted or missed");
    let share = r["contacts_preempted_share"].as_f64().unwrap();
    assert!((share - n("contacts_preempted") as f64 / n("contacts") as f64).abs() < 1e-3);
    let (median, p10) = (r["median_lead_hours"].as_f64().unwrap(), r["p10_lead_hours"].as_f64().unwrap());
    assert!(0.0 < p10 && p10 <= median, "{r}");
    let by_rule: u64 =
        r["rules"].as_object().unwrap().values().map(|f| f["contacts_preempted"].as_u64().unwrap()).sum();
    assert_eq!(by_rule, n("contacts_preempted"), "each preempted contact counted for the one rule that spoke first");
    for key in ["precision", "recall", "median_lead_hours"] {
        assert!(r["predicted_late"].get(key).is_some(), "predicted_late.{key}");
    }
    let page = dir.path().join("report.html");
    let plain = forewarn(&["report", &events, "--html", page.to_str().unwrap()]);
    let said = text(&plain.stdout);
    let headline = format!("contacts after forewarn spoke: {} of {}", n("contacts_preempted"), n("contacts"));
    assert!(said.contains(&headline), "{said}");
    let html = fs::read_to_string(&page).expect("the page");
    assert!(html.starts_with("<!DOCTYPE html>") && html.matches("<svg").count() >= 3, "three charts");
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="), "self-contained");
    assert!(html.contains(&format!("({} of {})", n("contacts_preempted"), n("contacts"))), "the figures too");
}

/// A replay and a report run with a deployment's own engine settings
/// (`--config`, as `run` does; flags over it): once, their retention, idle
/// time and window could only be the defaults, so a backtest judged another
/// window.
#[test]
fn a_replay_and_a_report_take_the_engine_settings_of_the_deployments_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let events = simulate(dir.path(), "net.jsonl", 2000, 31);
    let config = dir.path().join("forewarn.toml");
    std::fs::write(&config, "[engine]\nmax_parcels = 200\nretention = \"1h\"\n").unwrap();
    let config = config.to_str().unwrap();
    let stats = |extra: &[&str]| {
        let args = [&["replay", events.as_str(), "--out", "/dev/null", "--stats"], extra].concat();
        let out = forewarn(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        let window = stderr.lines().find(|l| l.starts_with("window")).expect("a window line").to_string();
        // "… evicted N done, N idle, N for capacity"
        let numbers: Vec<u64> = window
            .split("evicted ")
            .nth(1)
            .expect("evictions")
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        (numbers[0], numbers[2])
    };
    let (done, capacity) = stats(&[]);
    assert_eq!(capacity, 0, "the default window holds the network");
    let (_, capacity_200) = stats(&["--config", config]);
    assert!(capacity_200 > 0, "the configured window of 200 parcels overflows");
    let (done_1h, overridden) = stats(&["--config", config, "--max-parcels", "1000000"]);
    assert_eq!(overridden, 0, "the flag wins over the file");
    assert!(done_1h > done, "done parcels leave after the configured hour: {done_1h} > {done}");
    // The report: the window of 200 parcels tells fewer customers; the
    // example configuration (the defaults) changes nothing.
    let told = |extra: &[&str]| {
        let out = forewarn(&[&["report", events.as_str(), "--json"], extra].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        r["problem_parcels_told"].as_u64().expect("problem_parcels_told")
    };
    let example = super::repo("forewarn.toml");
    let default = told(&[]);
    assert_eq!(told(&["--config", example.to_str().unwrap()]), default, "the example is the defaults");
    assert!(told(&["--config", config]) < default, "a window of 200 parcels tells fewer");
}
