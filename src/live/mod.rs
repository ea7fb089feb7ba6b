//! Live on NATS JetStream: the long-running processor (`forewarn run`), the
//! dead-letter tools (`forewarn dlq`) and the simulator's publisher.
//!
//! The shell around the pure engine: it pulls scans and contacts of the
//! owned partitions, feeds one engine per partition, publishes alerts, branch
//! facts and dead letters, runs the branch stage of the owned branch
//! partitions, and checkpoints. The stored checkpoint's stream positions are
//! the only acknowledgement (a restart resumes right after them), and
//! nothing a checkpoint covers is missing from the streams ([`publisher`]).

pub mod dlq;
pub mod feed;
mod input;
pub mod lookup;
pub mod processor;
pub mod publisher;
pub mod pull;
mod readiness;
pub mod store;

pub use processor::{run, Controls, RunSummary};
pub use readiness::{lagging, Readiness, STALLS};
