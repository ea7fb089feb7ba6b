//! The window's capacity bound costs no more than the window's own work:
//! many distinct parcels through a window bounded at 100,000, against the
//! same input through a window without a bound, measured in one run.
//!
//! `cargo bench --bench eviction` makes 10,000,000 distinct parcels by
//! default (`FOREWARN_BENCH_PARCELS` to change), one `departed` scan each,
//! within an hour of event time (no deadline falls due: what is timed is
//! taking parcels in and, bounded, letting the earliest go). Rounds
//! (`FOREWARN_BENCH_ROUNDS`, 3 by default) run both replays in turn,
//! alternating which goes first, and print the ratio bounded / unbounded.
//! Before eviction took its timer out of the wheel, 150,000 such parcels
//! into 100,000 took 19 times as long as unbounded (whole process).

use std::io;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use forewarn::engine::{Config, Split};
use forewarn::replay::{self, Sinks};
use forewarn::rules::RuleSet;
use forewarn::time::{Span, Ts};

const BOUND: usize = 100_000;

fn main() {
    let parcels = env_number("FOREWARN_BENCH_PARCELS", 10_000_000);
    let rounds = env_number("FOREWARN_BENCH_ROUNDS", 3).max(1);
    let rules = RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).expect("the default rules load");
    let start = Ts::parse_rfc3339("2026-11-20T08:00:00Z").expect("a time");
    let step = Span(3_600_000 / parcels.max(1) as i64).max(Span(1));
    let mut data = Vec::with_capacity(parcels * 110);
    for i in 0..parcels {
        let at = start.plus(Span(step.0 * i as i64));
        writeln!(data, r#"{{"v":1,"event_id":"e{i}","parcel_id":"P{i:010}","kind":"departed","at":"{at}"}}"#)
            .expect("in memory");
    }
    println!("input: {parcels} distinct parcels, {:.1} MiB", data.len() as f64 / 1048576.0);
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let time = |max_parcels: usize| {
            let config = Config { max_parcels, ..Config::default() };
            let mut engine = Split::new(rules.clone(), config);
            let mut sink = io::sink();
            let mut sinks = Sinks { alerts: &mut sink, rejects: None };
            let started = Instant::now();
            replay::run_bytes(&data, &mut engine, &mut sinks, &mut |_| {}).expect("replays");
            let seconds = started.elapsed().as_secs_f64();
            (seconds, engine.parcels(), engine.stats().evicted_capacity)
        };
        let (bounded, unbounded) = if round % 2 == 1 {
            let b = time(BOUND);
            (b, time(usize::MAX))
        } else {
            let u = time(usize::MAX);
            (time(BOUND), u)
        };
        // Shared among the partitions' engines, as live shares it.
        assert!(bounded.1 <= BOUND, "the bound holds: {} parcels", bounded.1);
        let ratio = bounded.0 / unbounded.0;
        println!(
            "round {round}: bounded at {BOUND} {:.2} s ({} evicted), unbounded {:.2} s ({} parcels): ratio {ratio:.3}",
            bounded.0, bounded.2, unbounded.0, unbounded.1
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "bounded / unbounded: median {:.3} (min {:.3}, max {:.3}; target <= 1.5)",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
