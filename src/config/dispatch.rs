//! The dispatcher's part of `forewarn.toml` (`[dispatch]`): where messages
//! go, the policy (quiet hours, limits, grouping), retries and the links the
//! messages carry. Secrets are not fields: SMTP, SMS gateway and webhook
//! credentials come from the environment or files named here.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::time::Span;

fn span<'de, D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
    let text = String::deserialize(d)?;
    Span::parse(&text).map_err(serde::de::Error::custom)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dispatch {
    /// Where messages go when no SMTP server or SMS gateway is configured:
    /// `email/<id>.eml`, `sms.jsonl`, `webhooks.jsonl`.
    pub outbox: PathBuf,
    /// The branch directory; empty: `<rules>/branches.toml`.
    pub branches: PathBuf,
    /// The templates; empty: `<rules>/templates`.
    pub templates: PathBuf,
    /// The locale when the recipient has none, or none that is served.
    pub default_locale: String,
    /// The time zone when the recipient has none (IANA name).
    pub default_tz: String,
    /// Messages being sent at once (SMTP, gateway and webhook requests together).
    pub concurrency: usize,
    /// How long the alerts stream waits for an acknowledgement before
    /// redelivering; alerts held longer (quiet hours) are kept alive.
    #[serde(deserialize_with = "span")]
    pub ack_wait: Span,
    /// Alerts delivered and not yet acknowledged (held for quiet hours,
    /// grouping or retries): the bound on the dispatcher's work in hand.
    pub max_ack_pending: i64,
    /// Customer alerts an episode may speak for (a rule's `inhibits`: a stall
    /// at a hub) wait this long for one to open; then they go on, or one
    /// regional-delay message per parcel goes instead. 0: no wait.
    #[serde(deserialize_with = "span")]
    pub inhibit_wait: Span,
    pub links: Links,
    pub email: Email,
    pub sms: Sms,
    pub webhooks: Webhooks,
    pub quiet_hours: QuietHours,
    pub limits: Limits,
    pub retry: Retry,
    pub dedup: Dedup,
    pub failover: Failover,
    pub digest: Digest,
    pub ops: Ops,
    pub service_level: ServiceLevel,
    /// The share of parcels (0 to 0.5) whose customers hear nothing, to
    /// measure what the messages change ([`crate::holdout`]): their
    /// messages are recorded skipped, `holdout`; branches, ops and the CRM
    /// hear of every parcel. 0: off.
    pub holdout: f64,
    /// Which of a customer's channels carry a message.
    pub customer_channels: CustomerChannels,
}

/// Which of a customer's channels carry a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CustomerChannels {
    /// Every channel the customer chose (every one they can be reached on
    /// when they chose none).
    #[default]
    All,
    /// One: the first the customer chose that they can be reached on (SMS,
    /// then email, when they chose none). When it fails for good (an
    /// invalid number, a gateway's 4xx, retries given up), the message goes
    /// once by the next, recorded `instead_of` the first.
    First,
}

impl Default for Dispatch {
    fn default() -> Self {
        Dispatch {
            outbox: "outbox".into(),
            branches: PathBuf::new(),
            templates: PathBuf::new(),
            default_locale: "en".into(),
            default_tz: "UTC".into(),
            concurrency: 256,
            ack_wait: Span(30_000),
            max_ack_pending: 100_000,
            inhibit_wait: Span::minutes(10),
            links: Links::default(),
            email: Email::default(),
            sms: Sms::default(),
            webhooks: Webhooks::default(),
            quiet_hours: QuietHours::default(),
            limits: Limits::default(),
            retry: Retry::default(),
            dedup: Dedup::default(),
            failover: Failover::default(),
            digest: Digest::default(),
            ops: Ops::default(),
            service_level: ServiceLevel::default(),
            holdout: 0.0,
            customer_channels: CustomerChannels::All,
        }
    }
}

/// The service level as call centres measure it: the share of alerts whose
/// first message was accepted within `threshold` of becoming sendable
/// (waits for quiet hours or grouping are by design and not counted).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceLevel {
    #[serde(deserialize_with = "span")]
    pub threshold: Span,
    /// The interval the `forewarn_service_level_ratio` gauge covers.
    #[serde(deserialize_with = "span")]
    pub interval: Span,
}

impl Default for ServiceLevel {
    fn default() -> Self {
        ServiceLevel { threshold: Span(60_000), interval: Span::minutes(5) }
    }
}

/// Links the messages carry; `{parcel}` is replaced by the tracking number
/// (URL-encoded), `{alert}` by the alert id.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Links {
    pub tracking: String,
    pub reschedule: String,
    pub claim: String,
    /// Customer mail carries it as `List-Unsubscribe`.
    pub unsubscribe: String,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            tracking: "https://track.example.com/{parcel}".into(),
            reschedule: "https://track.example.com/{parcel}/reschedule".into(),
            claim: "https://track.example.com/{parcel}/claim".into(),
            unsubscribe: "https://track.example.com/unsubscribe/{parcel}".into(),
        }
    }
}

/// Email over SMTP. The user name and password come from
/// `FOREWARN_SMTP_USER` and `FOREWARN_SMTP_PASSWORD`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Email {
    /// `smtp://host:port` (STARTTLS when offered; `?tls=required` insists),
    /// `smtps://host:port` (TLS from the start); empty: the outbox directory.
    pub smtp: String,
    /// `From:` of every message.
    pub from: String,
    /// Pooled SMTP connections.
    pub pool: u32,
    #[serde(deserialize_with = "span")]
    pub timeout: Span,
}

impl Default for Email {
    fn default() -> Self {
        Email {
            smtp: String::new(),
            from: "Parcel updates <noreply@example.com>".into(),
            pool: 16,
            timeout: Span(10_000),
        }
    }
}

/// Which HTTP gateway sends SMS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SmsProvider {
    /// Twilio's Messages API (account SID and auth token).
    Twilio,
    /// Our JSON webhook, signed with HMAC-SHA256.
    #[default]
    Webhook,
}

/// SMS through an HTTP gateway. Twilio: account SID `account`, auth token in
/// `FOREWARN_SMS_TOKEN`. Webhook: the body is signed with
/// `FOREWARN_SMS_SECRET` (HMAC-SHA256).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sms {
    /// The gateway's base URL; empty: the outbox directory.
    pub url: String,
    pub provider: SmsProvider,
    pub account: String,
    /// The sender number or name.
    pub from: String,
    /// Longer texts are cut to this many segments.
    pub max_segments: u32,
    #[serde(deserialize_with = "span")]
    pub timeout: Span,
}

impl Default for Sms {
    fn default() -> Self {
        Sms {
            url: String::new(),
            provider: SmsProvider::Webhook,
            account: String::new(),
            from: "+15550100000".into(),
            max_segments: 3,
            timeout: Span(10_000),
        }
    }
}

/// Outgoing webhooks (branches, the CRM), signed with HMAC-SHA256 of the
/// body using `FOREWARN_WEBHOOK_SECRET`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    /// `damaged` and `lost` open a claim here; empty: the outbox directory.
    pub crm: String,
    /// The rules that open a claim.
    pub claim_rules: Vec<String>,
    #[serde(deserialize_with = "span")]
    pub timeout: Span,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks { crm: String::new(), claim_rules: vec!["damaged".into(), "lost".into()], timeout: Span(10_000) }
    }
}

/// No message in the recipient's local night, unless the rule says any hour.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuietHours {
    /// Local `HH:MM` the quiet starts…
    pub start: String,
    /// …and ends; deferred messages go then.
    pub end: String,
}

impl Default for QuietHours {
    fn default() -> Self {
        QuietHours { start: "21:00".into(), end: "08:00".into() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Messages per parcel per channel in 24 h; more are dropped and counted.
    pub per_parcel: u32,
    /// Messages per recipient (phone or address) in 24 h.
    pub per_recipient: u32,
    /// Alerts for one parcel within this become one message (urgent ones go at once).
    #[serde(deserialize_with = "span")]
    pub group_window: Span,
    /// Parcels and recipients whose last 24 h are remembered for the limits;
    /// beyond, the least recently seen are forgotten (memory stays bounded).
    pub tracked: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { per_parcel: 4, per_recipient: 10, group_window: Span::minutes(2), tracked: 1_000_000 }
    }
}

/// Transient failures are retried with exponential backoff and full jitter.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    #[serde(deserialize_with = "span")]
    pub initial: Span,
    #[serde(deserialize_with = "span")]
    pub max: Span,
    /// After this long a message still failing is recorded as failed.
    #[serde(deserialize_with = "span")]
    pub give_up_after: Span,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { initial: Span(500), max: Span::minutes(5), give_up_after: Span::hours(24) }
    }
}

/// What was sent, so that an alert is sent once across restarts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dedup {
    /// The JetStream key-value bucket of outcomes.
    pub bucket: String,
    /// How long an outcome is remembered.
    #[serde(deserialize_with = "span")]
    pub max_age: Span,
    /// Outcomes kept in memory in front of the bucket.
    pub cache: u64,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup { bucket: "forewarn_sent".into(), max_age: Span::hours(24 * 30), cache: 1_000_000 }
    }
}

/// Several dispatchers started with the same `--instance`: one lease in a
/// key-value bucket names the one that sends; the others stand by.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Failover {
    /// The key-value bucket of the leases.
    pub bucket: String,
    /// A lease not renewed for this long is taken over by a standby (the
    /// holder renews it three times as often, and gives up sending first).
    #[serde(deserialize_with = "span")]
    pub lease: Span,
}

impl Default for Failover {
    fn default() -> Self {
        Failover { bucket: "forewarn_dispatch".into(), lease: Span(3_000) }
    }
}

/// The daily list of each branch's at-risk parcels.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Digest {
    /// Local `HH:MM` in the branch's time zone; empty: no digest.
    pub at: String,
    /// The key-value bucket of open parcel alerts by branch.
    pub bucket: String,
    /// An alert that never resolves leaves the list after this.
    #[serde(deserialize_with = "span")]
    pub max_age: Span,
}

impl Default for Digest {
    fn default() -> Self {
        Digest { at: "07:00".into(), bucket: "forewarn_at_risk".into(), max_age: Span::hours(24 * 7) }
    }
}

/// Who hears of alerts addressed to ops.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ops {
    pub emails: Vec<String>,
    pub webhook: String,
}
