//! Live throughput, measured in one run against a real nats-server on this
//! machine: the broker's own consume rate for the scans stream (no
//! processing) with the consumer kind forewarn uses (durable pull, ack
//! policy none) read with the client's stream and with forewarn's own
//! reader, and with an ordered consumer, beside forewarn's rate from
//! the scans stream through the engines to a stored checkpoint that covers
//! the last scan and contact (`forewarn_checkpoint_position`), and the CPU
//! time forewarn and the server spent on it, a scan: a figure that holds
//! better than a rate on a machine others share.
//!
//! `cargo bench --bench live` (needs `nats-server` on the PATH;
//! `FOREWARN_BENCH_PARCELS` sets the network size, default 200,000 parcels,
//! about 1.56 M events; `FOREWARN_BENCH_SHAPE` its shape, a `forewarn
//! simulate` preset, default regional).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use futures::{Stream, StreamExt};
use prometheus::core::Collector;
use tokio::sync::{mpsc, watch};

use forewarn::config::Config;
use forewarn::live::pull::Pull;
use forewarn::live::{self, feed, Controls};
use forewarn::metrics::METRICS;
use forewarn::nats::connect;
use forewarn::simulate::{self, Network, Shape};
use forewarn::time::Ts;

mod common;

/// The allocator `forewarn` runs with (see `main.rs`), so the bench measures what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    js.get_stream(name).await.expect("stream").info().await.expect("info").state.messages
}

/// How long taking `total` messages from `messages` takes, doing nothing with them.
async fn drain<M, E: std::fmt::Debug>(messages: impl Stream<Item = Result<M, E>>, total: u64) -> Duration {
    let start = Instant::now();
    let mut messages = std::pin::pin!(messages.take(total as usize));
    while let Some(m) = messages.next().await {
        m.expect("a message");
    }
    start.elapsed()
}

/// A durable pull consumer of `stream`'s scans acknowledging nothing: the kind forewarn uses.
async fn durable_none(js: &jetstream::Context, stream: &str, durable: &str) -> jetstream::consumer::PullConsumer {
    js.get_stream(stream)
        .await
        .expect("stream")
        .create_consumer(pull::Config {
            durable_name: Some(durable.into()),
            filter_subjects: vec!["scans.*".into()],
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer")
}

/// Every message of `stream` through forewarn's consumer kind, read with the client's stream.
async fn pull_none(js: &jetstream::Context, stream: &str, total: u64) -> Duration {
    let consumer = durable_none(js, stream, "bench-pull").await;
    drain(consumer.stream().max_messages_per_batch(1000).messages().await.expect("messages"), total).await
}

/// Every message of `stream` through forewarn's consumer kind, read with
/// forewarn's own reader ([`Pull`]), as forewarn consumes.
async fn pull_reader(js: &jetstream::Context, stream: &str, total: u64) -> Duration {
    durable_none(js, stream, "bench-reader").await;
    let batch = Config::default().consumer.batch;
    let messages =
        Pull::open(&js.client(), stream, "bench-reader", batch, Duration::from_secs(5)).await.expect("subscribed");
    drain(messages, total).await
}

/// Every message of `stream` through an ordered consumer (ephemeral, no acknowledgements).
async fn ordered(js: &jetstream::Context, stream: &str, total: u64) -> Duration {
    let consumer = js
        .get_stream(stream)
        .await
        .expect("stream")
        .create_consumer(pull::OrderedConfig::default())
        .await
        .expect("consumer");
    drain(consumer.messages().await.expect("messages"), total).await
}

/// The CPU time (user and system) of the process whose `/proc/<pid>/stat`
/// is `path`; zero where that cannot be read.
fn cpu_of(path: &str) -> Duration {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The fields after the command name, which ends at the last ')': utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // The kernel's USER_HZ, 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

fn main() {
    let parcels: u64 = std::env::var("FOREWARN_BENCH_PARCELS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let shape = std::env::var("FOREWARN_BENCH_SHAPE").unwrap_or_else(|_| "regional".into());
    let shape = Shape::preset(&shape).expect("FOREWARN_BENCH_SHAPE: regional, national-cn or national-eu");
    let server = common::Server::start();
    let start = Ts::parse_rfc3339("2026-11-16T00:00:00Z").expect("a time");
    let mut data = Vec::new();
    simulate::write(
        &Network { parcels, seed: 1, start, days: 1.0, shape, reaction: Default::default() },
        &mut data,
        |_| {},
    )
    .expect("simulated");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let nats = server.ready().await;
        let js = connect::jetstream(connect::connect(&nats, "bench").await.expect("connects"));
        connect::ensure_streams(&js, &Config::default().streams).await.expect("streams");
        let t = Instant::now();
        let sent = feed::publish(js.clone(), &data, 16, feed::Pace::AsFastAsPossible, |_| {}).await.expect("published");
        println!("published      {sent} events in {:.2} s", t.elapsed().as_secs_f64());
        let scans = stream_messages(&js, "SCANS").await;
        let contacts = stream_messages(&js, "CONTACTS").await;

        let rate = |took: Duration| scans as f64 / took.as_secs_f64();
        let pull = rate(pull_none(&js, "SCANS", scans).await);
        println!("broker consume {scans} scans: {pull:.0} scans/s (durable pull, ack none: forewarn's kind)");
        let reader = rate(pull_reader(&js, "SCANS", scans).await);
        println!("broker consume {scans} scans: {reader:.0} scans/s (the same, read with forewarn's reader)");
        let fastest = rate(ordered(&js, "SCANS", scans).await);
        println!("broker consume {scans} scans: {fastest:.0} scans/s (ordered consumer)");

        let config = Config { nats: nats.clone(), ..Config::default() };
        let (stop_tx, stop) = watch::channel(false);
        let (_reload_tx, reload) = mpsc::channel(1);
        let server_stat = format!("/proc/{}/stat", server.child.id());
        let cpu_now = || (cpu_of("/proc/self/stat"), cpu_of(&server_stat));
        let cpu = cpu_now();
        let t = Instant::now();
        let mut run =
            tokio::spawn(live::run(config, true, Controls { stop, reload, readiness: live::Readiness::default() }));
        // Handled when every scan and contact went through the engines
        // (none of them is refused); done when a stored checkpoint covers
        // each stream's last message.
        let last = |name: &'static str| {
            let js = js.clone();
            async move { js.get_stream(name).await.expect("stream").info().await.expect("info").state.last_sequence }
        };
        let (last_scan, last_contact) = (last("SCANS").await, last("CONTACTS").await);
        let handled = || METRICS.events.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value()).sum::<f64>() as u64;
        while handled() < scans + contacts {
            if run.is_finished() {
                panic!("forewarn stopped before the end (run from the project root, it reads rules/): {:?}", (&mut run).await);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let through = t.elapsed();
        let covered = |name: &str| METRICS.checkpoint_position.with_label_values(&[name]).get() as u64;
        while covered("SCANS") < last_scan || covered("CONTACTS") < last_contact {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t.elapsed();
        let cpu = {
            let (forewarn, nats_server) = cpu_now();
            (forewarn - cpu.0, nats_server - cpu.1)
        };
        let _ = stop_tx.send(true);
        let summary = run.await.expect("joined").expect("ran");
        let own = rate(took);
        let engines = rate(through);
        println!(
            "forewarn       {scans} scans (+{contacts} contacts) through the engines in {:.2} s: {engines:.0} scans/s; to a stored checkpoint in {:.2} s: {own:.0} scans/s; {} alerts, {} checkpoints",
            through.as_secs_f64(),
            took.as_secs_f64(),
            summary.alerts,
            summary.checkpoints
        );
        println!(
            "ratio          to a stored checkpoint {:.2} of the broker's rate with forewarn's consumer kind, {:.2} read with forewarn's reader, {:.2} of the ordered consumer's; through the engines {:.2} / {:.2} / {:.2}",
            own / pull,
            own / reader,
            own / fastest,
            engines / pull,
            engines / reader,
            engines / fastest
        );
        // What each scan cost in CPU, steadier than a rate on a machine others share.
        let per_scan = |cpu: Duration| cpu.as_secs_f64() * 1e6 / scans as f64;
        println!(
            "cpu            to a stored checkpoint: forewarn {:.2} s ({:.2} µs a scan), nats-server {:.2} s ({:.2} µs a scan)",
            cpu.0.as_secs_f64(),
            per_scan(cpu.0),
            cpu.1.as_secs_f64(),
            per_scan(cpu.1)
        );
        println!("published      {:?}", summary.published);
        // What forewarn made the server store, a scan: each stream's bytes
        // are written (and read again) by the server beside the scans.
        let mut names = js.stream_names();
        let mut stored = Vec::new();
        while let Some(Ok(name)) = names.next().await {
            if name != "SCANS" && name != "CONTACTS" {
                let state = js.get_stream(&name).await.expect("stream").info().await.expect("info").state.clone();
                stored.push(format!("{name} {} ({:.0} B a scan)", state.messages, state.bytes as f64 / scans as f64));
            }
        }
        stored.sort();
        println!("stored         {}", stored.join(", "));
        let pause = &METRICS.checkpoint_pause;
        let (n, stopped) = (pause.get_sample_count(), pause.get_sample_sum());
        let objects = |kind: &str| METRICS.checkpoint_objects.with_label_values(&[kind]).get();
        println!(
            "checkpoints    {}: the stream stopped {stopped:.2} s in {n} pauses for them ({:.1} % of the run); \
             objects: {} engines whole, {} as changes, {} stages",
            summary.checkpoints,
            100.0 * stopped / took.as_secs_f64(),
            objects("engine"),
            objects("changes"),
            objects("stage"),
        );
        // The stream's pace while a checkpoint is taken and stored, and between checkpoints.
        let end = t + through;
        let rounds: Vec<_> = summary.rounds.iter().filter(|r| r.stored <= end).collect();
        let (during, time): (u64, f64) =
            rounds.iter().fold((0, 0.0), |(e, s), r| (e + r.events, s + (r.stored - r.began).as_secs_f64()));
        let between = (scans + contacts - during) as f64 / (through.as_secs_f64() - time);
        let during = during as f64 / time;
        println!(
            "during        {} checkpoints ({time:.2} s): {during:.0} events/s; between them: {between:.0} events/s; ratio {:.2}",
            rounds.len(),
            during / between
        );
    });
}
