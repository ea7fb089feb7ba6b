//! Replay throughput against decoding alone, and with the foresight rules
//! against without them, measured in one run.
//!
//! `cargo bench --bench replay` simulates a network in memory (200,000
//! parcels by default; `FOREWARN_BENCH_PARCELS` to change, or
//! `FOREWARN_BENCH_FILE` to read a file made by `forewarn simulate`), then
//! runs rounds (`FOREWARN_BENCH_ROUNDS`, 3 by default) over the same bytes.
//! A round goes through the input piece by piece (64 MiB of lines), and
//! puts each piece through three things in turn, each timed: decoding
//! alone; a full replay with the default rules (decode, engine, alerts
//! written as JSON to a discarding sink); a full replay without the
//! foresight rules (`predicted_late`, `facility_stall`), each replay with
//! an engine of its own. Pieces alternate the order. So the three meet the
//! same machine within milliseconds of each other, and the ratios hold on
//! a shared machine whose speed drifts by a fifth from one minute to the
//! next, where timing whole runs one after the other did not.

use std::io;
use std::path::Path;
use std::time::Instant;

use forewarn::engine::{Config, Split};
use forewarn::replay::{self, Run, Sinks};
use forewarn::rules::RuleSet;
use forewarn::simulate::{self, Network, Shape};
use forewarn::time::Ts;

/// How much input each side takes in turn: enough events (some 300,000)
/// that warming the caches again after the other sides is lost in them,
/// few enough seconds that the machine does not drift in between.
const PIECE: usize = 64 << 20;

/// The rules the foresight ratio leaves out.
const FORESIGHT: [&str; 2] = ["predicted_late", "facility_stall"];

fn main() {
    let data = match std::env::var("FOREWARN_BENCH_FILE") {
        Ok(path) => std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}")),
        Err(_) => {
            let parcels = env_number("FOREWARN_BENCH_PARCELS", 200_000) as u64;
            let net = Network {
                parcels,
                seed: 7,
                start: Ts::parse_rfc3339("2026-11-16T00:00:00Z").unwrap(),
                days: 1.0,
                shape: Shape::default(),
                reaction: Default::default(),
            };
            let mut data = Vec::new();
            simulate::write(&net, &mut data, |_| {}).unwrap();
            data
        }
    };
    let rounds = env_number("FOREWARN_BENCH_ROUNDS", 3).max(1);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let rules = RuleSet::load(&dir).expect("the default rules load");
    let without = tempfile::tempdir().expect("temp dir");
    without_foresight(&dir, without.path());
    let plain = RuleSet::load(without.path()).expect("the rules without foresight load");
    assert_eq!(plain.len() + FORESIGHT.len(), rules.len(), "the foresight rules are in the pack");
    let lines = data.iter().filter(|&&b| b == b'\n').count() as f64;
    println!("input: {lines} events, {:.1} MiB", data.len() as f64 / 1048576.0);

    let (mut engine_ratios, mut foresight_ratios) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let ([decode, full, plain_time], alerts) = round_timed(&data, lines as u64, &rules, &plain);
        println!(
            "round {round}: decode only {:>9.0} events/s   replay {:>9.0} ({} alerts)   without foresight {:>9.0} \
             ({} alerts)   replay/decode {:.2}   with/without foresight {:.3}",
            lines / decode,
            lines / full,
            alerts[0],
            lines / plain_time,
            alerts[1],
            decode / full,
            plain_time / full
        );
        engine_ratios.push(decode / full);
        foresight_ratios.push(plain_time / full);
    }
    println!(
        "median of {rounds} rounds: replay/decode = {:.2}, with/without foresight = {:.3}",
        median(&mut engine_ratios),
        median(&mut foresight_ratios)
    );
}

/// One round over `data` (`lines` events): the seconds decoding alone,
/// replaying with `rules` and with `plain` took, and each replay's alerts.
fn round_timed(data: &[u8], lines: u64, rules: &RuleSet, plain: &RuleSet) -> ([f64; 3], [u64; 2]) {
    let mut engines = [rules, plain].map(|r| Split::new(r.clone(), Config::default()));
    let mut outs = [io::sink(), io::sink()];
    let mut sinks = outs.each_mut().map(|out| Sinks { alerts: out, rejects: None });
    let [a, b] = &mut engines;
    let [sa, sb] = &mut sinks;
    let mut runs = [Run::new(a, sa), Run::new(b, sb)];
    let (mut seconds, mut decoded) = ([0.0; 3], 0);
    for (i, piece) in replay::pieces(data, PIECE).enumerate() {
        let order = if i % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for k in order {
            let t = Instant::now();
            match k {
                0 => decoded += replay::decode_only(piece),
                _ => runs[k - 1].chunk(piece).expect("a sink takes everything"),
            }
            seconds[k] += t.elapsed().as_secs_f64();
        }
    }
    assert_eq!(decoded, lines, "every event decodes");
    let mut alerts = [0; 2];
    for (k, run) in runs.into_iter().enumerate() {
        let t = Instant::now();
        alerts[k] = run.finish().expect("a sink takes everything").alerts_total();
        seconds[k + 1] += t.elapsed().as_secs_f64();
    }
    (seconds, alerts)
}

/// Writes the pack of `from` into `to` without the [`FORESIGHT`] rules; its
/// other folders (templates, directory) are linked.
fn without_foresight(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("the rules folder reads") {
        let path = entry.expect("a rules folder entry").path();
        let target = to.join(path.file_name().expect("a named entry"));
        if path.is_dir() {
            std::os::unix::fs::symlink(&path, &target).expect("a link in the temp dir");
        } else if path.extension().is_some_and(|e| e == "toml") {
            let mut file: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            if let Some(toml::Value::Array(rules)) = file.get_mut("rule") {
                rules.retain(|r| !FORESIGHT.iter().any(|id| r.get("id").and_then(|v| v.as_str()) == Some(id)));
            }
            std::fs::write(&target, toml::to_string(&file).unwrap()).expect("a rule file in the temp dir");
        }
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (values[(n - 1) / 2] + values[n / 2]) / 2.0
}
