//! Sending in bounded concurrency, shared by the live dispatcher and the
//! backtest: the rate limits, then one task a message that claims it in the
//! ledger (so that of several dispatchers, or runs, one only ever sends it),
//! delivers it with retries and records its final outcome before handing
//! it back, so the driver's loop never waits on a server.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use super::deliver::{Ending, Senders};
use super::hold::{Batch, Limiter};
use super::ledger::{Claim, Ledger};
use super::outcome::Outcome;
use super::route::Draft;
use crate::config::dispatch::Limits;
use crate::metrics::METRICS;

/// A message whose sending ended, its outcome recorded.
pub struct Done {
    pub batch: Batch,
    pub ending: Ending,
    /// From the start of sending (after any hold) to the ending.
    pub took: Duration,
}

/// Messages on their way out.
pub struct Sending {
    senders: Arc<Senders>,
    ledger: Ledger,
    /// Who claims the messages: this process, as its lease names it.
    by: Arc<str>,
    per_parcel: Limiter,
    per_recipient: Limiter,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    stop: watch::Receiver<bool>,
    in_flight: usize,
}

impl Sending {
    pub fn new(
        senders: Arc<Senders>,
        ledger: Ledger,
        by: &str,
        limits: &Limits,
        stop: watch::Receiver<bool>,
    ) -> Sending {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Sending {
            senders,
            ledger,
            by: by.into(),
            per_parcel: Limiter::new(limits.per_parcel, limits.tracked),
            per_recipient: Limiter::new(limits.per_recipient, limits.tracked),
            done_tx,
            done_rx,
            stop,
            in_flight: 0,
        }
    }

    /// Messages started and not handed back yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Checks the rate limits (messages to people only; machines take
    /// everything), then sends in a task of its own.
    pub fn start(&mut self, batch: Batch, now: DateTime<Utc>) {
        let draft = &batch.primary;
        let human = draft.quiet || draft.group.is_some();
        let allowed = !human || {
            let parcel =
                vec![format!("{}\u{0}{}", draft.notice.parcel_id.as_deref().unwrap_or(""), draft.target.channel())];
            let contact = draft.target.contact().map(|c| vec![c.to_string()]).unwrap_or_default();
            self.per_parcel.allow(&parcel, now) && self.per_recipient.allow(&contact, now)
        };
        let (senders, ledger, done) = (self.senders.clone(), self.ledger.clone(), self.done_tx.clone());
        let by = self.by.clone();
        let stop = self.stop.clone();
        self.in_flight += 1;
        tokio::spawn(async move {
            let started = Instant::now();
            let ending = if allowed {
                claimed_delivery(&senders, &ledger, &by, &batch.primary, &stop).await
            } else {
                Ending::RateLimited
            };
            let took = started.elapsed();
            if matches!(ending, Ending::Sent { .. } | Ending::Failed { .. }) {
                METRICS.send_seconds.with_label_values(&[batch.primary.target.channel()]).observe(took.as_secs_f64());
            }
            let at = now + chrono::Duration::from_std(took).unwrap_or_default();
            record(&ledger, &batch, &ending, at, &stop).await;
            let _ = done.send(Done { batch, ending, took });
        });
    }

    /// The next message whose sending ended, its outcome recorded.
    pub async fn next(&mut self) -> Option<Done> {
        if self.in_flight == 0 {
            return None;
        }
        let done = self.done_rx.recv().await;
        self.in_flight -= 1;
        done
    }
}

/// Delivers `draft` if this process wins its claim in the ledger, taken
/// just before the first request; gives the claim back when stopped before
/// sending, so that the next dispatcher to take the alert may send it.
async fn claimed_delivery(
    senders: &Senders,
    ledger: &Ledger,
    by: &str,
    draft: &Draft,
    stop: &watch::Receiver<bool>,
) -> Ending {
    let (key, claimed) = (draft.slot(), AtomicBool::new(false));
    let claim = async {
        let intent = Bytes::from(Outcome::intent(draft, by, Utc::now()));
        let claim = retrying(stop, "idempotency claim", || ledger.claim(&key, intent.clone())).await?;
        claimed.store(claim == Claim::Ours, Ordering::Relaxed);
        if claim != Claim::Ours {
            METRICS.claimed_elsewhere.inc();
            tracing::info!(key = %draft.key, "claimed by another dispatcher or an earlier run; not sent here");
        }
        Some(claim == Claim::Ours)
    };
    let ending = senders.deliver(draft, &mut stop.clone(), claim).await;
    if matches!(ending, Ending::Interrupted) && claimed.load(Ordering::Relaxed) {
        if let Err(e) = ledger.release(&key).await {
            tracing::warn!(key = %draft.key, error = %e, "claim not released; its outcome will read unknown");
        }
    }
    ending
}

/// Records the final outcome of the message and of every draft it absorbed,
/// as `notify.outcomes` says them. A record that cannot be stored before
/// stopping is logged: the alert is still acknowledged, so it is not sent
/// again unless that fails too.
async fn record(ledger: &Ledger, batch: &Batch, ending: &Ending, at: DateTime<Utc>, stop: &watch::Receiver<bool>) {
    for (draft, outcome) in Outcome::of_batch(batch, ending) {
        record_outcome(ledger, draft, &outcome, at, stop).await;
    }
}

/// Records `draft`'s final `outcome` at `at`, retrying until it is stored
/// or `stop`; false (and logged) when stopped first.
pub async fn record_outcome(
    ledger: &Ledger,
    draft: &Draft,
    outcome: &Outcome,
    at: DateTime<Utc>,
    stop: &watch::Receiver<bool>,
) -> bool {
    let (key, recorded, body) = (draft.slot(), outcome.recorded(), Bytes::from(outcome.json(&draft.notice, at)));
    let stored = retrying(stop, "idempotency record", || ledger.record(&key, recorded.clone(), body.clone())).await;
    if stored.is_none() {
        tracing::warn!(key = %draft.key, "stopped before the outcome was recorded");
    }
    stored.is_some()
}

/// Runs `attempt` until it succeeds, waiting 100 ms doubling to 5 s between
/// tries and logging each failure; `None` when `stop` comes first. For the
/// dispatcher's own bookkeeping on NATS, which must outlast a server restart.
pub async fn retrying<T, E, F>(stop: &watch::Receiver<bool>, what: &str, mut attempt: impl FnMut() -> F) -> Option<T>
where
    E: Display,
    F: Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_millis(100);
    let mut stop = stop.clone();
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => tracing::warn!(error = %e, retry_in = ?wait, "{what} failed; retrying"),
        }
        if *stop.borrow_and_update() {
            return None;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return None,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}
