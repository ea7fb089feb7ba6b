//! Publishing into JetStream without losing anything: messages go out at
//! once, their acknowledgements are collected later, and [`Publisher::settle`]
//! does not return until the server stored every message sent so far,
//! re-sending (same message id: no duplicates) through outages. A
//! checkpoint is taken only after a settle, so nothing a checkpoint covers
//! can be missing from the streams.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context};

use super::Readiness;
use crate::metrics::METRICS;
use crate::nats::wire::{self, Outgoing};

/// Acknowledgements outstanding before the oldest are awaited.
const MAX_PENDING: usize = 8192;

#[derive(Clone, Copy, Debug, Default)]
pub struct PublishStats {
    pub stored: u64,
    /// Dropped by the server as copies of an earlier message (re-sent after a restart).
    pub duplicates: u64,
    pub retries: u64,
    /// Refused by the server for good (too large): dead-lettered instead.
    pub refused: u64,
}

pub struct Publisher {
    js: Context,
    pending: VecDeque<(PublishAckFuture, Outgoing)>,
    pub stats: PublishStats,
    /// Told why publishes are retried, so readiness can say it.
    readiness: Option<Readiness>,
}

impl Publisher {
    pub fn new(js: Context) -> Publisher {
        Publisher { js, pending: VecDeque::new(), stats: PublishStats::default(), readiness: None }
    }

    /// Tells `readiness` why publishes are retried.
    pub fn reporting_to(mut self, readiness: Readiness) -> Publisher {
        self.readiness = Some(readiness);
        self
    }

    /// A publish not stored yet, to be sent again: counted and reported.
    fn retrying(&mut self, error: &PublishError) {
        self.stats.retries += 1;
        METRICS.publish_retries.inc();
        if let Some(readiness) = &self.readiness {
            readiness.failing(&format!("publishes not stored: {error}"));
        }
    }

    /// Sends a message; its storage is confirmed by a later [`Publisher::settle`].
    pub async fn send(&mut self, out: Outgoing) {
        if self.pending.len() >= MAX_PENDING {
            self.settle_oldest(MAX_PENDING / 2).await;
        }
        let mut out = out;
        loop {
            match self.publish_until_sent(&out).await {
                Ok(ack) => return self.pending.push_back((ack, out)),
                Err(e) => match self.refuse(&out, &e) {
                    Some(letter) => out = letter,
                    None => return,
                },
            }
        }
    }

    /// A message the server will never store: counted, and its dead letter
    /// to send instead (none for a dead letter itself: it is logged and dropped).
    fn refuse(&mut self, out: &Outgoing, error: &PublishError) -> Option<Outgoing> {
        self.stats.refused += 1;
        METRICS.publishes_refused.inc();
        let letter = !out.subject.starts_with("deadletter.");
        tracing::error!(subject = %out.subject, bytes = out.body.len(), %error, dead_lettered = letter, "the server refused a message for good");
        letter.then(|| wire::refused_letter(out, &error.to_string()))
    }

    /// Returns when every message sent so far is stored (or, refused for
    /// good, dead-lettered).
    pub async fn settle(&mut self) {
        while !self.pending.is_empty() {
            self.settle_oldest(self.pending.len()).await;
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    async fn settle_oldest(&mut self, n: usize) {
        let (acks, outs): (Vec<_>, Vec<_>) = self.pending.drain(..n.min(self.pending.len())).unzip();
        // Awaited together: the acks lost with a connection then time out all
        // at once, not one ack timeout after another (thousands of them).
        let results = futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await;
        for (mut result, mut out) in results.into_iter().zip(outs) {
            let mut backoff = Backoff::default();
            loop {
                match result {
                    Ok(ack) => {
                        self.stats.stored += 1;
                        self.stats.duplicates += u64::from(ack.duplicate);
                        break;
                    }
                    Err(e) if never_stored(&e) => match self.refuse(&out, &e) {
                        Some(letter) => {
                            out = letter;
                            result = self.publish_and_ack(&out).await;
                        }
                        None => break,
                    },
                    Err(e) => {
                        self.retrying(&e);
                        backoff.wait(&out.subject, &e).await;
                        result = self.publish_and_ack(&out).await;
                    }
                }
            }
        }
    }

    async fn publish_and_ack(&mut self, out: &Outgoing) -> Result<jetstream::publish::PublishAck, PublishError> {
        self.publish_until_sent(out).await?.await
    }

    /// Sends `out`, retrying what may pass later; a message the server can
    /// never take comes back as the error.
    async fn publish_until_sent(&mut self, out: &Outgoing) -> Result<PublishAckFuture, PublishError> {
        let mut backoff = Backoff::default();
        loop {
            let mut message = PublishMessage::build().payload(out.body.clone());
            if let Some(headers) = out.header_map() {
                message = message.headers(headers);
            }
            if let Some(id) = &out.id {
                message = message.message_id(id);
            }
            match self.js.send_publish(out.subject.clone(), message).await {
                Ok(ack) => return Ok(ack),
                Err(e) if never_stored(&e) => return Err(e),
                Err(e) => {
                    self.retrying(&e);
                    backoff.wait(&out.subject, &e).await;
                }
            }
        }
    }
}

/// Whether the server will never store the message, however often it is
/// sent: larger than its `max_payload` or than the stream's largest message.
fn never_stored(e: &PublishError) -> bool {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM),
        _ => false,
    }
}

/// Exponential backoff with jitter, 50 ms to 5 s, logging as it goes.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    async fn wait(&mut self, subject: &str, error: &(dyn std::fmt::Display + Sync)) {
        let base = 50u64.saturating_mul(1 << self.attempt.min(7)).min(5_000);
        let jitter = rand::random::<u64>() % (base / 2 + 1);
        if self.attempt.is_multiple_of(10) {
            tracing::warn!(subject, attempt = self.attempt + 1, %error, "publish not stored yet; retrying");
        }
        self.attempt += 1;
        tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
    }
}
