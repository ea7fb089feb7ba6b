//! Publishing into JetStream without losing anything, beside the work that
//! makes the messages: [`Publisher`] hands them to a task of their own
//! (the outbox) that sends them at once and collects their
//! acknowledgements later. [`Publisher::barrier`] resolves when the server
//! stored every message handed over before it, re-sending (same message
//! id: no duplicates) through outages. A checkpoint is stored only after
//! such a barrier, so nothing a checkpoint covers can be missing from the
//! streams; the stream is not stopped while the acknowledgements come.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, Context};
use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::Readiness;
use crate::alert::Alert;
use crate::metrics::METRICS;
use crate::nats::wire::{self, Outgoing};
use crate::nats::{connect, LiveError};

/// Acknowledgements outstanding before the oldest are awaited.
const MAX_PENDING: usize = 8192;
/// Batches of messages handed over and not yet sent before a sender waits.
const QUEUED: usize = 256;
/// Alerts handed over and not yet sent before a sender waits: a burst (a
/// deadline crossing fires a day's deadlines at once, 100,000 alerts of
/// 480 bytes on a national network of 1 M parcels) waits in the engines,
/// not in the queue.
const QUEUED_ALERTS: usize = 65_536;

#[derive(Clone, Copy, Debug, Default)]
pub struct PublishStats {
    pub stored: u64,
    /// Dropped by the server as copies of an earlier message (re-sent after a restart).
    pub duplicates: u64,
    pub retries: u64,
    /// Refused by the server for good (too large): dead-lettered instead.
    pub refused: u64,
}

/// The sending side of the outbox: cheap to use from a hot loop, one
/// hand-over a batch of messages.
pub struct Publisher {
    jobs: mpsc::Sender<Job>,
    /// Room for [`QUEUED_ALERTS`] alerts not yet sent.
    room: Arc<Semaphore>,
}

enum Job {
    Send(Vec<Outgoing>),
    /// Alerts, each with when what made it arrived: counted and made
    /// messages by the outbox, beside the loop that made them.
    /// The permit holds their room in the queue until they are sent.
    Alerts(Vec<Alert>, Vec<SystemTime>, OwnedSemaphorePermit),
    /// Answered when every message handed over before it is stored.
    Barrier(oneshot::Sender<PublishStats>),
}

/// The outbox has stopped (only if its task died): what it held is not known to be stored.
fn gone() -> LiveError {
    LiveError::nats("publishing", "the outbox task stopped")
}

impl Publisher {
    /// Starts the outbox on `js`'s connection, telling `readiness` (if
    /// any) why publishes are retried.
    pub fn start(js: &Context, readiness: Option<Readiness>) -> Publisher {
        let (jobs, queue) = mpsc::channel(QUEUED);
        tokio::spawn(Outbox::new(js, readiness).work(queue));
        Publisher { jobs, room: Arc::new(Semaphore::new(QUEUED_ALERTS)) }
    }

    /// Hands `outs` over together (nothing if empty); their storage is
    /// confirmed by a later barrier.
    pub async fn send_all(&self, outs: Vec<Outgoing>) -> Result<(), LiveError> {
        if outs.is_empty() {
            return Ok(());
        }
        self.jobs.send(Job::Send(outs)).await.map_err(|_| gone())
    }

    /// Hands `alerts` over, `arrived[i]` when what made `alerts[i]` arrived.
    pub async fn send_alerts(&self, alerts: Vec<Alert>, arrived: Vec<SystemTime>) -> Result<(), LiveError> {
        if alerts.is_empty() {
            return Ok(());
        }
        // A batch larger than the room takes all of it: it waits for the queue to empty.
        let room = alerts.len().min(QUEUED_ALERTS) as u32;
        let permit = self.room.clone().acquire_many_owned(room).await.map_err(|_| gone())?;
        METRICS.outbox_alerts.add(alerts.len() as i64);
        self.jobs.send(Job::Alerts(alerts, arrived, permit)).await.map_err(|_| gone())
    }

    /// What resolves, with the counts so far, once every message handed
    /// over until now is stored (or, refused for good, dead-lettered). The
    /// outbox goes on sending meanwhile.
    pub async fn barrier(
        &self,
    ) -> Result<impl std::future::Future<Output = Result<PublishStats, LiveError>> + Send + 'static, LiveError> {
        let (done, settled) = oneshot::channel();
        self.jobs.send(Job::Barrier(done)).await.map_err(|_| gone())?;
        Ok(settled.map(|r| r.map_err(|_| gone())))
    }

    /// Returns when every message handed over so far is stored.
    pub async fn settle(&self) -> Result<PublishStats, LiveError> {
        self.barrier().await?.await
    }
}

/// In the outbox's queue: a message sent, or a barrier answered once all
/// before it are stored.
enum Entry {
    Sent(Sent),
    Barrier(oneshot::Sender<PublishStats>),
}

/// The outbox task's state: messages sent, their acknowledgements owed.
struct Outbox {
    js: Context,
    /// `js`'s connection, to know when it is replaced.
    client: async_nats::Client,
    pending: VecDeque<Entry>,
    /// Barriers in `pending`.
    barriers: usize,
    stats: PublishStats,
    /// Told why publishes are retried, so readiness can say it.
    readiness: Option<Readiness>,
}

impl Outbox {
    /// Publishes on `js`'s connection, through a context that lets
    /// [`MAX_PENDING`] acknowledgements be owed (a context allowing fewer
    /// would wait for ever on the ones not awaited yet).
    fn new(js: &Context, readiness: Option<Readiness>) -> Outbox {
        let client = js.client();
        let js = connect::jetstream(client.clone());
        Outbox { js, client, pending: VecDeque::new(), barriers: 0, stats: PublishStats::default(), readiness }
    }

    /// Takes jobs until every [`Publisher`] is gone, then settles. A
    /// barrier waits among the messages sent: it is answered once those
    /// before it are settled, which happens when [`MAX_PENDING`]
    /// acknowledgements are owed or no job waits; sending goes on meanwhile.
    async fn work(mut self, mut queue: mpsc::Receiver<Job>) {
        loop {
            let job = match queue.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty) if self.barriers > 0 => {
                    self.settle().await;
                    continue;
                }
                Err(TryRecvError::Empty) => match queue.recv().await {
                    Some(job) => job,
                    None => break,
                },
                Err(TryRecvError::Disconnected) => break,
            };
            match job {
                Job::Send(outs) => {
                    for out in outs {
                        self.send(out).await;
                    }
                }
                Job::Alerts(alerts, arrived, room) => {
                    // Each alert dropped once sent: a large batch gives back as it goes.
                    for (alert, arrived) in alerts.into_iter().zip(arrived) {
                        for audience in alert.audience.names() {
                            METRICS.alerts.with_label_values(&[&alert.rule, alert.state.as_str(), audience]).inc();
                        }
                        self.send(wire::alert(&alert, arrived)).await;
                        METRICS.outbox_alerts.dec();
                    }
                    drop(room);
                }
                Job::Barrier(done) => {
                    self.pending.push_back(Entry::Barrier(done));
                    self.barriers += 1;
                }
            }
        }
        self.settle().await;
    }

    /// A publish not stored yet, to be sent again: counted and reported.
    fn retrying(&mut self, error: &PublishError) {
        self.stats.retries += 1;
        METRICS.publish_retries.inc();
        if let Some(readiness) = &self.readiness {
            readiness.failing(&format!("publishes not stored: {error}"));
        }
    }

    /// Sends a message; its storage is confirmed by a later settle.
    async fn send(&mut self, out: Outgoing) {
        if self.pending.len() >= MAX_PENDING {
            self.settle_oldest(MAX_PENDING / 2).await;
        }
        if let Some(sent) = self.sent(out).await {
            self.pending.push_back(Entry::Sent(sent));
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
    async fn settle(&mut self) {
        while !self.pending.is_empty() {
            self.settle_oldest(self.pending.len()).await;
        }
    }

    /// Settles the `n` oldest messages. Those not stored are sent again all
    /// together, one backoff a round, until the server has them: after an
    /// outage the resume takes a round trip, not one per lost message.
    async fn settle_oldest(&mut self, n: usize) {
        let mut barriers = Vec::new();
        let mut batch = Vec::with_capacity(n);
        for entry in self.pending.drain(..n.min(self.pending.len())) {
            match entry {
                Entry::Sent(sent) => batch.push(sent),
                Entry::Barrier(done) => barriers.push(done),
            }
        }
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
        self.barriers -= barriers.len();
        for done in barriers {
            let _ = done.send(self.stats);
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
