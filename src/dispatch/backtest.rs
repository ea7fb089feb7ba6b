//! `forewarn replay --dispatch`: a backtest that really sends. The replay's
//! alerts go, in order, through the same stages as live (routing, ledger,
//! quiet hours and grouping, rate limits, templates, channels, retries),
//! with each alert's own event time as the clock, so quiet hours and
//! grouping act as they would have. The ledger is in memory: a backtest
//! sends each message once per run. Messages still held when the alerts end
//! are released (time moves on) rather than dropped.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::hold::Hold;
use super::ledger::Ledger;
use super::notice::Notice;
use super::outcome::{Outcome, Stats};
use super::route::route;
use super::sending::{Done, Sending};
use super::Dispatcher;
use crate::live::LiveError;

/// Sends the notifications of `alerts` (JSON Lines, as `replay` writes
/// them); returns what was done.
pub async fn run(d: Dispatcher, alerts: &[u8]) -> Result<Stats, LiveError> {
    let (_stop_tx, stop) = watch::channel(false);
    let ledger = Ledger::new(None, d.config.dedup.cache);
    let senders = Arc::new(d.senders(None)?);
    let routing = d.routing();
    let mut hold = Hold::new(d.quiet, chrono::Duration::milliseconds(d.config.limits.group_window.0));
    let mut sending = Sending::new(senders, ledger.clone(), &d.config.limits, stop);
    let mut stats = Stats::default();
    let most_in_flight = d.config.concurrency.max(1) * 4;
    for line in alerts.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        stats.alerts += 1;
        let notice = match Notice::decode(line) {
            Ok(n) => Arc::new(n),
            Err(reason) => {
                tracing::warn!(%reason, "not an alert; skipped");
                stats.count(&Outcome::Skipped { audience: "any", channel: "any", reason: "invalid_alert" });
                continue;
            }
        };
        let now = notice.at;
        release(&mut hold, &mut sending, now);
        let (drafts, skips) = route(&notice, &routing);
        for s in &skips {
            stats.count(&Outcome::from_skip(s));
        }
        if drafts.iter().any(|d| d.told.is_some()) {
            // A resolution asks whether its firing was sent: let every send end first.
            while let Some(done) = sending.next().await {
                count(&mut stats, done);
            }
        }
        let (wanted, not_told) = ledger.admit(&drafts).await?;
        for s in &not_told {
            stats.count(&Outcome::from_skip(s));
        }
        for draft in wanted {
            match hold.offer(draft, now) {
                Some(batch) => sending.start(batch, now),
                None => stats.held += 1,
            }
        }
        while sending.in_flight() > most_in_flight {
            if let Some(done) = sending.next().await {
                count(&mut stats, done);
            }
        }
    }
    release(&mut hold, &mut sending, DateTime::<Utc>::MAX_UTC);
    while let Some(done) = sending.next().await {
        count(&mut stats, done);
    }
    Ok(stats)
}

/// Starts what is due at `now`, each at its own due time (for the rate limits).
fn release(hold: &mut Hold, sending: &mut Sending, now: DateTime<Utc>) {
    for batch in hold.due(now) {
        let due = batch.due;
        sending.start(batch, due);
    }
}

fn count(stats: &mut Stats, Done { batch, ending, .. }: Done) {
    for (_, outcome) in Outcome::of_batch(&batch, &ending) {
        if let Outcome::Failed { reason, .. } = &outcome {
            tracing::warn!(key = %batch.primary.key, %reason, "message failed");
        }
        stats.count(&outcome);
    }
}
