//! `forewarn replay --dispatch`: a backtest that really sends. The replay's
//! alerts go, in order, through the same stages as live (routing, ledger,
//! quiet hours and grouping, rate limits, templates, channels, retries),
//! with each alert's own event time as the clock, so quiet hours and
//! grouping act as they would have. The ledger is in memory: a backtest
//! sends each message once per run. Messages still held when the alerts end
//! are released (time moves on) rather than dropped. Alerts a facility's
//! episode may speak for wait for it in event time, as live in wall time.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::hold::Hold;
use super::ledger::Ledger;
use super::notice::Notice;
use super::outcome::{Outcome, Stats};
use super::route::{Draft, Routing};
use super::sending::{record_outcome, Done, Sending};
use super::{stages, Dispatcher};
use crate::nats::LiveError;

/// Sends the notifications of `alerts` (JSON Lines, as `replay` writes
/// them); returns what was done.
pub async fn run(d: Dispatcher, alerts: &[u8]) -> Result<Stats, LiveError> {
    let (_stop_tx, stop) = watch::channel(false);
    let ledger = Ledger::new(None, d.config.dedup.cache);
    let senders = Arc::new(d.senders(None)?);
    let mut inhibitor = d.inhibitor::<()>();
    let mut b = Backtest {
        routing: d.routing(),
        hold: Hold::new(d.quiet, chrono::Duration::milliseconds(d.config.limits.group_window.0)),
        sending: Sending::new(senders, ledger.clone(), "replay", &d.config.limits, stop.clone()),
        stop,
        ledger,
        stats: Stats::default(),
        most_in_flight: d.config.concurrency.max(1) * 4,
    };
    let mut now = DateTime::<Utc>::MIN_UTC;
    for line in alerts.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        b.stats.alerts += 1;
        let notice = match Notice::decode(line) {
            Ok(n) => Arc::new(n),
            Err(reason) => {
                tracing::warn!(%reason, "not an alert; skipped");
                b.stats.count(&stages::INVALID);
                continue;
            }
        };
        // The branch stage's alerts come when its watermark passes: time never goes back.
        now = now.max(notice.at);
        for (ready, ()) in inhibitor.due(now) {
            b.admit(ready, now).await?;
        }
        for (firing, ()) in inhibitor.withdraw(&notice) {
            b.take_back(&firing, now).await;
        }
        if let Some((ready, ())) = inhibitor.offer(notice, (), now) {
            b.admit(ready, now).await?;
        }
    }
    for (ready, ()) in inhibitor.drain() {
        b.admit(ready, now).await?;
    }
    b.stats.inhibited = inhibitor.replaced;
    // What is held goes now; a fallback may be offered, and held, meanwhile.
    while !(b.hold.is_empty() && b.sending.in_flight() == 0) {
        release(&mut b.hold, &mut b.sending, DateTime::<Utc>::MAX_UTC);
        if let Some(done) = b.sending.next().await {
            b.finished(done);
        }
    }
    Ok(b.stats)
}

/// The stages after inhibition, as live.
struct Backtest<'a> {
    routing: Routing<'a>,
    ledger: Ledger,
    hold: Hold,
    sending: Sending,
    stats: Stats,
    most_in_flight: usize,
    /// Never set: a backtest runs to the end.
    stop: watch::Receiver<bool>,
}

impl Backtest<'_> {
    /// Routes one alert at `now`, asks the ledger, holds or starts its messages.
    async fn admit(&mut self, notice: Arc<Notice>, now: DateTime<Utc>) -> Result<(), LiveError> {
        release(&mut self.hold, &mut self.sending, now);
        if notice.resolved {
            // A resolution asks whether its firing was sent: let every send end first.
            while let Some(done) = self.sending.next().await {
                self.finished(done);
            }
            let withdrawn = stages::withdrawn(&mut self.hold, &notice);
            self.record(withdrawn, now).await;
        }
        let (wanted, news) = stages::admit(&notice, &self.routing, &self.ledger).await?;
        for outcome in &news {
            self.stats.count(outcome);
        }
        self.stats.held += stages::offer(&mut self.hold, &mut self.sending, wanted, now);
        while self.sending.in_flight() > self.most_in_flight {
            if let Some(done) = self.sending.next().await {
                self.finished(done);
            }
        }
        Ok(())
    }
}

/// Starts what is due at `now`, each at its own due time (for the rate limits).
fn release(hold: &mut Hold, sending: &mut Sending, now: DateTime<Utc>) {
    for batch in hold.due(now) {
        let due = batch.due;
        sending.start(batch, due);
    }
}

impl Backtest<'_> {
    /// The messages of `firing`, which its resolution took back while it
    /// waited for an episode, recorded as such.
    async fn take_back(&mut self, firing: &Arc<Notice>, now: DateTime<Utc>) {
        let taken = stages::taken_back(firing, &self.routing);
        self.record(taken, now).await;
    }

    /// Records and counts messages that end here, unsent.
    async fn record(&mut self, ended: Vec<(Draft, Outcome)>, now: DateTime<Utc>) {
        for (draft, outcome) in ended {
            record_outcome(&self.ledger, &draft, &outcome, now, &self.stop).await;
            self.stats.count(&outcome);
        }
    }

    /// Counts a finished message's outcomes and offers its fallbacks, at the
    /// time it went.
    fn finished(&mut self, Done { batch, ending, .. }: Done) {
        for (_, outcome) in stages::outcomes(&batch, &ending) {
            self.stats.count(&outcome);
        }
        let next = stages::fallbacks(&batch, &ending);
        self.stats.held += stages::offer(&mut self.hold, &mut self.sending, next, batch.due);
    }
}
