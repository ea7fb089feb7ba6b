//! Replay throughput against decoding alone, measured in one run.
//!
//! `cargo bench --bench replay` simulates a network in memory (200,000
//! parcels by default; `FOREWARN_BENCH_PARCELS` to change, or
//! `FOREWARN_BENCH_FILE` to read a file made by `forewarn simulate`), then
//! alternates rounds of decode-only and of full replay (decode, engine,
//! alerts written as JSON to a discarding sink) over the same bytes, and
//! reports the best round of each and their ratio. Alternating rounds and
//! taking the best keep a noisy shared machine from skewing the ratio.

use std::io;
use std::path::Path;
use std::time::Instant;

use forewarn::engine::{Config, Engine};
use forewarn::replay::{self, Sinks};
use forewarn::rules::RuleSet;
use forewarn::simulate::{self, Network};
use forewarn::time::Ts;

const ROUNDS: usize = 3;

fn main() {
    let data = match std::env::var("FOREWARN_BENCH_FILE") {
        Ok(path) => std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}")),
        Err(_) => {
            let parcels = std::env::var("FOREWARN_BENCH_PARCELS").ok().and_then(|p| p.parse().ok()).unwrap_or(200_000);
            let net =
                Network { parcels, seed: 7, start: Ts::parse_rfc3339("2026-11-16T00:00:00Z").unwrap(), days: 1.0 };
            let mut data = Vec::new();
            simulate::write(&net, &mut data, |_| {}).unwrap();
            data
        }
    };
    let rules = RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).expect("the default rules load");
    let lines = data.iter().filter(|&&b| b == b'\n').count();
    println!("input: {lines} events, {:.1} MiB", data.len() as f64 / 1048576.0);

    let (mut best_decode, mut best_replay) = (f64::MAX, f64::MAX);
    let mut alerts = 0;
    for round in 1..=ROUNDS {
        let t = Instant::now();
        let decoded = replay::decode_only(&data);
        let decode = t.elapsed().as_secs_f64();
        assert_eq!(decoded as usize, lines, "every simulated event decodes");

        let mut engine = Engine::new(rules.clone(), Config::default());
        let mut sink = io::sink();
        let mut sinks = Sinks { alerts: &mut sink, rejects: None };
        let t = Instant::now();
        let summary = replay::run(&mut &data[..], &mut engine, &mut sinks, &mut |_| {}).unwrap();
        let full = t.elapsed().as_secs_f64();
        alerts = summary.alerts_total();
        println!(
            "round {round}: decode only {:>10.0} events/s   replay {:>10.0} events/s   ratio {:.2}",
            lines as f64 / decode,
            lines as f64 / full,
            decode / full
        );
        best_decode = best_decode.min(decode);
        best_replay = best_replay.min(full);
    }
    println!(
        "best: decode only {:.0} events/s, replay {:.0} events/s ({alerts} alerts), replay/decode = {:.2}",
        lines as f64 / best_decode,
        lines as f64 / best_replay,
        best_decode / best_replay
    );
}
