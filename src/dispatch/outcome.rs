//! Outcomes: how each message ended (sent, failed with a reason, skipped
//! with a reason), as the ledger records it, as `notify.outcomes.<channel>`
//! publishes it, and as the counters count it. No phone or address in any
//! of them: the recipient appears masked, and only in the published JSON.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::address::Masked;
use super::deliver::Ending;
use super::hold::Batch;
use super::ledger::Recorded;
use super::notice::Notice;
use super::route::{Draft, Skip};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent {
        audience: &'static str,
        channel: &'static str,
        attempts: u32,
        to: Option<String>,
        /// The customer's channel it went instead of ([`Draft::instead_of`]).
        instead_of: Option<&'static str>,
    },
    Failed {
        audience: &'static str,
        channel: &'static str,
        reason: String,
        attempts: u32,
        to: Option<String>,
        instead_of: Option<&'static str>,
    },
    Skipped {
        audience: &'static str,
        channel: &'static str,
        reason: &'static str,
    },
    /// Claimed and never answered: its sender stopped between the request
    /// and the answer. Never sent again.
    Unknown {
        audience: &'static str,
        channel: &'static str,
        reason: String,
        to: Option<String>,
    },
}

impl Outcome {
    /// The outcome of a send; `None` when it is not final (interrupted).
    pub fn of(draft: &Draft, ending: &Ending) -> Option<Outcome> {
        let (audience, channel) = (draft.target.audience(), draft.target.channel());
        let (to, instead_of) = (draft.target.contact().map(|c| Masked(c).to_string()), draft.instead_of);
        Some(match ending {
            Ending::Sent { attempts } => Outcome::Sent { audience, channel, attempts: *attempts, to, instead_of },
            Ending::Failed { reason, attempts } => {
                Outcome::Failed { audience, channel, reason: reason.clone(), attempts: *attempts, to, instead_of }
            }
            Ending::RateLimited => Outcome::Skipped { audience, channel, reason: "rate_limited" },
            Ending::Interrupted | Ending::Elsewhere => return None,
        })
    }

    /// `draft`, claimed and never answered, for `reason`.
    pub fn unknown(draft: &Draft, reason: String) -> Outcome {
        let to = draft.target.contact().map(|c| Masked(c).to_string());
        Outcome::Unknown { audience: draft.target.audience(), channel: draft.target.channel(), reason, to }
    }

    /// The ledger's claim on `draft` before it is sent: by whom, when.
    pub fn intent(draft: &Draft, by: &str, at: DateTime<Utc>) -> Vec<u8> {
        let body = json!({
            "outcome": "intent", "alert_id": draft.notice.alert_id, "audience": draft.target.audience(),
            "channel": draft.target.channel(), "by": by, "at": at.to_rfc3339(),
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Every outcome of a finished message, each with its draft: the
    /// message's own, and `grouped` for each draft it spoke for. None when
    /// it was interrupted.
    pub fn of_batch<'a>(batch: &'a Batch, ending: &Ending) -> Vec<(&'a Draft, Outcome)> {
        let Some(own) = Outcome::of(&batch.primary, ending) else { return Vec::new() };
        let grouped = batch.absorbed.iter().map(|a| {
            let skip = Skip { audience: a.target.audience(), channel: a.target.channel(), reason: "grouped" };
            (a, Outcome::from_skip(&skip))
        });
        grouped.chain(std::iter::once((&batch.primary, own))).collect()
    }

    pub fn from_skip(s: &Skip) -> Outcome {
        Outcome::Skipped { audience: s.audience, channel: s.channel, reason: s.reason }
    }

    pub fn channel(&self) -> &'static str {
        match self {
            Outcome::Sent { channel, .. }
            | Outcome::Failed { channel, .. }
            | Outcome::Skipped { channel, .. }
            | Outcome::Unknown { channel, .. } => channel,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Failed { .. } => "failed",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Unknown { .. } => "unknown",
        }
    }

    /// What the ledger keeps.
    pub fn recorded(&self) -> Recorded {
        match self {
            Outcome::Sent { .. } => Recorded::Sent,
            Outcome::Failed { .. } => Recorded::Final("failed".into()),
            Outcome::Skipped { reason, .. } => Recorded::Final((*reason).into()),
            Outcome::Unknown { .. } => Recorded::Final("unknown".into()),
        }
    }

    /// The `notify.outcomes.<channel>` message.
    pub fn json(&self, n: &Notice, at: DateTime<Utc>) -> Vec<u8> {
        let mut body = json!({
            "alert_id": n.alert_id, "rule": n.rule, "state": n.state(), "parcel_id": n.parcel_id,
            "branch": n.branch, "outcome": self.name(), "channel": self.channel(), "at": at.to_rfc3339(),
        });
        match self {
            Outcome::Sent { audience, attempts, to, instead_of, .. } => {
                body["audience"] = json!(audience);
                body["attempts"] = json!(attempts);
                body["to"] = json!(to);
                if let Some(first) = instead_of {
                    body["instead_of"] = json!(first);
                }
            }
            Outcome::Failed { audience, reason, attempts, to, instead_of, .. } => {
                body["audience"] = json!(audience);
                body["reason"] = json!(reason);
                body["attempts"] = json!(attempts);
                body["to"] = json!(to);
                if let Some(first) = instead_of {
                    body["instead_of"] = json!(first);
                }
            }
            Outcome::Unknown { audience, reason, to, .. } => {
                body["audience"] = json!(audience);
                body["reason"] = json!(reason);
                body["to"] = json!(to);
            }
            Outcome::Skipped { audience, reason, .. } => {
                body["audience"] = json!(audience);
                body["reason"] = json!(reason);
            }
        }
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// What the dispatcher did, by closed labels only.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub alerts: u64,
    /// Messages that had to wait (quiet hours, grouping).
    pub held: u64,
    /// Messages waiting now.
    pub holding: u64,
    /// Customer alerts a regional-delay message spoke for.
    pub inhibited: u64,
    /// (outcome, channel, reason) → count; reason is empty for sent,
    /// `fallback` for sent instead of the customer's first channel.
    pub outcomes: BTreeMap<(&'static str, &'static str, &'static str), u64>,
}

impl Stats {
    pub fn count(&mut self, outcome: &Outcome) {
        let reason = match outcome {
            Outcome::Skipped { reason, .. } => reason,
            Outcome::Failed { .. } => "failed",
            Outcome::Sent { instead_of: Some(_), .. } => "fallback",
            Outcome::Sent { .. } | Outcome::Unknown { .. } => "",
        };
        *self.outcomes.entry((outcome.name(), outcome.channel(), reason)).or_default() += 1;
        crate::metrics::METRICS.notifications.with_label_values(&[outcome.channel(), outcome.name(), reason]).inc();
    }

    /// Messages with this outcome name, all channels.
    pub fn total(&self, outcome: &str) -> u64 {
        self.outcomes.iter().filter(|((o, _, _), _)| *o == outcome).map(|(_, n)| n).sum()
    }
}
