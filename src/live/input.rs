//! The processor's inputs: one durable pull consumer per stream, filtered
//! to the owned partitions, and (re)created at the processor's own position,
//! never at the server's acknowledgement floor.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, message::Acker};
use futures::StreamExt;

use crate::config::{std_duration, Config};
use crate::nats::LiveError;

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
    /// The newest message's acknowledgement handle (AckAll acknowledges every earlier one).
    pub acker: Option<Acker>,
    pub consumer: Option<jetstream::consumer::PullConsumer>,
    pub messages: Option<pull::Stream>,
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
            acker: None,
            consumer: None,
            messages: None,
            last_message: Instant::now(),
            caught_up: false,
        }
    }
}

pub async fn next_message(input: &mut Input) -> Option<Result<jetstream::Message, pull::MessagesError>> {
    match input.messages.as_mut() {
        Some(messages) => messages.next().await,
        None => std::future::pending().await,
    }
}

pub async fn open_consumer(
    js: &jetstream::Context,
    input: &Input,
    start: u64,
    config: &Config,
) -> Result<(jetstream::consumer::PullConsumer, pull::Stream), LiveError> {
    let stream = js.get_stream(&input.stream).await.map_err(|e| LiveError::nats("stream lookup", e))?;
    // Our position, not the server's acknowledgement floor, says where to resume.
    let _ = stream.delete_consumer(&input.durable).await;
    let ack_wait = std_duration(config.checkpoint.interval).max(Duration::from_secs(10)) * 6;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(input.durable.clone()),
            filter_subjects: input.filters.clone(),
            ack_policy: AckPolicy::All,
            ack_wait,
            deliver_policy: if start <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence { start_sequence: start }
            },
            max_ack_pending: config.consumer.max_ack_pending,
            ..Default::default()
        })
        .await
        .map_err(|e| LiveError::nats("consumer create", e))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(config.consumer.batch)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| LiveError::nats("consume", e))?;
    Ok((consumer, messages))
}
