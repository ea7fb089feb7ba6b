//! Live throughput, measured in one run against a real nats-server on this
//! machine: the broker's own consume rate for the stream (pull, no
//! processing, AckAll per batch) beside forewarn's rate from the scans
//! stream through the engines to acknowledged (after checkpoints).
//!
//! `cargo bench --bench live` (needs `nats-server` on the PATH;
//! `FOREWARN_BENCH_PARCELS` sets the network size, default 200,000 parcels,
//! about 1.56 M events).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use forewarn::config::Config;
use forewarn::live::{self, feed, Controls};
use forewarn::nats::connect;
use forewarn::simulate::{self, Network};
use forewarn::time::Ts;

mod common;

async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    js.get_stream(name).await.expect("stream").info().await.expect("info").state.messages
}

/// Pulls every message of `stream` with a throwaway consumer, acknowledging each batch's last.
async fn raw_consume(js: &jetstream::Context, stream: &str, total: u64) -> Duration {
    let consumer = js
        .get_stream(stream)
        .await
        .expect("stream")
        .create_consumer(pull::Config { ack_policy: AckPolicy::All, max_ack_pending: 1_000_000, ..Default::default() })
        .await
        .expect("consumer");
    let start = Instant::now();
    let mut messages = consumer.stream().max_messages_per_batch(1000).messages().await.expect("messages");
    let mut n = 0u64;
    while let Some(m) = messages.next().await {
        let m = m.expect("message");
        n += 1;
        if n.is_multiple_of(1000) || n == total {
            m.ack().await.expect("ack");
        }
        if n == total {
            break;
        }
    }
    start.elapsed()
}

fn main() {
    let parcels: u64 = std::env::var("FOREWARN_BENCH_PARCELS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let server = common::Server::start();
    let start = Ts::parse_rfc3339("2026-11-16T00:00:00Z").expect("a time");
    let mut data = Vec::new();
    simulate::write(&Network { parcels, seed: 1, start, days: 1.0 }, &mut data, |_| {}).expect("simulated");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let nats = server.ready().await;
        let js = connect::jetstream(connect::connect(&nats, "bench").await.expect("connects"));
        connect::ensure_streams(&js, &Config::default().streams).await.expect("streams");
        let t = Instant::now();
        let sent = feed::publish(js.clone(), &data, 16, feed::Pace::AsFastAsPossible, |_| {}).await;
        println!("published      {sent} events in {:.2} s", t.elapsed().as_secs_f64());
        let scans = stream_messages(&js, "SCANS").await;
        let contacts = stream_messages(&js, "CONTACTS").await;

        let raw = raw_consume(&js, "SCANS", scans).await;
        let raw_rate = scans as f64 / raw.as_secs_f64();
        println!("broker consume {scans} scans in {:.2} s: {:.0} scans/s (pull, no processing, AckAll)", raw.as_secs_f64(), raw_rate);

        let config = Config { nats: nats.clone(), ..Config::default() };
        let (stop_tx, stop) = watch::channel(false);
        let (_reload_tx, reload) = mpsc::channel(1);
        let t = Instant::now();
        let run = tokio::spawn(live::run(config, true, Controls { stop, reload, readiness: live::Readiness::default() }));
        // Done when both durable consumers have acknowledged their stream's last message.
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let acked = |stream: &'static str, name: &'static str| {
                let js = js.clone();
                async move {
                    let mut s = js.get_stream(stream).await.ok()?;
                    let mut c: jetstream::consumer::PullConsumer = s.get_consumer(name).await.ok()?;
                    let _ = s.info().await;
                    Some(c.info().await.ok()?.ack_floor.stream_sequence)
                }
            };
            let (a, b) = (acked("SCANS", "forewarn-forewarn-scans").await, acked("CONTACTS", "forewarn-forewarn-contacts").await);
            if a == Some(scans) && b == Some(contacts) {
                break;
            }
        }
        let took = t.elapsed();
        let _ = stop_tx.send(true);
        let summary = run.await.expect("joined").expect("ran");
        let rate = scans as f64 / took.as_secs_f64();
        println!(
            "forewarn       {scans} scans (+{contacts} contacts) to acknowledged in {:.2} s: {rate:.0} scans/s; {} alerts, {} checkpoints",
            took.as_secs_f64(),
            summary.alerts,
            summary.checkpoints
        );
        println!("ratio          {:.2} of the broker's own consume rate", rate / raw_rate);
    });
}
