//! The dispatcher on NATS: while it holds its group's [`Lease`], one loop
//! that pulls alerts (explicit acks), routes them, holds what must wait,
//! sends what is due in bounded concurrency, records each final outcome,
//! publishes it on `notify.outcomes.<channel>`, and acknowledges an alert
//! once every one of its messages is final. An alert held for hours (quiet
//! hours, retries) is kept alive with progress acknowledgements; one whose
//! messages did not all finish when the dispatcher stops is redelivered at
//! the next start, where the ledger drops what was already sent.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, kv, AckKind};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::deliver::Ending;
use super::hold::Hold;
use super::lease::Lease;
use super::ledger::Ledger;
use super::notice::Notice;
use super::outcome::{Outcome, Stats};
use super::route::{Draft, Target};
use super::sending::{record_outcome, retrying, Done, Sending};
use super::{digest, stages, Dispatcher};
use crate::clock::Clock;
use crate::config::{std_duration, Config};
use crate::metrics::METRICS;
use crate::nats::{connect, LiveError};

/// Admission workers: an alert's worker is chosen by its id, so a firing and
/// its resolution update the at-risk list in order; workers run side by side.
const WORKERS: usize = 64;

/// An alert whose messages are not all final yet.
struct Pending {
    message: jetstream::Message,
    remaining: usize,
    alive: Instant,
    /// When the dispatcher took the alert.
    received: Instant,
    /// When what made the alert reached the server (end-to-end latency starts here).
    arrived: SystemTime,
    /// A message of it waited for quiet hours or grouping.
    held: bool,
    /// Its first message was accepted (the service level counts it once).
    told: bool,
}

/// The service level over the current interval.
struct ServiceLevel {
    threshold: Duration,
    interval: Duration,
    since: Instant,
    within: u64,
    total: u64,
}

impl ServiceLevel {
    /// An alert's first message accepted `after` it became sendable.
    fn told(&mut self, after: Duration) {
        let within = after <= self.threshold;
        METRICS.first_messages.with_label_values(&[if within { "true" } else { "false" }]).inc();
        self.total += 1;
        self.within += u64::from(within);
    }

    /// At the end of each interval, the share within the threshold (none when nothing was told).
    fn tick(&mut self) {
        if self.since.elapsed() < self.interval {
            return;
        }
        if self.total > 0 {
            METRICS.service_level.set(self.within as f64 / self.total as f64);
        }
        (self.since, self.within, self.total) = (Instant::now(), 0, 0);
    }
}

/// What an admission worker takes: the alert's sequence, when it was received, its message, the alert.
type ToWorker = (u64, Instant, jetstream::Message, Arc<Notice>);

/// An alert waiting for an episode that may speak for it.
struct Waiting {
    seq: u64,
    received: Instant,
    message: jetstream::Message,
    alive: Instant,
}

/// An alert through routing and the ledger: the drafts still to send.
struct Admitted {
    seq: u64,
    received: Instant,
    message: jetstream::Message,
    notice: Arc<Notice>,
    drafts: Vec<Draft>,
    /// Outcomes of its messages that are not to send (skipped, unknown).
    news: Vec<Outcome>,
}

fn now(clock: &Clock) -> DateTime<Utc> {
    let ms = clock.now().map_or_else(|| Utc::now().timestamp_millis(), |t| t.0);
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}

/// Loads the templates again and puts them in force if they pass the checks
/// of a start; else the ones in force stay, and the log says why.
fn reload_templates(config: &Config, d: &Dispatcher, senders: &super::deliver::Senders) {
    let dir = d.config.templates_dir(&config.rules);
    let checked = crate::rules::dir::RulesDir::new(&config.rules).load().and_then(|set| {
        super::template::Templates::check_pack(&dir, &d.config.default_locale, &set).map_err(|p| p.join("\n"))
    });
    // A process that also detects counts its reload once, in the processor.
    let alone = !config.role.detects();
    match checked {
        Ok(templates) => {
            senders.replace_templates(templates);
            if alone {
                METRICS.reloads.with_label_values(&["ok"]).inc();
            }
            tracing::info!(dir = %dir.display(), "templates reloaded");
        }
        Err(errors) => {
            if alone {
                METRICS.reloads.with_label_values(&["failed"]).inc();
            }
            tracing::error!(dir = %dir.display(), %errors, "templates not reloaded; the previous ones stay");
        }
    }
}

/// Runs the dispatcher until `stop`. Only a failure to set up (connect,
/// create the buckets) ends it early; a server restart later on is waited
/// out, and whatever was not final comes back from the stream.
///
/// Dispatchers of the same `--instance` take turns: each waits for the
/// group's [`Lease`], sends while it holds it, and stands by again if it
/// loses it; the daily digest runs in each (it is claimed per branch and day).
///
/// Each change of `reload` (SIGHUP) loads the templates again; they take
/// over if they pass what the start and `forewarn check` ask.
pub async fn run(
    config: Config,
    d: Dispatcher,
    stop: watch::Receiver<bool>,
    mut reload: watch::Receiver<u64>,
) -> Result<Stats, LiveError> {
    metrics_at_zero();
    let d = Arc::new(d);
    let client = connect::connect(&config.nats, &format!("forewarn dispatch {}", config.instance)).await?;
    let js = connect::jetstream(client.clone());
    connect::ensure_streams(&js, &config.streams).await?;
    let replicas = config.streams.replicas;
    let kv = super::ledger::bucket(&js, &d.config.dedup.bucket, std_duration(d.config.dedup.max_age), replicas).await?;
    let ledger = Ledger::new(Some(kv), d.config.dedup.cache);
    let at_risk =
        super::ledger::bucket(&js, &d.config.digest.bucket, std_duration(d.config.digest.max_age), replicas).await?;
    let leases = super::ledger::bucket(&js, &d.config.failover.bucket, Duration::ZERO, replicas).await?;
    let lease = Lease::new(leases, &config.instance, std_duration(d.config.failover.lease));
    let senders = Arc::new(d.senders(Some(client.clone()))?);
    let clock = Arc::new(Clock::parse(&config.watermark.clock).map_err(LiveError::config)?);
    if let Some(at) = d.digest_at {
        tokio::spawn(digest::run(
            senders.clone(),
            at_risk.clone(),
            ledger.clone(),
            digest::Daily { at, check: Duration::from_secs(1), partitions: config.partitions.count },
            clock.clone(),
            stop.clone(),
        ));
    }
    let shared = Shared { config, d, client, js, ledger, at_risk, senders, clock, by: lease.holder().to_string() };
    let mut stats = Stats::default();
    METRICS.dispatch_active.set(0);
    tracing::info!(holder = %lease.holder(), "dispatcher standing by for its group's lease");
    while let Some(held) = lease.acquire(&stop).await {
        let term = super::lease::either(stop.clone(), held.lost.clone());
        serve(&shared, term, &mut reload, &mut stats).await;
        if *stop.borrow() {
            held.release().await;
            break;
        }
    }
    Ok(stats)
}

/// Every series of the dispatcher's closed label sets, at 0 until counted:
/// by channel, sent, failed and unknown messages (and sent by fallback
/// for the customer's channels) and the latency
/// histograms; first messages within the threshold or not; the inhibition
/// gauges. A family without a series shows "no data" on a dashboard, not 0.
fn metrics_at_zero() {
    let m = &*METRICS;
    for channel in Target::CHANNELS {
        for (outcome, reason) in [("sent", ""), ("failed", "failed"), ("unknown", "")] {
            m.notifications.with_label_values(&[channel, outcome, reason]);
        }
        if ["sms", "email"].contains(&channel) {
            m.notifications.with_label_values(&[channel, "sent", "fallback"]);
        }
        m.send_seconds.with_label_values(&[channel]);
        m.event_to_accepted.with_label_values(&[channel]);
    }
    for within in ["true", "false"] {
        m.first_messages.with_label_values(&[within]);
    }
    for what in ["waiting", "episodes"] {
        m.inhibition.with_label_values(&[what]);
    }
}

/// What every term of a dispatcher works with.
struct Shared {
    config: Config,
    d: Arc<Dispatcher>,
    client: async_nats::Client,
    js: jetstream::Context,
    ledger: Ledger,
    at_risk: kv::Store,
    senders: Arc<super::deliver::Senders>,
    clock: Arc<Clock>,
    /// This process, as its claims name it.
    by: String,
}

/// Sends while this process holds the lease: until `stop` (the process
/// stops, or the lease is lost). Holds, groups and rate limits live as long
/// as the term; what it leaves unacknowledged comes back to the next holder.
async fn serve(s: &Shared, mut stop: watch::Receiver<bool>, reload: &mut watch::Receiver<u64>, stats: &mut Stats) {
    let Shared { config, d, client, js, ledger, at_risk, senders, clock, by } = s;
    // Unbounded: the loop blocks on a full worker, never on this, so the workers
    // always drain; what it holds is bounded by the consumer's ack_pending.
    let (admitted_tx, mut admitted) = mpsc::unbounded_channel::<Admitted>();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(worker(rx, d.clone(), ledger.clone(), at_risk.clone(), admitted_tx.clone(), stop.clone()));
            tx
        })
        .collect();
    drop(admitted_tx);
    let hasher = RandomState::new();
    let mut inhibitor = d.inhibitor::<Waiting>();
    let routing = d.routing();
    let subjects = inhibitor.subjects();
    let Some(kept) = retrying(&stop, "reading the open episodes", || episodes(js, config, &subjects)).await else {
        return;
    };
    kept.iter().for_each(|n| inhibitor.observe(n));
    let Some(mut messages) = retrying(&stop, "opening the alerts consumer", || open(js, config, d)).await else {
        return;
    };
    let mut hold = Hold::new(d.quiet, chrono::Duration::milliseconds(d.config.limits.group_window.0));
    let mut sending = Sending::new(senders.clone(), ledger.clone(), by, &d.config.limits, stop.clone());
    // Alerts being admitted or sent, by stream sequence: a redelivery of one
    // (an acknowledgement wait that ran out meanwhile) is not taken twice.
    let mut pending: HashMap<u64, Option<Pending>> = HashMap::new();
    let sl = &d.config.service_level;
    let mut level = ServiceLevel {
        threshold: std_duration(sl.threshold),
        interval: std_duration(sl.interval),
        since: Instant::now(),
        within: 0,
        total: 0,
    };
    let keep_alive = std_duration(d.config.ack_wait) / 3;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut stopping = *stop.borrow();
    loop {
        if stopping && sending.in_flight() == 0 {
            break;
        }
        tokio::select! {
            message = messages.next(), if !stopping => {
                let message = match message {
                    Some(Ok(m)) => m,
                    failed => {
                        if let Some(Err(e)) = failed {
                            tracing::warn!(error = %e, "alerts consumer; reopening");
                        }
                        match retrying(&stop, "reopening the alerts consumer", || open(js, config, d)).await {
                            Some(reopened) => messages = reopened,
                            None => stopping = true,
                        }
                        continue;
                    }
                };
                let Ok(info) = message.info() else { continue };
                let seq = info.stream_sequence;
                if pending.contains_key(&seq) {
                    continue;
                }
                stats.alerts += 1;
                let notice = match Notice::decode(&message.payload) {
                    Ok(n) => Arc::new(n),
                    Err(reason) => {
                        // It stays in the alerts stream; nothing here can make it valid.
                        tracing::warn!(seq, %reason, "not an alert; skipped");
                        stats.count(&stages::INVALID);
                        let _ = message.ack_with(AckKind::Term).await;
                        continue;
                    }
                };
                pending.insert(seq, None);
                let t = now(clock);
                for (firing, w) in inhibitor.withdraw(&notice) {
                    if unsent(client, ledger, &stop, stats, stages::taken_back(&firing, &routing), t).await {
                        pending.remove(&w.seq);
                        acknowledge(w.message);
                    }
                }
                let waiting = Waiting { seq, received: Instant::now(), message, alive: Instant::now() };
                if let Some((notice, w)) = inhibitor.offer(notice, waiting, t) {
                    stopping |= !to_worker(&workers, &hasher, notice, w).await;
                }
            }
            Some(a) = admitted.recv(), if !stopping => {
                for outcome in a.news {
                    publish(client, &a.notice, outcome, stats, now(clock)).await;
                }
                let withdrawn = stages::withdrawn(&mut hold, &a.notice);
                let seqs: Vec<u64> = withdrawn.iter().map(|(d, _)| d.seq).collect();
                if unsent(client, ledger, &stop, stats, withdrawn, now(clock)).await {
                    seqs.into_iter().for_each(|seq| finish(&mut pending, seq));
                }
                if a.drafts.is_empty() {
                    pending.remove(&a.seq);
                    acknowledge(a.message);
                    continue;
                }
                // End to end from what made the alert (its header), else from the alert itself.
                let arrived = crate::nats::wire::arrived(a.message.headers.as_ref())
                    .or_else(|| a.message.info().ok().map(|i| i.published.into()))
                    .unwrap_or_else(SystemTime::now);
                let (remaining, t) = (a.drafts.len(), now(clock));
                let waiting = stages::offer(&mut hold, &mut sending, a.drafts, t);
                stats.held += waiting;
                let held = waiting > 0;
                let received = a.received;
                let p = Pending { message: a.message, remaining, alive: Instant::now(), received, arrived, held, told: false };
                pending.insert(a.seq, Some(p));
            }
            Some(Done { batch, ending, took }) = sending.next() => {
                if matches!(ending, Ending::Sent { .. }) {
                    if let Some(Some(p)) = pending.get_mut(&batch.primary.seq) {
                        let since = SystemTime::now().duration_since(p.arrived).unwrap_or_default();
                        METRICS.event_to_accepted.with_label_values(&[batch.primary.target.channel()]).observe(since.as_secs_f64());
                        if !std::mem::replace(&mut p.told, true) {
                            level.told(if p.held { took } else { p.received.elapsed() });
                        }
                    }
                }
                for (draft, outcome) in stages::outcomes(&batch, &ending) {
                    publish(client, &draft.notice, outcome, stats, now(clock)).await;
                }
                // A draft whose fallback goes in its place keeps its alert unacknowledged.
                let next = stages::fallbacks(&batch, &ending);
                if !matches!(ending, Ending::Interrupted) {
                    for draft in batch.drafts().filter(|d| next.is_empty() || d.fallback.is_none()) {
                        finish(&mut pending, draft.seq);
                    }
                }
                stats.held += stages::offer(&mut hold, &mut sending, next, now(clock));
            }
            Ok(()) = reload.changed() => reload_templates(config, d, senders),
            _ = tick.tick() => {
                let t = now(clock);
                for (notice, w) in inhibitor.due(t) {
                    stopping |= !to_worker(&workers, &hasher, notice, w).await;
                }
                for w in inhibitor.items_mut() {
                    keep(&w.message, &mut w.alive, keep_alive).await;
                }
                stats.inhibited = inhibitor.replaced;
                METRICS.inhibition.with_label_values(&["waiting"]).set(inhibitor.len() as i64);
                METRICS.inhibition.with_label_values(&["episodes"]).set(inhibitor.episodes() as i64);
                // Stopping, or the lease lost: what is held comes back to the next holder.
                if !stopping {
                    for batch in hold.due(t) {
                        sending.start(batch, t);
                    }
                }
                for p in pending.values_mut().flatten() {
                    keep(&p.message, &mut p.alive, keep_alive).await;
                }
                stats.holding = hold.len() as u64;
                METRICS.held.set(hold.len() as i64);
                level.tick();
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
            }
        }
    }
}

/// One admission worker: keeps the at-risk list in step, routes, and asks the
/// ledger what is still to send; waits out a NATS outage rather than drop
/// an alert. Alerts left when stopping stay unacknowledged and come back.
async fn worker(
    mut alerts: mpsc::Receiver<ToWorker>,
    d: Arc<Dispatcher>,
    ledger: Ledger,
    at_risk: kv::Store,
    admitted: mpsc::UnboundedSender<Admitted>,
    stop: watch::Receiver<bool>,
) {
    let routing = d.routing();
    while let Some((seq, received, message, notice)) = alerts.recv().await {
        if retrying(&stop, "at-risk list update", || digest::track(&at_risk, &notice)).await.is_none() {
            return;
        }
        let admission = retrying(&stop, "idempotency lookup", || stages::admit(&notice, &routing, &ledger)).await;
        let Some((mut drafts, news)) = admission else {
            return;
        };
        for draft in &mut drafts {
            draft.seq = seq;
        }
        if admitted.send(Admitted { seq, received, message, notice, drafts, news }).is_err() {
            return;
        }
    }
}

/// An alert to its admission worker, chosen by its id; false when the workers are gone (stopping).
async fn to_worker(workers: &[mpsc::Sender<ToWorker>], hasher: &RandomState, notice: Arc<Notice>, w: Waiting) -> bool {
    let worker = hasher.hash_one(&notice.alert_id) as usize % WORKERS;
    workers[worker].send((w.seq, w.received, w.message, notice)).await.is_ok()
}

/// Records and publishes the outcomes of messages that end here unsent (a
/// resolution took them back), before their alerts are acknowledged, so a
/// redelivery is never sent either; false when stopping came first: their
/// alerts stay unacknowledged.
async fn unsent(
    client: &async_nats::Client,
    ledger: &Ledger,
    stop: &watch::Receiver<bool>,
    stats: &mut Stats,
    ended: Vec<(Draft, Outcome)>,
    at: DateTime<Utc>,
) -> bool {
    for (draft, outcome) in ended {
        if !record_outcome(ledger, &draft, &outcome, at, stop).await {
            return false;
        }
        publish(client, &draft.notice, outcome, stats, at).await;
    }
    true
}

/// Keeps an alert held here from being redelivered: a progress
/// acknowledgement once `every` has passed since the last.
async fn keep(message: &jetstream::Message, alive: &mut Instant, every: Duration) {
    if alive.elapsed() >= every {
        let _ = message.ack_with(AckKind::Progress).await;
        *alive = Instant::now();
    }
}

/// Acknowledges in the background, so the loop never waits for the reply.
fn acknowledge(message: jetstream::Message) {
    tokio::spawn(async move {
        if let Err(e) = message.double_ack().await {
            tracing::warn!(error = %e, "alert acknowledgement not confirmed; it may come back and be dropped as sent");
        }
    });
}

fn finish(pending: &mut HashMap<u64, Option<Pending>>, seq: u64) {
    let Some(Some(p)) = pending.get_mut(&seq) else { return };
    p.remaining = p.remaining.saturating_sub(1);
    if p.remaining == 0 {
        if let Some(Some(p)) = pending.remove(&seq) {
            acknowledge(p.message);
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

/// Reads back the inhibiting rules' alerts kept in the alerts stream (on
/// `subjects`), oldest first, so a restart knows which episodes are open: a
/// short, unacknowledged read.
async fn episodes(js: &jetstream::Context, config: &Config, subjects: &[String]) -> Result<Vec<Notice>, LiveError> {
    let stream = js.get_stream(&config.streams.alerts.name).await.map_err(|e| LiveError::nats("stream lookup", e))?;
    let mut kept = Vec::new();
    for subject in subjects {
        let config = pull::OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        let mut consumer = stream.create_consumer(config).await.map_err(|e| LiveError::nats("episodes read", e))?;
        if consumer.info().await.map_err(|e| LiveError::nats("episodes read", e))?.num_pending == 0 {
            continue;
        }
        let mut messages = consumer.messages().await.map_err(|e| LiveError::nats("episodes read", e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| LiveError::nats("episodes read", e))?;
            kept.extend(Notice::decode(&message.payload));
            if message.info().map_err(|e| LiveError::nats("episodes read", e))?.pending == 0 {
                break;
            }
        }
    }
    Ok(kept)
}

/// The alerts consumer, recreated just after the server's acknowledgement
/// floor so that everything not acknowledged comes back at once (the ledger
/// drops what was sent) instead of after the acknowledgement wait.
async fn open(js: &jetstream::Context, config: &Config, d: &Dispatcher) -> Result<pull::Stream, LiveError> {
    let name = &config.streams.alerts.name;
    let stream = js.get_stream(name).await.map_err(|e| LiveError::nats("stream lookup", e))?;
    let durable = format!("{}-dispatch", config.instance);
    let floor = match stream.consumer_info(&durable).await {
        Ok(info) => info.ack_floor.stream_sequence,
        Err(_) => 0,
    };
    let _ = stream.delete_consumer(&durable).await;
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
