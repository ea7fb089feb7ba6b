//! The dispatcher on NATS: one loop that pulls alerts (explicit acks),
//! routes them, holds what must wait, sends what is due in bounded
//! concurrency, records each final outcome, publishes it on
//! `notify.outcomes.<channel>`, and acknowledges an alert once every one of
//! its messages is final. An alert held for hours (quiet hours, retries) is
//! kept alive with progress acknowledgements; one whose messages did not
//! all finish when the dispatcher stops is redelivered at the next start,
//! where the ledger drops what was already sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::deliver::{Ending, Senders};
use super::hold::{Batch, Hold, Limiter};
use super::ledger::{Ledger, Recorded};
use super::notice::Notice;
use super::outcome::{Outcome, Stats};
use super::route::{route, Skip};
use super::{digest, Dispatcher};
use crate::config::{std_duration, Config};
use crate::live::clock::Clock;
use crate::live::{connect, LiveError};

/// An alert whose messages are not all final yet.
struct Pending {
    message: jetstream::Message,
    remaining: usize,
    alive: Instant,
}

fn now(clock: &Clock) -> DateTime<Utc> {
    let ms = clock.now().map_or_else(|| Utc::now().timestamp_millis(), |t| t.0);
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}

/// Runs the dispatcher until `stop`.
pub async fn run(config: Config, mut stop: watch::Receiver<bool>) -> Result<Stats, LiveError> {
    let d = Dispatcher::new(&config)?;
    let client = connect::connect(&config.nats, &format!("forewarn dispatch {}", config.instance)).await?;
    let js = connect::jetstream(client.clone());
    connect::ensure_streams(&js, &config.streams).await?;
    let replicas = config.streams.replicas;
    let kv = super::ledger::bucket(&js, &d.config.dedup.bucket, std_duration(d.config.dedup.max_age), replicas).await?;
    let ledger = Ledger::new(Some(kv), d.config.dedup.cache);
    let at_risk =
        super::ledger::bucket(&js, &d.config.digest.bucket, std_duration(d.config.digest.max_age), replicas).await?;
    let senders = Arc::new(d.senders(Some(client.clone()))?);
    let clock = Arc::new(Clock::parse(&config.watermark.clock).map_err(LiveError::Config)?);
    if let Some(at) = d.digest_at {
        tokio::spawn(digest::run(
            senders.clone(),
            at_risk.clone(),
            ledger.clone(),
            at,
            clock.clone(),
            Duration::from_secs(1),
            stop.clone(),
        ));
    }
    let mut messages = open(&js, &config, &d).await?;
    let mut hold = Hold::new(d.quiet, chrono::Duration::milliseconds(d.config.limits.group_window.0));
    let per_parcel = Limiter::new(d.config.limits.per_parcel, 1_000_000);
    let per_recipient = Limiter::new(d.config.limits.per_recipient, 1_000_000);
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Batch, Ending)>();
    let mut in_flight = 0usize;
    let mut stats = Stats::default();
    let keep_alive = std_duration(d.config.ack_wait) / 3;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut stopping = *stop.borrow();
    let routing = d.routing();
    loop {
        if stopping && in_flight == 0 {
            break;
        }
        tokio::select! {
            message = messages.next(), if !stopping => {
                let message = match message {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "alerts consumer; reopening");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        messages = open(&js, &config, &d).await?;
                        continue;
                    }
                    None => { messages = open(&js, &config, &d).await?; continue; }
                };
                let Ok(info) = message.info() else { continue };
                let seq = info.stream_sequence;
                stats.alerts += 1;
                let notice = match Notice::decode(&message.payload) {
                    Ok(n) => Arc::new(n),
                    Err(reason) => {
                        // It stays in the alerts stream; nothing here can make it valid.
                        tracing::warn!(seq, %reason, "not an alert; skipped");
                        stats.count(&Outcome::Skipped { audience: "any", channel: "any", reason: "invalid_alert" });
                        let _ = message.ack_with(AckKind::Term).await;
                        continue;
                    }
                };
                if let Err(e) = digest::track(&at_risk, &notice).await {
                    tracing::warn!(seq, error = %e, "at-risk list not updated");
                }
                let (drafts, skips) = route(&notice, &routing);
                for s in &skips {
                    publish(&client, &notice, Outcome::from_skip(s), &mut stats, now(&clock)).await;
                }
                let mut wanted = Vec::new();
                for mut draft in drafts {
                    if ledger.get(&draft.key).await?.is_some() {
                        continue;
                    }
                    if let Some(told) = &draft.told {
                        if ledger.get(told).await? != Some(Recorded::Sent) {
                            let skip = Skip { audience: draft.target.audience(), channel: draft.target.channel(), reason: "not_told" };
                            publish(&client, &notice, Outcome::from_skip(&skip), &mut stats, now(&clock)).await;
                            continue;
                        }
                    }
                    draft.seq = seq;
                    wanted.push(draft);
                }
                if wanted.is_empty() {
                    let _ = message.double_ack().await;
                    continue;
                }
                pending.insert(seq, Pending { message, remaining: wanted.len(), alive: Instant::now() });
                let t = now(&clock);
                for draft in wanted {
                    if let Some(batch) = hold.offer(draft, t) {
                        in_flight += start(batch, &senders, &per_parcel, &per_recipient, t, &done_tx, &stop);
                    } else {
                        stats.held += 1;
                    }
                }
            }
            Some((batch, ending)) = done_rx.recv() => {
                in_flight -= 1;
                let Some(outcome) = Outcome::of(&batch.primary, &ending) else { continue };
                ledger.record(&batch.primary.key, outcome.recorded()).await?;
                for absorbed in &batch.absorbed {
                    ledger.record(&absorbed.key, Recorded::Final("grouped".into())).await?;
                    let skip = Skip { audience: absorbed.target.audience(), channel: absorbed.target.channel(), reason: "grouped" };
                    publish(&client, &absorbed.notice, Outcome::from_skip(&skip), &mut stats, now(&clock)).await;
                }
                if let Outcome::Failed { reason, .. } = &outcome {
                    tracing::warn!(key = %batch.primary.key, %reason, "message failed");
                }
                publish(&client, &batch.primary.notice, outcome, &mut stats, now(&clock)).await;
                for draft in batch.drafts() {
                    finish(&mut pending, draft.seq).await;
                }
            }
            _ = tick.tick() => {
                let t = now(&clock);
                for batch in hold.due(t) {
                    in_flight += start(batch, &senders, &per_parcel, &per_recipient, t, &done_tx, &stop);
                }
                for p in pending.values_mut() {
                    if p.alive.elapsed() >= keep_alive {
                        let _ = p.message.ack_with(AckKind::Progress).await;
                        p.alive = Instant::now();
                    }
                }
                stats.holding = hold.len() as u64;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
            }
        }
        if in_flight == 0 && stopping {
            break;
        }
    }
    Ok(stats)
}

/// Rate limits, then a task that sends with retries. Returns the tasks started.
fn start(
    batch: Batch,
    senders: &Arc<Senders>,
    per_parcel: &Limiter,
    per_recipient: &Limiter,
    now: DateTime<Utc>,
    done: &mpsc::UnboundedSender<(Batch, Ending)>,
    stop: &watch::Receiver<bool>,
) -> usize {
    let draft = &batch.primary;
    let human = draft.quiet || draft.group.is_some();
    let allowed = !human || {
        let parcel =
            vec![format!("{}\u{0}{}", draft.notice.parcel_id.as_deref().unwrap_or(""), draft.target.channel())];
        let contact = draft.target.contact().map(|c| vec![c.to_string()]).unwrap_or_default();
        per_parcel.allow(&parcel, now) && per_recipient.allow(&contact, now)
    };
    let done = done.clone();
    if !allowed {
        let _ = done.send((batch, Ending::RateLimited));
        return 1;
    }
    let senders = senders.clone();
    let mut stop = stop.clone();
    tokio::spawn(async move {
        let ending = senders.deliver(&batch.primary, &mut stop).await;
        let _ = done.send((batch, ending));
    });
    1
}

async fn finish(pending: &mut HashMap<u64, Pending>, seq: u64) {
    let Some(p) = pending.get_mut(&seq) else { return };
    p.remaining = p.remaining.saturating_sub(1);
    if p.remaining == 0 {
        if let Some(p) = pending.remove(&seq) {
            if let Err(e) = p.message.double_ack().await {
                tracing::warn!(seq, error = %e, "alert acknowledgement not confirmed; it may come back and be dropped as sent");
            }
        }
    }
}

async fn publish(client: &async_nats::Client, n: &Notice, outcome: Outcome, stats: &mut Stats, at: DateTime<Utc>) {
    stats.count(&outcome);
    let body = outcome.json(n, at);
    let subject = format!("notify.outcomes.{}", outcome.channel());
    if let Err(e) = client.publish(subject, body.into()).await {
        tracing::warn!(error = %e, "outcome not published");
    }
}

/// The alerts consumer, recreated just after the server's acknowledgement
/// floor so that everything not acknowledged comes back at once (the ledger
/// drops what was sent) instead of after the acknowledgement wait.
async fn open(js: &jetstream::Context, config: &Config, d: &Dispatcher) -> Result<pull::Stream, LiveError> {
    let name = &config.streams.alerts.name;
    let mut stream = js.get_stream(name).await.map_err(|e| LiveError::nats("stream lookup", e))?;
    let durable = format!("{}-dispatch", config.instance);
    let floor = match stream.consumer_info(&durable).await {
        Ok(info) => info.ack_floor.stream_sequence,
        Err(_) => 0,
    };
    let _ = stream.delete_consumer(&durable).await;
    let _ = stream.info().await;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable),
            filter_subject: "alerts.>".into(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: std_duration(d.config.ack_wait),
            max_ack_pending: d.config.max_ack_pending,
            max_deliver: -1,
            deliver_policy: if floor == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence { start_sequence: floor + 1 }
            },
            ..Default::default()
        })
        .await
        .map_err(|e| LiveError::nats("alerts consumer create", e))?;
    consumer
        .stream()
        .max_messages_per_batch(500)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| LiveError::nats("alerts consume", e))
}
