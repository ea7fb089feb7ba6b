//! The processor's inputs: one durable pull consumer per stream, filtered
//! to the owned partitions, (re)created at the processor's own position.
//! They acknowledge nothing (ack policy none): the stored checkpoint holds
//! each partition's stream positions and a restart resumes right after
//! them, so acknowledgements would buy nothing, and the server keeps no
//! per-message state for us. Their messages are read off the connection
//! by [`Pull`].

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::StreamExt;

use super::pull::{Delivery, Pull, PullError};
use crate::config::Config;
use crate::nats::LiveError;

/// How often the server says it is there while it has no message for us.
const HEARTBEAT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Scans,
    Contacts,
    Facts,
}

/// A consumer we pull from, recreated at our own position when it fails.
pub struct Input {
    pub which: Which,
    pub stream: String,
    pub durable: String,
    pub filters: Vec<String>,
    /// The highest stream sequence handled.
    pub last_seq: u64,
    pub consumer: Option<jetstream::consumer::PullConsumer>,
    pub messages: Option<Pull>,
    pub last_message: Instant,
    /// The server had nothing more for us when we last asked.
    pub caught_up: bool,
}

impl Input {
    pub fn new(which: Which, stream: &str, durable: String, filters: Vec<String>) -> Input {
        Input {
            which,
            stream: stream.to_string(),
            durable,
            filters,
            last_seq: 0,
            consumer: None,
            messages: None,
            last_message: Instant::now(),
            caught_up: false,
        }
    }
}

pub async fn next_message(input: &mut Input) -> Option<Result<Delivery, PullError>> {
    match input.messages.as_mut() {
        Some(messages) => messages.next().await,
        None => std::future::pending().await,
    }
}

/// A consumer opened at `start`, and the stream's first sequence then: when
/// it is past `start`, the stream's limits removed messages no checkpoint
/// covered.
pub struct Opened {
    pub consumer: jetstream::consumer::PullConsumer,
    pub messages: Pull,
    pub first: u64,
}

pub async fn open_consumer(
    js: &jetstream::Context,
    input: &Input,
    start: u64,
    config: &Config,
) -> Result<Opened, LiveError> {
    let stream = js.get_stream(&input.stream).await.map_err(|e| LiveError::nats("stream lookup", e))?;
    let first = stream.cached_info().state.first_sequence;
    // Our position says where to resume; the server keeps none for us.
    let _ = stream.delete_consumer(&input.durable).await;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(input.durable.clone()),
            filter_subjects: input.filters.clone(),
            ack_policy: AckPolicy::None,
            deliver_policy: if start <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence { start_sequence: start }
            },
            ..Default::default()
        })
        .await
        .map_err(|e| LiveError::nats("consumer create", e))?;
    let messages = Pull::open(&js.client(), &input.stream, &input.durable, config.consumer.batch, HEARTBEAT)
        .await
        .map_err(|e| LiveError::nats("consume", e))?;
    Ok(Opened { consumer, messages, first })
}
