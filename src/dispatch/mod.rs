//! Notifications: alerts in, messages out, each once, in the recipient's
//! language, at a decent hour.
//!
//! A pipeline of small named stages, in order:
//! [`notice`] (decode the alert) → [`route`] (who, on which channel;
//! preferences) → [`ledger`] (dedup: sent once, across restarts) →
//! [`hold`] (quiet hours, grouping, rate limits) → [`deliver`] (render with
//! [`template`], send on a [`channel`], retry) → [`outcome`] (record,
//! publish, count). [`stages`] writes the chain after inhibition once, and
//! [`sending`] runs the last stages in bounded concurrency, for both
//! drivers: [`run`] on NATS, [`backtest`] on a replay's alerts
//! (`replay --dispatch`). [`digest`] sends each branch its daily at-risk list.
//! [`lease`] lets several dispatchers run for safety: one sends, the others
//! stand by.
//!
//! The stages up to `hold` are pure (the clock is an argument); only
//! `deliver`, `ledger`, `sending`, `digest` and the drivers do IO.

pub mod address;
pub mod backtest;
pub mod branches;
pub mod channel;
pub mod deliver;
pub mod digest;
pub mod hold;
pub mod inhibit;
pub mod lease;
pub mod ledger;
pub mod notice;
pub mod outcome;
pub mod route;
pub mod run;
pub mod segments;
pub mod sending;
pub mod stages;
pub mod template;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::NaiveTime;
use chrono_tz::Tz;
use tokio::sync::Semaphore;

use crate::config::{std_duration, Config};
use crate::nats::LiveError;
use crate::rules::dir::RulesDir;
use crate::rules::RuleSet;
use branches::Directory;
use channel::email::Mailer;
use channel::sms::Gateway;
use channel::webhook::Webhooks;
use deliver::Senders;
use hold::Quiet;
use inhibit::Inhibitor;
use route::Routing;
use template::Templates;

/// Customer rules whose resolution is worth a follow-up ("it's delivered").
pub const FOLLOW_UP_RULES: &[&str] = &["stalled", "late", "customs_hold"];

/// The dispatcher's checked configuration and loaded data.
/// Why a dispatcher cannot start: a file or setting of its own, named.
/// `forewarn run` stops with it before it connects.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{}", .0.join("\n"))]
    Templates(Vec<String>),
    #[error("{0}")]
    Directory(String),
    #[error("{0}")]
    QuietHours(String),
    #[error("dispatch.default_tz {0:?} is not an IANA time zone")]
    TimeZone(String),
    #[error("dispatch.digest.at {0:?} is not a local time HH:MM (or empty: no digest)")]
    DigestAt(String),
    #[error(
        "dispatch.failover.lease {0} is under 1s: renewals a third of it apart would fail on any pause; \
         use 1s or more (3s takes over in about 3s)"
    )]
    Lease(crate::time::Span),
    #[error("rules: {0}")]
    Rules(String),
    #[error("{channel}: {reason}")]
    Channel { channel: &'static str, reason: String },
}

impl SetupError {
    fn channel(channel: &'static str) -> impl Fn(String) -> SetupError {
        move |reason| SetupError::Channel { channel, reason }
    }
}

impl From<SetupError> for LiveError {
    fn from(e: SetupError) -> LiveError {
        LiveError::config(e)
    }
}

pub struct Dispatcher {
    pub config: crate::config::Dispatch,
    pub templates: Arc<Templates>,
    pub directory: Arc<Directory>,
    pub quiet: Quiet,
    pub default_tz: Tz,
    pub digest_at: Option<NaiveTime>,
    /// The rule pack: which episodes speak for which customer alerts.
    pub rules: RuleSet,
}

impl Dispatcher {
    /// Loads templates and the branch directory and checks the settings;
    /// every error says which file or field.
    pub fn new(config: &Config) -> Result<Dispatcher, SetupError> {
        let d = config.dispatch.clone();
        let templates =
            Templates::load(&d.templates_dir(&config.rules), &d.default_locale).map_err(SetupError::Templates)?;
        let directory = Directory::load(&d.branches_file(&config.rules)).map_err(SetupError::Directory)?;
        let quiet = Quiet::parse(&d.quiet_hours.start, &d.quiet_hours.end).map_err(SetupError::QuietHours)?;
        let default_tz: Tz = d.default_tz.parse().map_err(|_| SetupError::TimeZone(d.default_tz.clone()))?;
        let digest_at = match d.digest.at.as_str() {
            "" => None,
            at => Some(NaiveTime::parse_from_str(at, "%H:%M").map_err(|_| SetupError::DigestAt(at.to_string()))?),
        };
        if d.failover.lease.0 < 1_000 {
            return Err(SetupError::Lease(d.failover.lease));
        }
        let rules = RulesDir::new(&config.rules).load().map_err(SetupError::Rules)?;
        Ok(Dispatcher {
            rules,
            config: d,
            templates: Arc::new(templates),
            directory: Arc::new(directory),
            quiet,
            default_tz,
            digest_at,
        })
    }

    /// Builds the channels once, to check them (a Twilio account, a secret
    /// file, a TLS setting) before anything starts: a mistake there stops
    /// the start, not the first message. Inside a tokio runtime (the SMTP
    /// transport needs one).
    pub fn check_channels(&self) -> Result<(), SetupError> {
        self.senders(None).map(drop)
    }

    /// The inhibition stage, from the rule pack and `inhibit_wait`.
    pub fn inhibitor<T>(&self) -> Inhibitor<T> {
        Inhibitor::new(&self.rules, chrono::Duration::milliseconds(self.config.inhibit_wait.0))
    }

    pub fn routing(&self) -> Routing<'_> {
        Routing {
            directory: &self.directory,
            claim_rules: &self.config.webhooks.claim_rules,
            ops_emails: &self.config.ops.emails,
            ops_webhook: &self.config.ops.webhook,
            default_tz: self.default_tz,
            follow_up_rules: FOLLOW_UP_RULES,
            holdout: self.config.holdout,
            customer_channels: self.config.customer_channels,
        }
    }

    /// The channels, from configuration and the environment.
    pub fn senders(&self, nats: Option<async_nats::Client>) -> Result<Senders, SetupError> {
        let c = &self.config;
        let outbox = c.outbox.clone();
        Ok(Senders {
            templates: std::sync::RwLock::new(self.templates.clone()),
            directory: self.directory.clone(),
            links: c.links.clone(),
            mailer: Mailer::new(&c.email, outbox.clone()).map_err(SetupError::channel("email"))?,
            sms: Gateway::new(&c.sms, outbox.clone()).map_err(SetupError::channel("sms"))?,
            max_segments: c.sms.max_segments,
            webhooks: Webhooks {
                client: channel::http_client(std_duration(c.webhooks.timeout))
                    .map_err(SetupError::channel("webhook"))?,
                secret: channel::secret("FOREWARN_WEBHOOK_SECRET").map_err(SetupError::channel("webhook"))?,
                outbox: outbox.clone(),
            },
            crm: c.webhooks.crm.clone(),
            nats,
            outbox: c.outbox.clone(),
            retry: c.retry.clone(),
            permits: Arc::new(Semaphore::new(c.concurrency.max(1))),
        })
    }
}

impl crate::config::Dispatch {
    pub fn templates_dir(&self, rules: &std::path::Path) -> PathBuf {
        if self.templates.as_os_str().is_empty() {
            rules.join("templates")
        } else {
            self.templates.clone()
        }
    }

    pub fn branches_file(&self, rules: &std::path::Path) -> PathBuf {
        if self.branches.as_os_str().is_empty() {
            rules.join("directory/branches.toml")
        } else {
            self.branches.clone()
        }
    }
}
