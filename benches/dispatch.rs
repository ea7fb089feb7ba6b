//! Notification throughput, measured in one run against real local servers:
//! a nats-server, an HTTP SMS gateway (axum) and an SMTP server (a minimal
//! one here, in Rust, so that the sink is not the limit). For each channel:
//! the dispatcher's rate from the alerts stream to the sink (routing, ledger,
//! rendering, sending, recording, acknowledging), in rounds, with the
//! process's resident memory after each round. For SMS, the sink's own
//! rate from a bare client at the same concurrency, for the ratio; SMS again
//! with a second dispatcher of the same group standing by.
//!
//! `cargo bench --bench dispatch` (needs `nats-server` on the PATH;
//! `FOREWARN_BENCH_ROUNDS` rounds of `FOREWARN_BENCH_ALERTS` alerts per
//! channel, default 6 × 20,000 SMS and 6 × 5,000 emails).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use forewarn::config::dispatch::SmsProvider;
use forewarn::config::Config;
use forewarn::dispatch::{self, Dispatcher};
use forewarn::nats::connect;
use forewarn::time::Span;

mod common;

/// The allocator of the `forewarn` binary, so the library is measured as it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// An HTTP gateway that answers 200 to every POST and counts them.
async fn sms_sink(count: Arc<AtomicU64>) -> String {
    let app = axum::Router::new().fallback(move || {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            "{\"status\":\"queued\"}"
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// An SMTP server that accepts every message and counts them.
async fn smtp_sink(count: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("smtp://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(smtp_session(stream, count.clone()));
        }
    });
    url
}

async fn smtp_session(stream: TcpStream, count: Arc<AtomicU64>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).map(<[u8]>::to_ascii_uppercase).unwrap_or_default();
        match verb.as_slice() {
            b"EHLO" => write.write_all(b"250-sink\r\n250-8BITMIME\r\n250 PIPELINING\r\n").await?,
            b"DATA" => {
                write.write_all(b"354 end with .\r\n").await?;
                loop {
                    line.clear();
                    if read.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                }
                count.fetch_add(1, Ordering::Relaxed);
                write.write_all(b"250 queued\r\n").await?;
            }
            b"QUIT" => return write.write_all(b"221 bye\r\n").await,
            _ => write.write_all(b"250 ok\r\n").await?,
        }
    }
}

/// A customer alert for parcel `n`, to be told on `channel`.
fn alert(n: u64, channel: &str) -> Vec<u8> {
    json!({
        "alert_id": format!("{n:032x}"), "rule": "late", "state": "firing", "at": "2026-11-20T09:00:00Z",
        "severity": "warning", "audience": ["customer"], "parcel_id": format!("FW{n:010}"), "branch": "FR-PAR-12",
        "parcel_state": "in_transit", "facility": "FR-LYS-HUB",
        "promised_by": "2026-11-19T18:00:00Z", "last_scan_at": "2026-11-19T22:00:00Z",
        "recipient": {
            "name": "Léa Martin", "phone": format!("+336{:08}", n % 100_000_000),
            "email": format!("lea.{n}@example.org"), "locale": "fr-FR", "tz": "Europe/Paris", "channels": [channel],
        },
    })
    .to_string()
    .into_bytes()
}

/// Publishes alerts `from..to` on the alerts stream, many in flight.
async fn publish(js: &jetstream::Context, from: u64, to: u64, channel: &str) {
    let mut acks = futures::stream::iter(from..to)
        .map(|n| {
            let js = js.clone();
            let body = alert(n, channel);
            async move { js.publish("alerts.parcel.late", body.into()).await.expect("published").await }
        })
        .buffer_unordered(256);
    while let Some(ack) = acks.next().await {
        ack.expect("stored");
    }
}

async fn wait_for(count: &AtomicU64, n: u64) {
    while count.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The sink's own rate: `total` requests from one client, `concurrency` at a time.
async fn bare_sms(url: &str, total: u64, concurrency: usize, count: &AtomicU64) -> f64 {
    let client = reqwest::Client::new();
    let before = count.load(Ordering::Relaxed);
    let t = Instant::now();
    futures::stream::iter(0..total)
        .map(|n| {
            let body = json!({"to": format!("+336{n:08}"), "body": "Votre colis"}).to_string();
            client.post(url).header("content-type", "application/json").body(body).send()
        })
        .buffer_unordered(concurrency)
        .for_each(|r| async move {
            r.expect("sent");
        })
        .await;
    assert_eq!(count.load(Ordering::Relaxed) - before, total);
    total as f64 / t.elapsed().as_secs_f64()
}

struct Round {
    rate: f64,
    rss: f64,
}

/// Rounds of `per_round` alerts through the dispatcher to a sink.
async fn through_dispatcher(
    js: &jetstream::Context,
    count: &AtomicU64,
    channel: &str,
    first: u64,
    rounds: u64,
    per_round: u64,
) -> Vec<Round> {
    let mut out = Vec::new();
    for r in 0..rounds {
        let before = count.load(Ordering::Relaxed);
        let from = first + r * per_round;
        let t = Instant::now();
        publish(js, from, from + per_round, channel).await;
        wait_for(count, before + per_round).await;
        out.push(Round { rate: per_round as f64 / t.elapsed().as_secs_f64(), rss: rss_mib() });
        eprintln!("{channel} round {r}: {:.0}/s", out[out.len() - 1].rate);
    }
    out
}

/// The slowest round after the first (warm-up).
fn sustained(rounds: &[Round]) -> f64 {
    rounds.iter().skip(1).map(|r| r.rate).fold(f64::INFINITY, f64::min)
}

/// Rates per round, the slowest after the first (warm-up) as the sustained
/// figure, its share of the bare client's rate, and the memory after each round.
fn report(what: &str, bare: Option<f64>, rounds: &[Round]) {
    let rates: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r.rate)).collect();
    let rss: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r.rss)).collect();
    let sustained = sustained(rounds);
    println!(
        "{what}: through forewarn per round {}/s; sustained (slowest after the first) {sustained:.0}/s",
        rates.join(", ")
    );
    if let Some(bare) = bare {
        println!("{what}: the sink alone {bare:.0}/s from a bare client; forewarn {:.2} of it", sustained / bare);
    }
    println!("{what}: RSS after each round (MiB) {}", rss.join(", "));
}

fn main() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).init();
    let rounds = env("FOREWARN_BENCH_ROUNDS", 6);
    let sms_per_round = env("FOREWARN_BENCH_ALERTS", 20_000);
    let email_per_round = sms_per_round / 4;
    let server = common::Server::start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let nats = server.ready().await;
        let sms = Arc::new(AtomicU64::new(0));
        let mails = Arc::new(AtomicU64::new(0));
        let sms_url = sms_sink(sms.clone()).await;
        let smtp_url = smtp_sink(mails.clone()).await;
        let outbox = tempfile::tempdir().expect("temp dir");

        let mut config = Config { nats, ..Config::default() };
        config.watermark.clock = "2026-11-20T10:00:00Z".into();
        let d = &mut config.dispatch;
        d.outbox = outbox.path().to_path_buf();
        d.sms.url = sms_url.clone();
        d.sms.provider = SmsProvider::Webhook;
        d.email.smtp = smtp_url.clone();
        d.digest.at = String::new();
        d.limits.group_window = Span(0);
        // Customer alerts at a hub wait this long for an episode to speak
        // for them: the bench's alerts would all wait it out.
        d.inhibit_wait = Span(0);
        // Caches sized below the run, so the rounds show memory once they are full.
        d.dedup.cache = 20_000;
        d.limits.tracked = 20_000;
        let concurrency = d.concurrency;

        let js = connect::jetstream(connect::connect(&config.nats, "bench").await.expect("connects"));
        connect::ensure_streams(&js, &config.streams).await.expect("streams");
        let (stop_tx, stop) = watch::channel(false);
        let (_reload_tx, reload) = watch::channel(0);
        let start = |config: &Config| {
            let dispatcher = Dispatcher::new(config).expect("the default templates and directory load");
            tokio::spawn(dispatch::run::run(config.clone(), dispatcher, stop.clone(), reload.clone()))
        };
        let run = start(&config);

        let bare = bare_sms(&sms_url, sms_per_round, concurrency, &sms).await;
        eprintln!("SMS sink alone: {bare:.0}/s");
        let sms_rounds = through_dispatcher(&js, &sms, "sms", 0, rounds, sms_per_round).await;
        report(&format!("SMS   ({rounds} x {sms_per_round})"), Some(bare), &sms_rounds);
        // A second dispatcher of the same group: it stands by, renewing nothing,
        // reading the lease ten times a term.
        let standby = start(&config);
        let first = rounds * sms_per_round;
        let pair_rounds = through_dispatcher(&js, &sms, "sms", first, rounds, sms_per_round).await;
        report(&format!("SMS, 2 dispatchers ({rounds} x {sms_per_round})"), Some(bare), &pair_rounds);
        println!("SMS: 2 dispatchers / 1, sustained: {:.2}", sustained(&pair_rounds) / sustained(&sms_rounds));

        let before = mails.load(Ordering::Relaxed);
        let first = 2 * rounds * sms_per_round;
        let email_rounds = through_dispatcher(&js, &mails, "email", first, rounds, email_per_round).await;
        assert_eq!(mails.load(Ordering::Relaxed) - before, rounds * email_per_round, "every email once");
        report(&format!("email ({rounds} x {email_per_round})"), None, &email_rounds);

        let _ = stop_tx.send(true);
        let stats = run.await.expect("joined").expect("ran");
        standby.await.expect("joined").expect("stood by");
        assert_eq!(stats.total("failed"), 0, "nothing failed");
        println!("dispatcher: {} alerts, {} sent", stats.alerts, stats.total("sent"));
    });
}
