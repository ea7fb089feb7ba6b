//! Checkpoint and restore of a full window.
//!
//! `FOREWARN_BENCH_FILE=net.jsonl cargo bench --bench checkpoint` ingests a
//! simulated network up to its busiest point (by default the first half of
//! its events), then times the snapshot (what stops a live stream), its
//! compression (beside the stream, live) and `Engine::restore`, and reports
//! the checkpoint's size. Without the variable, 200,000 parcels are
//! simulated in memory.

use std::path::Path;
use std::time::Instant;

use forewarn::engine::{Config, Engine};
use forewarn::event::decode;
use forewarn::rules::RuleSet;
use forewarn::simulate::{self, Network, Shape};
use forewarn::time::Ts;

fn main() {
    let data = match std::env::var("FOREWARN_BENCH_FILE") {
        Ok(path) => std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}")),
        Err(_) => {
            let start = Ts::parse_rfc3339("2026-11-16T00:00:00Z").expect("a start time");
            let mut data = Vec::new();
            simulate::write(
                &Network {
                    parcels: 200_000,
                    seed: 7,
                    start,
                    days: 1.0,
                    shape: Shape::default(),
                    reaction: Default::default(),
                },
                &mut data,
                |_| {},
            )
            .expect("simulates");
            data
        }
    };
    let rules = RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).expect("the default rules load");
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut engine = Engine::new(rules.clone(), Config::default());
    let mut out = Vec::new();
    for line in &lines[..lines.len() / 2] {
        if let Ok(event) = decode(line) {
            engine.ingest(&event, &mut out);
            out.clear();
        }
    }
    println!("window: {} parcels in flight, {} timers", engine.parcels(), engine.timers());
    for round in 1..=3 {
        let t = Instant::now();
        let snapshot = engine.snapshot();
        let pause = t.elapsed().as_secs_f64();
        let raw = snapshot.len();
        let t = Instant::now();
        let saved = snapshot.compress();
        let compress = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let restored = Engine::restore(&saved, rules.clone(), Config::default()).expect("restores");
        let restore = t.elapsed().as_secs_f64();
        assert_eq!(restored.parcels(), engine.parcels());
        println!(
            "round {round}: snapshot {:.1} ms ({:.1} MiB), compression {:.1} ms, restore {:.1} ms, \
             {:.1} MiB ({:.0} bytes per parcel)",
            pause * 1e3,
            raw as f64 / 1048576.0,
            compress * 1e3,
            restore * 1e3,
            saved.len() as f64 / 1048576.0,
            saved.len() as f64 / engine.parcels().max(1) as f64
        );
    }
}
