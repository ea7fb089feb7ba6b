//! Alerts: what the engine says, and their JSON Lines form.
//!
//! An alert is a fact about a parcel or a branch at an event time, with a
//! deterministic id (a hash of rule, subject and episode) so that a replay
//! says the same thing with the same id. The JSON written here is the body of
//! `forewarn replay` output lines and, later, of `alerts.*` messages.

use std::fmt;
use std::sync::Arc;

use std::borrow::Cow;

use xxhash_rust::xxh3::xxh3_128;

use crate::event::{Channels, Kind};
use crate::rules::{Audience, Severity};
use crate::time::{Span, Ts};

mod line;

pub use line::{Line, RecipientLine};

/// A deterministic alert id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlertId(pub u128);

impl AlertId {
    /// The id of the episode of `rule` about `subject` that began with `episode`.
    pub fn new(rule: &str, subject: &str, episode: &str) -> AlertId {
        let mut key = Vec::with_capacity(rule.len() + subject.len() + episode.len() + 2);
        for (i, part) in [rule, subject, episode].into_iter().enumerate() {
            if i > 0 {
                key.push(0);
            }
            key.extend_from_slice(part.as_bytes());
        }
        AlertId(xxh3_128(&key))
    }
}

impl AlertId {
    /// The id as 32 lower-case hex digits.
    pub fn hex(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[(self.0 >> (124 - 4 * i) & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&self.hex()).unwrap_or(""))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// The recipient as the notifications need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientFacts {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub locale: Option<Arc<str>>,
    pub tz: Option<Arc<str>>,
    pub channels: Option<Channels>,
}

/// The event that made an event rule fire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggerFacts {
    pub kind: Kind,
    pub event_id: String,
    pub reason: Option<String>,
}

/// What an alert about one parcel knows of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParcelFacts {
    pub parcel_id: String,
    pub state: Kind,
    pub facility: Option<Arc<str>>,
    pub country: Option<[u8; 2]>,
    pub service: Option<Arc<str>>,
    pub promised_by: Option<Ts>,
    pub return_by: Option<Ts>,
    pub last_scan_at: Option<Ts>,
    pub trigger: Option<TriggerFacts>,
    /// When the parcel is expected to arrive: between these two instants
    /// (a range, or the midnights around whole days; see `engine/expected.rs`).
    pub expected: Option<(Ts, Ts)>,
    /// A revised estimate: the alert whose estimate it revises.
    pub revises: Option<AlertId>,
    pub recipient: Option<RecipientFacts>,
}

/// What a branch-wide alert counted.
#[derive(Clone, Debug, PartialEq)]
pub struct BranchFacts {
    /// Hits in the window when the alert was decided.
    pub count: u32,
    pub window: Span,
    /// The hits the branch usually has in such a window, and where that came from.
    pub usual: Usual,
    /// The branch's parcels seen in the window (share thresholds).
    pub volume: Option<u32>,
    /// A facility's episode (`by = "facility"`): the facility, and the
    /// branches of the parcels it counted.
    pub facility: Option<Arc<str>>,
    pub branches: Vec<Arc<str>>,
}

/// The hits a place usually has in a branch rule's window, and where that
/// comes from: its own history, or while it has none of its own yet (a
/// branch seen for the first time, forewarn's first day) its peers'.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Usual {
    /// The place's own history.
    Own(f64),
    /// The network's hits per parcel in the window, for the place's volume:
    /// the other places of its facts partition (a fixed sample of the network).
    Network(f64),
    /// Neither is known: the rule's floor (`min_count`) alone judged.
    Floor,
}

impl Usual {
    pub fn value(self) -> Option<f64> {
        match self {
            Usual::Own(u) | Usual::Network(u) => Some(u),
            Usual::Floor => None,
        }
    }

    /// `own`, `network` or `floor`: the alert's `usual_from`.
    pub fn source(self) -> &'static str {
        match self {
            Usual::Own(_) => "own",
            Usual::Network(_) => "network",
            Usual::Floor => "floor",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub id: AlertId,
    pub rule: Arc<str>,
    pub state: AlertState,
    /// When the condition held (a timer rule's deadline) or stopped holding.
    pub at: Ts,
    pub severity: Severity,
    pub audience: Audience,
    /// The audiences to tell at any hour.
    pub any_hour: Audience,
    pub branch: Option<Arc<str>>,
    pub parcel: Option<ParcelFacts>,
    pub branch_facts: Option<BranchFacts>,
}

impl Alert {
    /// Appends the alert as one JSON line (with its newline) to `out`.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        let p = self.parcel.as_ref();
        let trigger = p.and_then(|p| p.trigger.as_ref());
        let recipient = p.and_then(|p| p.recipient.as_ref());
        let country = p.and_then(|p| p.country.as_ref()).and_then(|c| std::str::from_utf8(c).ok());
        let b = self.branch_facts.as_ref();
        let hex = self.id.hex();
        let (at, promised_by, return_by, last_scan_at) = (
            self.at.text(),
            p.and_then(|p| p.promised_by).map(Ts::text),
            p.and_then(|p| p.return_by).map(Ts::text),
            p.and_then(|p| p.last_scan_at).map(Ts::text),
        );
        let expected = p.and_then(|p| p.expected).map(|(from, to)| (from.text(), to.text()));
        let revises = p.and_then(|p| p.revises).map(AlertId::hex);
        let line = Line {
            alert_id: Cow::Borrowed(std::str::from_utf8(&hex).unwrap_or("")),
            rule: Cow::Borrowed(&self.rule),
            state: Cow::Borrowed(self.state.as_str()),
            at: Cow::Borrowed(&at),
            severity: Cow::Borrowed(self.severity.as_str()),
            audience: self.audience.names().map(Cow::Borrowed).collect(),
            any_hour: self.any_hour.names().map(Cow::Borrowed).collect(),
            parcel_id: p.map(|p| Cow::Borrowed(p.parcel_id.as_str())),
            branch: self.branch.as_deref().map(Cow::Borrowed),
            parcel_state: p.map(|p| Cow::Borrowed(p.state.as_str())),
            kind: trigger.map(|t| Cow::Borrowed(t.kind.as_str())),
            event_id: trigger.map(|t| Cow::Borrowed(t.event_id.as_str())),
            reason: trigger.and_then(|t| t.reason.as_deref()).map(Cow::Borrowed),
            facility: p
                .and_then(|p| p.facility.as_deref())
                .or(b.and_then(|b| b.facility.as_deref()))
                .map(Cow::Borrowed),
            country: country.map(Cow::Borrowed),
            service: p.and_then(|p| p.service.as_deref()).map(Cow::Borrowed),
            promised_by: promised_by.as_deref().map(Cow::Borrowed),
            return_by: return_by.as_deref().map(Cow::Borrowed),
            last_scan_at: last_scan_at.as_deref().map(Cow::Borrowed),
            expected_from: expected.as_ref().map(|(from, _)| Cow::Borrowed(&**from)),
            expected_to: expected.as_ref().map(|(_, to)| Cow::Borrowed(&**to)),
            revises: revises.as_ref().map(|hex| Cow::Borrowed(std::str::from_utf8(hex).unwrap_or(""))),
            locale: recipient.and_then(|r| r.locale.as_deref()).map(Cow::Borrowed),
            recipient: recipient.map(|r| RecipientLine {
                name: r.name.as_deref().map(Cow::Borrowed),
                phone: r.phone.as_deref().map(Cow::Borrowed),
                email: r.email.as_deref().map(Cow::Borrowed),
                locale: r.locale.as_deref().map(Cow::Borrowed),
                tz: r.tz.as_deref().map(Cow::Borrowed),
                channels: r.channels.map(|c| c.names().map(Cow::Borrowed).collect()),
            }),
            count: b.map(|b| b.count),
            window: b.map(|b| Cow::Owned(b.window.to_string())),
            usual: b.and_then(|b| b.usual.value()).map(|u| (u * 100.0).round() / 100.0),
            usual_from: b.map(|b| Cow::Borrowed(b.usual.source())),
            volume: b.and_then(|b| b.volume),
            branches: b
                .filter(|b| b.facility.is_some())
                .map(|b| b.branches.iter().map(|x| Cow::Borrowed(&**x)).collect()),
        };
        // Serialising plain strings and numbers into a Vec cannot fail.
        serde_json::to_writer(&mut *out, &line).expect("alert serialises");
        out.push(b'\n');
    }
}
