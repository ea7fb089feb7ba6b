//! NATS JetStream plumbing that the processor ([`crate::live`]) and the
//! dispatcher ([`crate::dispatch`]) share, below both: the connection and
//! the streams ([`connect`]), the subjects, headers and message forms on the
//! wire ([`wire`]), and why a process on NATS cannot start or go on
//! ([`LiveError`]).

pub mod connect;
pub mod wire;

use std::fmt;

/// Why the live processor cannot start or go on. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// A setting, file or secret that cannot work: the error says which.
    #[error("configuration: {0}")]
    Config(Box<dyn std::error::Error + Send + Sync>),
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
    #[error("shutdown took longer than the {0:?} deadline")]
    ShutdownDeadline(std::time::Duration),
}

impl LiveError {
    pub fn config(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> LiveError {
        LiveError::Config(e.into())
    }

    pub fn nats(what: &'static str, e: impl fmt::Display) -> LiveError {
        LiveError::Nats { what, reason: e.to_string() }
    }
}

impl From<crate::config::Invalid> for LiveError {
    fn from(e: crate::config::Invalid) -> LiveError {
        LiveError::config(e)
    }
}
