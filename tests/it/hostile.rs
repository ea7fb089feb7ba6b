//! Hostile input: over 100,000 malformed lines of more than 50 kinds,
//! generated (not a fixture) and mixed into a valid simulated network,
//! through `replay` and through the live processor on a real nats-server.
//! Every bad line is refused with a short reason naming the field, nothing
//! panics, and the valid events' alerts are those of the clean network.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use rand::{Rng, SeedableRng};

use super::nats::{self, wait_until, NatsServer, Processor};
use super::{forewarn, simulate, text};

/// A valid event to break, its fields filled in.
fn valid(i: usize) -> serde_json::Value {
    serde_json::json!({
        "v": 1, "event_id": format!("bad-{i}"), "parcel_id": format!("BAD{i:08}"), "kind": "departed",
        "at": "2026-11-17T10:00:00Z", "facility": "FR-LYS-HUB", "branch": "FR-PAR-12", "country": "FR"
    })
}

/// `valid(i)` with `field` set to `value` (`null`: removed).
fn with(i: usize, field: &str, value: serde_json::Value) -> Vec<u8> {
    let mut v = valid(i);
    if let Some(o) = v.as_object_mut() {
        match value {
            serde_json::Value::Null => o.remove(field),
            value => o.insert(field.to_string(), value),
        };
    }
    serde_json::to_vec(&v).expect("JSON")
}

/// A label whose recipient has `field` set to `value`.
fn recipient(i: usize, field: &str, value: serde_json::Value) -> Vec<u8> {
    let mut v = valid(i);
    v["kind"] = "label_created".into();
    v["promised_by"] = "2026-11-19T18:00:00Z".into();
    v["recipient"] = serde_json::json!({ "name": "Léa Martin", "phone": "+33612345678", "channels": ["sms"] });
    v["recipient"][field] = value;
    serde_json::to_vec(&v).expect("JSON")
}

/// The `kind`-th way to break an event; each is refused whatever `i`.
fn broken(kind: usize, i: usize) -> Vec<u8> {
    use serde_json::json;
    let s = |text: &str| text.as_bytes().to_vec();
    match kind {
        0 => s("{not json"),
        1 => s("{}"),
        2 => s("[]"),
        3 => s("\"departed\""),
        4 => s("42"),
        5 => s("null"),
        6 => with(i, "v", json!(null)),
        7 => with(i, "v", json!(2)),
        8 => with(i, "v", json!("1")),
        9 => with(i, "v", json!(1.5)),
        10 => String::from_utf8(with(i, "v", json!(7))).expect("utf-8").replace("\"v\":7", "\"v\":1e400").into_bytes(),
        11 => with(i, "event_id", json!(null)),
        12 => with(i, "event_id", json!("")),
        13 => with(i, "event_id", json!("e".repeat(65))),
        14 => with(i, "event_id", json!(17)),
        15 => with(i, "event_id", json!(format!("e{i}\r\nBcc: victim@evil.example"))),
        16 => with(i, "parcel_id", json!(null)),
        17 => with(i, "parcel_id", json!("")),
        18 => with(i, "parcel_id", json!("P".repeat(65))),
        19 => with(i, "parcel_id", json!({ "id": i })),
        20 => with(i, "parcel_id", json!(format!("P{i}\u{0}"))),
        21 => with(i, "kind", json!(null)),
        22 => with(i, "kind", json!("teleported")),
        23 => with(i, "kind", json!("K".repeat(600))),
        24 => with(i, "kind", json!(3)),
        25 => with(i, "at", json!(null)),
        26 => with(i, "at", json!("yesterday")),
        27 => with(i, "at", json!("2026-11-17T10:00:00")),
        28 => with(i, "at", json!("9999-12-31T23:59:59Z")),
        29 => with(i, "at", json!("0000-01-01T00:00:00+01:00")),
        30 => with(i, "at", json!("2026-13-01T00:00:00Z")),
        31 => with(i, "at", json!("2026-02-30T00:00:00Z")),
        32 => with(i, "at", json!(1_790_000_000)),
        33 => with(i, "country", json!("FRA")),
        34 => with(i, "country", json!("lea.martin@example.fr")),
        35 => with(i, "country", json!(33)),
        36 => recipient(i, "name", json!("N".repeat(5_000))),
        37 => recipient(i, "email", json!("lea@example.fr\r\nBcc: victim@evil.example")),
        38 => recipient(i, "name", json!("Léa \u{202e}txt.exe")),
        39 => recipient(i, "channels", json!("sms")),
        40 => recipient(i, "channels", json!([1])),
        41 => recipient(i, "phone", json!(33_612_345_678u64)),
        42 => {
            let mut v: serde_json::Value = serde_json::from_slice(&recipient(i, "name", json!("x"))).expect("JSON");
            v["promised_by"] = json!(null);
            serde_json::to_vec(&v).expect("JSON")
        }
        43 => with(i, "kind", json!("label_created")),
        44 => with(i, "kind", json!("ready_for_pickup")),
        45 => with(i, "promised_by", json!("next tuesday")),
        46 => with(i, "return_by", json!(false)),
        47 => with(i, "branch", json!("B".repeat(3000))),
        48 => with(i, "facility", json!("HUB\u{1b}[2J")),
        49 => with(i, "service", json!(["express"])),
        50 => with(i, "reason", json!({ "code": "no_one_home" })),
        51 => with(i, "recipient", json!("Léa")),
        52 => format!(r#"{{"v":1,"pad":{}0{}}}"#, "[".repeat(100), "]".repeat(100)).into_bytes(),
        // Over 64 KiB: one in twenty of its turns (a few MB in all), a cut-off array the others.
        53 if i.is_multiple_of(20) => format!(r#"{{"v":1,"pad":"{}"}}"#, "x".repeat(70_000)).into_bytes(),
        53 => s(r#"{"v":1,"event_id":"e","parcel_id":["#),
        54 => {
            let mut v = with(i, "kind", json!("departed"));
            v.truncate(v.len() / 2);
            v
        }
        55 => {
            let mut v = with(i, "facility", json!("HUB"));
            v.splice(10..10, [0xff, 0xfe]);
            v
        }
        56 => {
            let mut v = with(i, "kind", json!("departed"));
            v.extend_from_slice(b" trailing");
            v
        }
        // Dates already past when given: a promise a year before its label, a return date before its pickup notice.
        57 => {
            let mut v: serde_json::Value = serde_json::from_slice(&recipient(i, "name", json!("Léa"))).expect("JSON");
            v["promised_by"] = "2025-11-19T18:00:00Z".into();
            serde_json::to_vec(&v).expect("JSON")
        }
        58 => {
            let mut v: serde_json::Value =
                serde_json::from_slice(&with(i, "kind", json!("ready_for_pickup"))).expect("JSON");
            v["return_by"] = "2026-11-17T09:00:00Z".into();
            serde_json::to_vec(&v).expect("JSON")
        }
        _ => {
            let mut v = "\u{feff}".as_bytes().to_vec();
            v.extend(with(i, "kind", json!("arrived")));
            v
        }
    }
}

const KINDS: usize = 60;
const BAD_LINES: usize = 100_000;

/// The valid network with the bad lines mixed in at random places, and
/// how many of each kind went in.
fn hostile(valid: &str, seed: u64) -> (Vec<u8>, usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let lines: Vec<&str> = valid.lines().collect();
    let mut at: Vec<usize> = (0..BAD_LINES).map(|_| rng.gen_range(0..=lines.len())).collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(valid.len() * 3);
    let mut bad = at.iter().peekable();
    let mut n = 0;
    for (i, line) in lines.iter().enumerate() {
        while bad.next_if(|&&p| p == i).is_some() {
            out.extend(broken(n % KINDS, n));
            out.push(b'\n');
            n += 1;
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    for _ in bad {
        out.extend(broken(n % KINDS, n));
        out.push(b'\n');
        n += 1;
    }
    (out, n)
}

/// What every refusal must be: a known code, a short reason that names the
/// field when there is one and quotes no address.
fn check_reason(code: &str, reason: &str, field: Option<&str>) {
    assert!(forewarn::event::Reject::CODES.contains(&code), "unknown code {code}: {reason}");
    assert!(reason.chars().count() <= 200, "a reason of {} characters: {reason:.80}", reason.chars().count());
    assert!(!reason.contains('@') && !reason.contains('\n') && !reason.contains('\r'), "{reason}");
    if let Some(field) = field {
        assert!(reason.contains(field), "{reason} does not name {field}");
    }
}

/// Scans dated hours and days past the newest of `events` (a scanner whose
/// clock is ahead), each before a line of `events` picked at random.
fn future_scans(events: &[u8], newest: &str, seed: u64) -> (Vec<u8>, usize) {
    let newest = forewarn::time::Ts::parse_rfc3339(newest).expect("a time");
    let lines: Vec<&[u8]> = events.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut at: Vec<usize> = (0..FUTURE).map(|_| rng.gen_range(0..lines.len())).collect();
    at.sort_unstable();
    let ahead = [forewarn::time::Span::hours(3), forewarn::time::Span::hours(24 * 5)];
    let mut out = Vec::with_capacity(events.len() + FUTURE * 200);
    let mut future = at.iter().enumerate().peekable();
    for (i, line) in lines.iter().enumerate() {
        while let Some((k, _)) = future.next_if(|(_, &p)| p == i) {
            let when = newest.plus(ahead[k % ahead.len()]);
            let (id, kind) =
                if k % 3 == 0 { (format!("FUT{k:06}"), "damaged") } else { (format!("BAD{k:08}"), "arrived") };
            out.extend(
                format!(r#"{{"v":1,"event_id":"f{k}","parcel_id":"{id}","kind":"{kind}","at":"{when}"}}"#).bytes(),
            );
            out.push(b'\n');
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    (out, FUTURE)
}

/// How many future-dated scans go among the bad lines.
const FUTURE: usize = 100;

#[test]
fn a_hundred_thousand_bad_lines_of_61_kinds_and_future_scans_change_no_alert_in_a_replay() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let clean = simulate(dir.path(), "clean.jsonl", 6000, 31);
    let (dirty, bad) = hostile(&fs::read_to_string(&clean).expect("events"), 31);
    let (dirty, future) = future_scans(&dirty, &nats::newest(&clean), 31);
    let dirty_path = dir.path().join("dirty.jsonl");
    fs::write(&dirty_path, &dirty).expect("written");
    let replay = |input: &str, name: &str| {
        let (out, rejects) = (dir.path().join(format!("{name}.alerts")), dir.path().join(format!("{name}.rejects")));
        let run = forewarn(&[
            "replay",
            input,
            "--out",
            out.to_str().expect("utf-8"),
            "--rejects",
            rejects.to_str().expect("utf-8"),
        ]);
        assert!(run.status.success(), "{name}: {}", text(&run.stderr));
        (fs::read(out).expect("alerts"), fs::read_to_string(rejects).expect("rejects"))
    };
    let (clean_alerts, clean_rejects) = replay(&clean, "clean");
    let (dirty_alerts, dirty_rejects) = replay(dirty_path.to_str().expect("utf-8"), "dirty");
    assert!(clean_rejects.is_empty());
    assert!(clean_alerts == dirty_alerts, "the valid events' alerts, byte for byte");
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut lines = BTreeSet::new();
    for record in dirty_rejects.lines() {
        let r: serde_json::Value = serde_json::from_str(record).expect("a JSON reject record");
        let (code, reason) = (r["code"].as_str().expect("a code"), r["reason"].as_str().expect("a reason"));
        check_reason(code, reason, r["field"].as_str());
        assert!(r["input"].is_string() || r["input_hex"].is_string(), "the bytes are kept: {record:.200}");
        *codes.entry(code.to_string()).or_default() += 1;
        lines.insert(r["line"].as_u64().expect("a line number"));
    }
    assert_eq!(lines.len(), bad + future, "every bad line refused, once: {codes:?}");
    assert_eq!(codes.get("future_event"), Some(&future), "3 h and 5 days ahead");
    assert!(codes.len() >= 5, "{codes:?}");
}

/// The same through NATS, with one more fault only live can see: events
/// dated hours and days after their arrival at the server.
#[test]
fn bad_and_future_messages_are_dead_lettered_live_and_the_alerts_are_the_clean_ones() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (parcels, seed) = (3000, 32);
    let events = simulate(dir.path(), "net.jsonl", parcels, seed);
    let expected = nats::replayed(&events, dir.path());
    let clock = dir.path().join("clock");
    let config = nats::config(dir.path(), &clock);
    let server = NatsServer::start();
    let rt = nats::runtime();
    let js = rt.block_on(nats::jetstream(&server.url()));
    let now = forewarn::time::Ts::from(std::time::SystemTime::now());
    let ahead = [forewarn::time::Span::hours(3), forewarn::time::Span::hours(24 * 5)];
    let bad = BAD_LINES;
    // The network first (its publisher makes the streams), then the faults.
    nats::finish(nats::publish(&server.url(), parcels, seed, &[]));
    rt.block_on(async {
        let mut acks = Vec::new();
        for n in 0..bad + ahead.len() * 50 {
            let (id, body) = if n < bad {
                (format!("BAD{n:08}"), broken(n % KINDS, n))
            } else {
                let k = n - bad;
                let at = now.plus(ahead[k % ahead.len()]);
                let id = format!("FUT{k:06}");
                (
                    id.clone(),
                    format!(r#"{{"v":1,"event_id":"f{k}","parcel_id":"{id}","kind":"damaged","at":"{at}"}}"#)
                        .into_bytes(),
                )
            };
            let subject = format!("scans.{}", forewarn::partition::of(&id, 16));
            acks.push(js.publish(subject, body.into()).await.expect("sent"));
            if acks.len() == 1000 {
                for ack in acks.drain(..) {
                    ack.await.expect("stored");
                }
            }
        }
        for ack in acks {
            ack.await.expect("stored");
        }
    });
    nats::set_clock(&clock, &nats::newest(&events));
    let p = Processor::start(dir.path(), &config, &["--nats", &server.url()]);
    let letters = (bad + ahead.len() * 50) as u64;
    wait_until("every bad message dead-lettered", || rt.block_on(nats::stream_count(&js, "DEADLETTERS")) >= letters);
    wait_until("every alert", || rt.block_on(nats::stream_count(&js, "ALERTS")) >= expected.len() as u64);
    let (status, log) = p.stop();
    assert!(status.success(), "forewarn run exited with {status}:\n{log:.2000}");
    nats::assert_same(&rt.block_on(nats::alerts(&js)), &expected);
    assert_eq!(rt.block_on(nats::stream_count(&js, "DEADLETTERS")), letters, "each once");
    let dead = rt.block_on(nats::read_stream(&js, "DEADLETTERS"));
    let mut future = 0;
    for (_, headers, _) in &dead {
        let header = |name: &str| headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
        let (code, reason) =
            (header("Forewarn-Reason-Code").expect("a code"), header("Forewarn-Reason").expect("a reason"));
        check_reason(&code, &reason, None);
        future += usize::from(code == "future_event");
    }
    assert_eq!(future, ahead.len() * 50, "hours and days ahead of their arrival");
    assert!(log.lines().filter(|l| l.contains("dead letters")).count() < 100, "logged per reason, not per letter");
}
