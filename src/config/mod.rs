//! The processor's configuration: `forewarn.toml`, read strictly (an unknown
//! key is an error naming it), with every field defaulted so that no file at
//! all runs against `nats://127.0.0.1:4222` with `rules/`.
//!
//! Flags and environment variables override the file for the common
//! settings (see `forewarn run --help`). Secrets are never fields: the file
//! names where they are (a credentials file, an environment variable), and
//! [`fmt::Debug`] of the NATS settings prints no secret.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub mod dispatch;

use crate::engine;
use crate::partition::Owned;
use crate::time::Span;
pub use dispatch::Dispatch;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// (Not a `source`: the message says it once, not again as its cause.)
    #[error("{path}: {invalid}")]
    Rejected { path: PathBuf, invalid: Invalid },
}

/// Settings that parse but cannot work together; each names the settings.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    Partitions(String),
    #[error("instance {0:?}: use letters, digits, '-' and '_' only")]
    Instance(String),
    #[error("checkpoint.interval and consumer.batch must be positive")]
    NotPositive,
    #[error(
        "consumer.batch is {0}: at most {MAX_BATCH} (a pull and a half of messages are in hand at once and must fit \
         the client's subscription buffer of {SUBSCRIPTION_CAPACITY}, or it drops messages)"
    )]
    BatchTooLarge(usize),
    #[error("engine.max_lanes is {0}: at most {MAX_FINE_LANES} (a partition numbers its lanes in 16 bits)")]
    TooManyLanes(usize),
    #[error(
        "dispatch.holdout {0} is not a share between 0 and 0.5: 0.05 keeps messages from 5 % of parcels \
         to measure their effect, 0 turns the hold-out off"
    )]
    Holdout(f64),
}

/// The most fine lanes a partition can have, with room for its classes.
const MAX_FINE_LANES: usize = 60_000;
/// Messages a NATS subscription holds before the client drops what comes
/// next for it (silently: a slow subscriber loses messages).
pub const SUBSCRIPTION_CAPACITY: usize = 1 << 16;
/// The largest pull: the next is asked for when half of one is left, so a
/// pull and a half can be in hand.
const MAX_BATCH: usize = SUBSCRIPTION_CAPACITY * 2 / 3;

fn span<'de, D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
    let text = String::deserialize(d)?;
    Span::parse(&text).map_err(serde::de::Error::custom)
}

/// A duration for tokio and the NATS client; negative spans count as zero.
pub fn std_duration(span: Span) -> Duration {
    Duration::from_millis(span.0.max(0) as u64)
}

/// What a process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Detection and dispatch.
    #[default]
    All,
    /// The engines only: alerts to the stream, no message sent.
    Detect,
    /// The dispatcher only: alerts from the stream to messages.
    Dispatch,
}

impl Role {
    pub fn detects(self) -> bool {
        self != Role::Dispatch
    }

    pub fn dispatches(self) -> bool {
        self != Role::Detect
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Names this process's consumers and checkpoints: unique per running
    /// detector. Dispatchers of one name form a group: one sends, the others
    /// stand by (`dispatch.failover`).
    pub instance: String,
    /// The rules directory.
    pub rules: PathBuf,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (`host:port`); empty: not served.
    pub http: String,
    /// `/readyz` says not ready while more input messages than this wait on the server.
    pub ready_max_pending: u64,
    /// What this process runs: `all` (detection and dispatch), `detect` or `dispatch`.
    pub role: Role,
    pub nats: Nats,
    pub partitions: Partitions,
    pub streams: Streams,
    pub checkpoint: Checkpoint,
    pub consumer: Consumer,
    pub watermark: Watermark,
    pub engine: EngineLimits,
    pub shutdown: Shutdown,
    pub dispatch: Dispatch,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instance: "forewarn".into(),
            rules: "rules".into(),
            http: String::new(),
            ready_max_pending: 1_000_000,
            role: Role::All,
            nats: Nats::default(),
            partitions: Partitions::default(),
            streams: Streams::default(),
            checkpoint: Checkpoint::default(),
            consumer: Consumer::default(),
            watermark: Watermark::default(),
            engine: EngineLimits::default(),
            shutdown: Shutdown::default(),
            dispatch: Dispatch::default(),
        }
    }
}

/// Where NATS is and how to prove who we are. Secrets come from files or the
/// environment, never from this file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nats {
    /// One server URL or several, comma-separated (`nats://`, `tls://`).
    pub url: String,
    /// A `.creds` file (JWT and nkey seed).
    pub credentials: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A file holding a token; the environment variable `FOREWARN_NATS_TOKEN` also works.
    pub token_file: Option<PathBuf>,
    /// A user name; its password comes from `FOREWARN_NATS_PASSWORD`.
    pub user: Option<String>,
    /// CA certificates (PEM) to trust for the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS, with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk without TLS.
    pub tls_required: bool,
}

impl Default for Nats {
    fn default() -> Self {
        Nats {
            url: "nats://127.0.0.1:4222".into(),
            credentials: None,
            nkey_seed_file: None,
            token_file: None,
            user: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
        }
    }
}

/// Shows where secrets come from, never the secrets.
impl fmt::Debug for Nats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats")
            .field("url", &self.url)
            .field("credentials", &self.credentials)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("token_file", &self.token_file)
            .field("user", &self.user)
            .field("tls_required", &self.tls_required)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Partitions {
    /// The deployment's partition count: every publisher and processor must agree.
    pub count: u16,
    /// The partitions this instance owns: `all`, a list such as `0-7` or `0,2,9-11`, or `K/N` (slice K of N).
    pub owned: String,
}

impl Default for Partitions {
    fn default() -> Self {
        Partitions { count: 16, owned: "all".into() }
    }
}

/// One stream forewarn reads or writes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    /// How long messages are kept.
    #[serde(deserialize_with = "span")]
    pub max_age: Span,
    /// How long JetStream remembers message ids to drop re-sent copies.
    #[serde(deserialize_with = "span", default = "default_duplicate_window")]
    pub duplicate_window: Span,
}

fn default_duplicate_window() -> Span {
    Span::minutes(2)
}

fn stream(name: &str, days: i64, duplicate_window: Span) -> StreamConfig {
    StreamConfig { name: name.into(), max_age: Span::hours(24 * days), duplicate_window }
}

/// The streams; created when absent, checked when present.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Streams {
    /// Replicas of every stream and of the checkpoint bucket (1, or 3 on a cluster).
    pub replicas: usize,
    /// `scans.*`.
    pub scans: StreamConfig,
    /// `contacts.*`.
    pub contacts: StreamConfig,
    /// `alerts.>`: its duplicate window must cover a restart.
    pub alerts: StreamConfig,
    /// `deadletter.>`: rejected messages with their reasons.
    pub dead_letters: StreamConfig,
    /// `forewarn.facts.*` and `forewarn.marks.*`: what the branch stage counts.
    pub facts: StreamConfig,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            replicas: 1,
            scans: stream("SCANS", 7, Span::minutes(2)),
            contacts: stream("CONTACTS", 7, Span::minutes(2)),
            alerts: stream("ALERTS", 30, Span::hours(2)),
            dead_letters: stream("DEADLETTERS", 30, Span::minutes(2)),
            facts: stream("FOREWARN_FACTS", 7, Span::hours(2)),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checkpoint {
    /// The JetStream object store bucket holding the checkpoints.
    pub bucket: String,
    /// Checkpoint at least this often while events flow.
    #[serde(deserialize_with = "span")]
    pub interval: Span,
    /// Checkpoint after this many events, whatever the interval: the most a
    /// restart reads again.
    pub events: u64,
    /// Not ready (`/readyz`, `forewarn_stalls_total`) when changes wait this
    /// long for a stored checkpoint, or the NATS connection is down this long.
    #[serde(deserialize_with = "span")]
    pub stale_after: Span,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint {
            bucket: "forewarn_checkpoints".into(),
            interval: Span(5_000),
            events: 250_000,
            stale_after: Span(60_000),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Consumer {
    /// Messages asked for in one pull; the next goes out when half are taken.
    pub batch: usize,
}

impl Default for Consumer {
    fn default() -> Self {
        Consumer { batch: 10_000 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Watermark {
    /// How far behind the newest event time the watermark runs.
    #[serde(deserialize_with = "span")]
    pub lateness: Span,
    /// When a partition's input is idle this long (wall time), its watermark follows the clock…
    #[serde(deserialize_with = "span")]
    pub idle_after: Span,
    /// …to the clock minus this skew (how far scanners' clocks and uploads may
    /// lag); an event dated more than this after its arrival at the server is
    /// dead-lettered as `future_event`.
    #[serde(deserialize_with = "span")]
    pub max_skew: Span,
    /// The clock the idle watermark follows: empty for the wall clock; an
    /// RFC 3339 instant to pin it (backtests); `@FILE` for the instant written
    /// in FILE, re-read as it goes (a driver moves time: tests, demos).
    pub clock: String,
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark {
            lateness: Span::hours(1),
            idle_after: Span(10_000),
            max_skew: Span::minutes(5),
            clock: String::new(),
        }
    }
}

/// The engine's bounds; see [`engine::Config`]. `max_parcels` is for the
/// whole instance, shared evenly among its partitions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineLimits {
    #[serde(deserialize_with = "span")]
    pub retention: Span,
    #[serde(deserialize_with = "span")]
    pub max_idle: Span,
    pub max_parcels: usize,
    pub tombstones: usize,
    pub max_symbols: usize,
    pub max_lanes: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        let e = engine::Config::default();
        EngineLimits {
            retention: e.retention,
            max_idle: e.max_idle,
            max_parcels: e.max_parcels,
            tombstones: e.tombstones,
            max_symbols: e.max_symbols,
            max_lanes: e.max_lanes,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// On SIGTERM or SIGINT: stop pulling, checkpoint, acknowledge, and exit within this.
    #[serde(deserialize_with = "span")]
    pub deadline: Span,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { deadline: Span(30_000) }
    }
}

impl Config {
    /// Reads a configuration file; every field missing from it keeps its default.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
        config.validate().map_err(|invalid| ConfigError::Rejected { path: path.to_path_buf(), invalid })?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.owned()?;
        if self.instance.is_empty() || !self.instance.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Invalid::Instance(self.instance.clone()));
        }
        if self.checkpoint.interval.0 <= 0 || self.consumer.batch == 0 {
            return Err(Invalid::NotPositive);
        }
        if self.consumer.batch > MAX_BATCH {
            return Err(Invalid::BatchTooLarge(self.consumer.batch));
        }
        if self.engine.max_lanes > MAX_FINE_LANES {
            return Err(Invalid::TooManyLanes(self.engine.max_lanes));
        }
        if !crate::holdout::valid_share(self.dispatch.holdout) {
            return Err(Invalid::Holdout(self.dispatch.holdout));
        }
        Ok(())
    }

    /// The partitions this instance owns.
    pub fn owned(&self) -> Result<Owned, Invalid> {
        Owned::parse(&self.partitions.owned, self.partitions.count).map_err(Invalid::Partitions)
    }

    /// The engine configuration of one of `partitions` engines.
    pub fn engine(&self, partitions: usize) -> engine::Config {
        let e = &self.engine;
        engine::Config {
            lateness: self.watermark.lateness,
            // Replay's bound; live judges a scan's date by its arrival instead.
            horizon: engine::Config::default().horizon,
            retention: e.retention,
            max_idle: e.max_idle,
            max_parcels: (e.max_parcels / partitions.max(1)).max(1),
            tombstones: (e.tombstones / partitions.max(1)).max(1),
            max_symbols: e.max_symbols,
            partitions: self.partitions.count,
            max_lanes: e.max_lanes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("forewarn.toml");
        let example = Config::load(&path).expect("the example loads");
        assert_eq!(format!("{example:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = toml::from_str::<Config>("[checkpoint]\nintervall = \"5s\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `intervall`"), "{err}");
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let config = Config { instance: "a b".into(), ..Config::default() };
        assert!(matches!(config.validate(), Err(Invalid::Instance(i)) if i == "a b"));
        let config = Config { consumer: Consumer { batch: 0 }, ..Config::default() };
        assert!(matches!(config.validate(), Err(Invalid::NotPositive)));
        let config = Config { consumer: Consumer { batch: MAX_BATCH }, ..Config::default() };
        assert!(config.validate().is_ok());
        let config = Config { consumer: Consumer { batch: MAX_BATCH + 1 }, ..Config::default() };
        assert!(matches!(config.validate(), Err(Invalid::BatchTooLarge(b)) if b == MAX_BATCH + 1));
        let mut config = Config::default();
        config.dispatch.holdout = 0.9;
        assert!(matches!(config.validate(), Err(Invalid::Holdout(_))));
    }
}
