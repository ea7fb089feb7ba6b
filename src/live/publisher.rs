//! Publishing into JetStream without losing anything, beside the work that
//! makes the messages: [`Publisher`] hands them to a task of their own
//! (the outbox) that sends them at once and collects their
//! acknowledgements later, all on one subscription. [`Publisher::barrier`]
//! resolves when the server stored every message handed over before it,
//! re-sending (same message id: no duplicates) through outages. A
//! checkpoint is stored only after such a barrier, so nothing a checkpoint
//! covers can be missing from the streams; the stream is not stopped while
//! the acknowledgements come.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::client::PublishErrorKind;
use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
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
    /// Starts the outbox on `client`'s connection, telling `readiness` (if
    /// any) why publishes are retried.
    pub fn start(client: async_nats::Client, readiness: Option<Readiness>) -> Publisher {
        let (jobs, queue) = mpsc::channel(QUEUED);
        tokio::spawn(Outbox::new(client, readiness).work(queue));
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
    client: async_nats::Client,
    acks: Acks,
    pending: VecDeque<Entry>,
    /// Barriers in `pending`.
    barriers: usize,
    stats: PublishStats,
    /// Told why publishes are retried, so readiness can say it.
    readiness: Option<Readiness>,
}

impl Outbox {
    fn new(client: async_nats::Client, readiness: Option<Readiness>) -> Outbox {
        let acks = Acks::new(&client);
        Outbox { client, acks, pending: VecDeque::new(), barriers: 0, stats: PublishStats::default(), readiness }
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
    fn retrying(&mut self, failure: &Failure) {
        self.stats.retries += 1;
        METRICS.publish_retries.inc();
        if let Some(readiness) = &self.readiness {
            readiness.failing(&format!("publishes not stored: {failure}"));
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
                Ok(number) => return Some(Sent { number, out, connection }),
                Err(reason) => out = self.refuse(&out, &reason)?,
            }
        }
    }

    /// A message the server will never store: counted, and its dead letter
    /// to send instead (none for a dead letter itself: it is logged and dropped).
    fn refuse(&mut self, out: &Outgoing, reason: &str) -> Option<Outgoing> {
        self.stats.refused += 1;
        METRICS.publishes_refused.inc();
        let letter = !out.subject.starts_with("deadletter.");
        tracing::error!(subject = %out.subject, bytes = out.body.len(), error = %reason, dead_lettered = letter, "the server refused a message for good");
        letter.then(|| wire::refused_letter(out, reason))
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
            let answers = self.acks.answers(&self.client, &batch).await;
            for (answer, sent) in answers.into_iter().zip(batch) {
                match answer {
                    Ok(duplicate) => {
                        self.stats.stored += 1;
                        self.stats.duplicates += u64::from(duplicate);
                    }
                    Err(Failure::Refused(reason)) => again.extend(self.refuse(&sent.out, &reason)),
                    Err(e) => {
                        self.retrying(&e);
                        failure.get_or_insert(e);
                        again.push(sent.out);
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
        let outstanding = self.pending.iter().find_map(|e| match e {
            Entry::Sent(sent) => Some(sent.number),
            Entry::Barrier(_) => None,
        });
        self.acks.forget_before(outstanding);
        self.barriers -= barriers.len();
        for done in barriers {
            let _ = done.send(self.stats);
        }
    }

    /// Sends `out` with its reply subject numbered, retrying what may pass
    /// later; a message the server can never take comes back as the reason.
    async fn publish_until_sent(&mut self, out: &Outgoing) -> Result<u64, String> {
        let mut backoff = Backoff::default();
        loop {
            let (number, reply) = match self.acks.reply(&self.client).await {
                Ok(numbered) => numbered,
                Err(e) => {
                    backoff.wait(1, &e).await;
                    continue;
                }
            };
            let (subject, headers, body) = (out.subject.clone(), out.header_map(), out.body.clone());
            let sent = if headers.is_empty() {
                self.client.publish_with_reply(subject, reply, body).await
            } else {
                self.client.publish_with_reply_and_headers(subject, reply, headers, body).await
            };
            match sent {
                Ok(()) => return Ok(number),
                // Larger than the server takes, or a subject it cannot route: never sent however often tried.
                Err(e)
                    if matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::InvalidSubject) =>
                {
                    return Err(e.to_string())
                }
                Err(e) => {
                    let failure = Failure::Failed(e.to_string());
                    self.retrying(&failure);
                    backoff.wait(1, &failure).await;
                }
            }
        }
    }
}

/// A message sent, its acknowledgement owed under `number`, and the
/// connection it went on.
struct Sent {
    number: u64,
    out: Outgoing,
    connection: u64,
}

/// Why a message is not known to be stored.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The server will never store it, however often it is sent: larger
    /// than the stream's largest message.
    #[error("{0}")]
    Refused(String),
    #[error("the connection it was sent on was lost")]
    Lost,
    #[error("no acknowledgement within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Failed(String),
}

/// Whether a message was stored (true: as a copy of one stored before), or why not.
type Answer = Result<bool, Failure>;

/// The server's acknowledgements, all on one subscription: each message's
/// reply subject is the subscription's prefix and the message's number.
/// The client's own JetStream publish makes a reply subject, a one-shot
/// channel, a table entry and two timers for each message: about 6 % of
/// forewarn's time in the live bench.
struct Acks {
    /// `_INBOX.<unique>`; replies come to `<prefix>.<number>`.
    prefix: String,
    messages: Option<async_nats::Subscriber>,
    /// The next message's number.
    next: u64,
    /// Answers come before their message was awaited.
    early: BTreeMap<u64, Answer>,
}

impl Acks {
    fn new(client: &async_nats::Client) -> Acks {
        Acks { prefix: client.new_inbox(), messages: None, next: 0, early: BTreeMap::new() }
    }

    /// The next message's number and reply subject, subscribed first if not yet.
    async fn reply(&mut self, client: &async_nats::Client) -> Result<(u64, String), Failure> {
        if self.messages.is_none() {
            let all = format!("{}.*", self.prefix);
            self.messages = Some(client.subscribe(all).await.map_err(|e| Failure::Failed(e.to_string()))?);
        }
        let number = self.next;
        self.next += 1;
        let mut reply = String::with_capacity(self.prefix.len() + 21);
        reply.push_str(&self.prefix);
        reply.push('.');
        reply.push_str(itoa::Buffer::new().format(number));
        Ok((number, reply))
    }

    /// The answer for each of `batch` (in number order). A message with an
    /// id whose connection is replaced before its acknowledgement came will
    /// never hear it: it fails at once rather than after [`ACK_TIMEOUT`]
    /// (sent again, the server drops it if it had stored it). One without
    /// an id waits for its acknowledgement or the timeout: sent again too
    /// early, it could be stored twice.
    async fn answers(&mut self, client: &async_nats::Client, batch: &[Sent]) -> Vec<Answer> {
        let mut answers: Vec<Option<Answer>> = batch.iter().map(|s| self.early.remove(&s.number)).collect();
        let mut missing = answers.iter().filter(|a| a.is_none()).count();
        let oldest = batch.iter().filter(|s| s.out.id.is_some()).map(|s| s.connection).min();
        let replaced = async {
            match oldest {
                Some(since) => connect::replaced(client, since).await,
                None => std::future::pending().await,
            }
        };
        let timeout = tokio::time::sleep(ACK_TIMEOUT);
        tokio::pin!(replaced, timeout);
        let mut lost = false;
        while missing > 0 {
            let Some(messages) = self.messages.as_mut() else { break };
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        self.messages = None;
                        break;
                    };
                    let Some((number, answer)) = ack(&message) else { continue };
                    match batch.binary_search_by_key(&number, |s| s.number) {
                        Ok(i) if answers[i].is_none() => {
                            answers[i] = Some(answer);
                            missing -= 1;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            self.early.insert(number, answer);
                        }
                    }
                }
                () = &mut replaced, if !lost => {
                    lost = true;
                    for (answer, _) in answers.iter_mut().zip(batch).filter(|(a, s)| a.is_none() && s.out.id.is_some()) {
                        *answer = Some(Err(Failure::Lost));
                        missing -= 1;
                    }
                }
                () = &mut timeout => break,
            }
        }
        answers.into_iter().map(|a| a.unwrap_or(Err(Failure::TimedOut(ACK_TIMEOUT)))).collect()
    }

    /// Forgets the answers that came early for messages no longer awaited:
    /// all below `outstanding`, the oldest number still owed (all if none).
    fn forget_before(&mut self, outstanding: Option<u64>) {
        match outstanding {
            Some(number) => self.early = self.early.split_off(&number),
            None => self.early.clear(),
        }
    }
}

/// How long an acknowledgement is awaited before its message is sent again
/// (under the same message id, the server drops a copy).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The number and answer of an acknowledgement; `None` for a message that
/// is not one.
fn ack(message: &async_nats::Message) -> Option<(u64, Answer)> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        duplicate: bool,
        error: Option<jetstream::Error>,
    }
    let number = message.subject.rsplit('.').next()?.parse().ok()?;
    if let Some(status) = message.status.filter(|s| *s != async_nats::StatusCode::OK) {
        let why = match status {
            async_nats::StatusCode::NO_RESPONDERS => "no stream stores its subject".to_string(),
            other => format!("status {other}: {}", message.description.as_deref().unwrap_or("")),
        };
        return Some((number, Err(Failure::Failed(why))));
    }
    let answer = match serde_json::from_slice::<Body>(&message.payload) {
        Ok(Body { error: Some(e), .. }) if e.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => {
            Err(Failure::Refused(e.to_string()))
        }
        Ok(Body { error: Some(e), .. }) => Err(Failure::Failed(e.to_string())),
        Ok(Body { duplicate, error: None }) => Ok(duplicate),
        Err(e) => Err(Failure::Failed(format!("an unreadable acknowledgement: {e}"))),
    };
    Some((number, answer))
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
