//! The stage chain after inhibition, written once for both drivers:
//! [`admit`] (route an alert into drafts, ask the ledger which are still to
//! send), [`offer`] (hold them for quiet hours and grouping, or start
//! them), [`outcomes`] (what a finished batch says, failures logged),
//! [`fallbacks`] (what goes by the customer's next channel when it failed)
//! and [`withdrawn`] and [`taken_back`] (what a resolution takes back before
//! it was sent).
//! [`super::run`] drives it from the alerts stream, in admission workers and
//! wall time; [`super::backtest`] from a replay's alerts, in order and in
//! their own event time.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::deliver::Ending;
use super::hold::{Batch, Hold};
use super::ledger::Ledger;
use super::notice::Notice;
use super::outcome::Outcome;
use super::route::{route, Draft, Routing, Skip};
use super::sending::Sending;
use crate::nats::LiveError;

/// What an alert that cannot be read counts as.
pub const INVALID: Outcome = Outcome::Skipped { audience: "any", channel: "any", reason: "invalid_alert" };

/// The messages an alert asks for that the ledger has not seen final, and
/// the outcomes of the others that are news: skipped (and why), or unknown
/// (claimed by a sender that stopped mid-send).
pub async fn admit(
    notice: &Arc<Notice>,
    routing: &Routing<'_>,
    ledger: &Ledger,
) -> Result<(Vec<Draft>, Vec<Outcome>), LiveError> {
    let (drafts, skips) = route(notice, routing);
    let (wanted, news) = ledger.admit(&drafts).await?;
    Ok((wanted, skips.iter().map(Outcome::from_skip).chain(news).collect()))
}

/// Holds each draft that must wait (quiet hours, grouping) and starts the
/// others at `now`; returns how many wait.
pub fn offer(hold: &mut Hold, sending: &mut Sending, drafts: Vec<Draft>, now: DateTime<Utc>) -> u64 {
    let mut waiting = 0;
    for draft in drafts {
        match hold.offer(draft, now) {
            Some(batch) => sending.start(batch, now),
            None => waiting += 1,
        }
    }
    waiting
}

/// The outcome of each message of a finished batch; failures are logged.
pub fn outcomes<'b>(batch: &'b Batch, ending: &Ending) -> Vec<(&'b Draft, Outcome)> {
    let outcomes = Outcome::of_batch(batch, ending);
    for (_, outcome) in &outcomes {
        if let Outcome::Failed { reason, .. } = outcome {
            tracing::warn!(key = %batch.primary.key, %reason, "message failed");
        }
    }
    outcomes
}

/// What goes by the customer's next channel because `batch` failed for
/// good: the fallback of each of its drafts, to offer as new drafts of the
/// same alerts (quiet hours, grouping and rate limits apply to them too).
pub fn fallbacks(batch: &Batch, ending: &Ending) -> Vec<Draft> {
    if !matches!(ending, Ending::Failed { .. }) {
        return Vec::new();
    }
    let next: Vec<Draft> =
        batch.drafts().filter_map(|d| d.fallback.as_deref().map(|f| Draft { seq: d.seq, ..f.clone() })).collect();
    for draft in &next {
        tracing::info!(key = %draft.key, instead_of = ?draft.instead_of, "the customer's channel failed; trying the next");
    }
    next
}

/// The held drafts of `notice`'s firing when `notice` is its resolution:
/// taken out of `hold` and never sent ("your parcel is late" to a customer
/// whose parcel came during the night), each with its outcome, skipped
/// `resolved_first`, for the driver to record before it acknowledges the
/// firing.
pub fn withdrawn(hold: &mut Hold, notice: &Notice) -> Vec<(Draft, Outcome)> {
    if !notice.resolved {
        return Vec::new();
    }
    let withdrawn = hold.withdraw(&notice.alert_id);
    if !withdrawn.is_empty() {
        let (alert, count) = (&notice.alert_id, withdrawn.len());
        tracing::info!(%alert, count, "resolved while held: its messages are not sent");
    }
    withdrawn.into_iter().map(resolved_first).collect()
}

/// The messages `firing` would have had, taken back by its resolution
/// before they were routed (the firing waited for an episode), each with
/// its outcome, skipped `resolved_first`, for the driver to record before it
/// acknowledges the firing: a redelivery of it is then never sent.
pub fn taken_back(firing: &Arc<Notice>, routing: &Routing<'_>) -> Vec<(Draft, Outcome)> {
    tracing::info!(alert = %firing.alert_id, "resolved while waiting for an episode: not sent");
    route(firing, routing).0.into_iter().map(resolved_first).collect()
}

fn resolved_first(d: Draft) -> (Draft, Outcome) {
    let skip = Skip { audience: d.target.audience(), channel: d.target.channel(), reason: "resolved_first" };
    (d, Outcome::from_skip(&skip))
}
