//! Publishing into JetStream without losing anything: messages go out at
//! once, their acknowledgements are collected later, and [`Publisher::settle`]
//! does not return until the server stored every message sent so far,
//! re-sending (same message id: no duplicates) through outages. A
//! checkpoint is taken only after a settle, so nothing a checkpoint covers
//! can be missing from the streams.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, Context};
use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;

use super::Readiness;
use crate::metrics::METRICS;
use crate::nats::connect;
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
    /// `js`'s connection, to know when it is replaced.
    client: async_nats::Client,
    pending: VecDeque<Sent>,
    pub stats: PublishStats,
    /// Told why publishes are retried, so readiness can say it.
    readiness: Option<Readiness>,
}

impl Publisher {
    /// Publishes on `js`'s connection, through a context that lets
    /// [`MAX_PENDING`] acknowledgements be owed (a context allowing fewer
    /// would wait for ever on the ones not awaited yet).
    pub fn new(js: &Context) -> Publisher {
        let client = js.client();
        let js = connect::jetstream(client.clone());
        Publisher { js, client, pending: VecDeque::new(), stats: PublishStats::default(), readiness: None }
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
        if let Some(sent) = self.sent(out).await {
            self.pending.push_back(sent);
        }
    }

    /// `out` on its way, or its dead letter when the server can never take
    /// it (nothing for a dead letter itself).
    async fn sent(&mut self, mut out: Outgoing) -> Option<Sent> {
        loop {
            let connection = connect::connection(&self.client);
            match self.publish_until_sent(&out).await {
                Ok(ack) => return Some(Sent { ack, out, connection }),
                Err(e) => out = self.refuse(&out, &e)?,
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

    /// Settles the `n` oldest messages. Those not stored are sent again all
    /// together, one backoff a round, until the server has them: after an
    /// outage the resume takes a round trip, not one per lost message.
    async fn settle_oldest(&mut self, n: usize) {
        let mut batch: Vec<Sent> = self.pending.drain(..n.min(self.pending.len())).collect();
        let mut backoff = Backoff::default();
        while !batch.is_empty() {
            let mut again = Vec::new();
            let mut failure = None;
            for (result, out) in self.acks(batch).await {
                match result {
                    Ok(ack) => {
                        self.stats.stored += 1;
                        self.stats.duplicates += u64::from(ack.duplicate);
                    }
                    Err(e) if never_stored(&e) => again.extend(self.refuse(&out, &e)),
                    Err(e) => {
                        self.retrying(&e);
                        failure.get_or_insert(e);
                        again.push(out);
                    }
                }
            }
            if let Some(e) = failure {
                backoff.wait(again.len(), &e).await;
            }
            batch = Vec::with_capacity(again.len());
            for out in again {
                batch.extend(self.sent(out).await);
            }
        }
    }

    /// The acknowledgements of `batch`, awaited together. A message with an
    /// id whose connection is replaced before its acknowledgement came will
    /// never hear it: it fails at once rather than after the ack timeout
    /// (sent again, the server drops it if it had stored it). One without
    /// an id waits for its acknowledgement or the timeout: sent again too
    /// early, it could be stored twice.
    async fn acks(&self, batch: Vec<Sent>) -> Vec<(Result<PublishAck, PublishError>, Outgoing)> {
        let (with_id, without): (Vec<Sent>, Vec<Sent>) = batch.into_iter().partition(|s| s.out.id.is_some());
        let awaited = without.into_iter().map(|sent| async move { (sent.ack.await, sent.out) });
        let (mut results, rest) = futures::join!(self.acks_while_connected(with_id), join_all(awaited));
        results.extend(rest);
        results
    }

    async fn acks_while_connected(&self, batch: Vec<Sent>) -> Vec<(Result<PublishAck, PublishError>, Outgoing)> {
        let oldest = batch.iter().map(|s| s.connection).min().unwrap_or(u64::MAX);
        let mut results: Vec<Option<Result<PublishAck, PublishError>>> = batch.iter().map(|_| None).collect();
        let mut outs = Vec::with_capacity(batch.len());
        let mut waiting: FuturesUnordered<_> = batch
            .into_iter()
            .enumerate()
            .map(|(i, sent)| {
                outs.push(sent.out);
                sent.ack.into_future().map(move |result| (i, result))
            })
            .collect();
        let replaced = connect::replaced(&self.client, oldest);
        tokio::pin!(replaced);
        loop {
            tokio::select! {
                next = waiting.next() => match next {
                    Some((i, result)) => results[i] = Some(result),
                    None => break,
                },
                () = &mut replaced => break,
            }
        }
        let lost = || PublishError::with_source(PublishErrorKind::BrokenPipe, "the connection it was sent on was lost");
        results.into_iter().zip(outs).map(|(result, out)| (result.unwrap_or_else(|| Err(lost())), out)).collect()
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
                    backoff.wait(1, &e).await;
                }
            }
        }
    }
}

/// A message sent, its acknowledgement owed, and the connection it went on.
struct Sent {
    ack: PublishAckFuture,
    out: Outgoing,
    connection: u64,
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
    async fn wait(&mut self, messages: usize, error: &(dyn std::fmt::Display + Sync)) {
        let base = 50u64.saturating_mul(1 << self.attempt.min(7)).min(5_000);
        let jitter = rand::random::<u64>() % (base / 2 + 1);
        if self.attempt.is_multiple_of(10) {
            tracing::warn!(messages, attempt = self.attempt + 1, %error, "publishes not stored yet; retrying");
        }
        self.attempt += 1;
        tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
    }
}
