//! Live on NATS JetStream: the long-running processor (`forewarn run`), the
//! dead-letter tools (`forewarn dlq`) and the simulator's publisher.
//!
//! The shell around the pure engine: it pulls scans and contacts of the
//! owned partitions, feeds one engine per partition, publishes alerts, branch
//! facts and dead letters, runs the branch stage of the owned branch
//! partitions, and checkpoints. Nothing is acknowledged before a checkpoint
//! that covers it is stored, and nothing a checkpoint covers is missing from
//! the streams ([`outbox`]).

pub mod clock;
pub mod connect;
pub mod dlq;
pub mod feed;
pub mod health;
mod input;
pub mod lookup;
pub mod outbox;
pub mod processor;
pub mod rules_dir;
pub mod store;
pub mod wire;

use std::fmt;

pub use processor::{run, Controls, RunSummary};

/// Why the live processor cannot start or go on. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot connect to NATS at {url}: {reason}; start nats-server or pass --nats / FOREWARN_NATS_URL")]
    Connect { url: String, reason: String },
    #[error("stream {name} {message}")]
    Stream { name: String, message: String },
    #[error(
        "checkpoint {name}: {reason}; to rebuild the state from the streams, start once with --rebuild (alerts already sent within the duplicate window are not repeated)"
    )]
    Checkpoint { name: String, reason: String },
    #[error("rules: {0}")]
    Rules(String),
    #[error("NATS {what}: {reason}")]
    Nats { what: &'static str, reason: String },
    #[error("shutdown took longer than the {0} deadline")]
    ShutdownDeadline(String),
}

impl LiveError {
    pub fn nats(what: &'static str, e: impl fmt::Display) -> LiveError {
        LiveError::Nats { what, reason: e.to_string() }
    }
}
