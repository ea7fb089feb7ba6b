//! The last stages: render a message in the recipient's language, send it
//! on its channel, and retry transient failures with exponential backoff
//! and full jitter (never sooner than a server's `Retry-After`) until it
//! goes, fails for good, or `give_up_after` passes.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rand::Rng;
use serde_json::json;
use tokio::sync::{watch, Semaphore};

use super::branches::Directory;
use super::channel::email::{Mail, Mailer};
use super::channel::sms::{Gateway, Text};
use super::channel::webhook::Webhooks;
use super::channel::{append_line, Failure};
use super::ledger::token;
use super::notice::Notice;
use super::route::{Draft, Target};
use super::segments;
use super::template::{BranchView, Context, Expected, Templates};
use crate::config::dispatch::{Links, Retry};
use crate::config::std_duration;

/// How one message ended.
#[derive(Debug)]
pub enum Ending {
    Sent {
        attempts: u32,
    },
    Failed {
        reason: String,
        attempts: u32,
    },
    /// Over a rate limit: final, nothing sent.
    RateLimited,
    /// Stopping: not final; the alert stays unacknowledged and comes back.
    Interrupted,
    /// Claimed by another dispatcher, or by an earlier run: not sent here,
    /// and its outcome is the claimer's to record.
    Elsewhere,
}

/// Everything needed to turn a draft into a sent message.
pub struct Senders {
    /// Replaced whole on SIGHUP when the new ones pass the checks.
    pub templates: RwLock<Arc<Templates>>,
    pub directory: Arc<Directory>,
    pub links: Links,
    pub mailer: Mailer,
    pub sms: Gateway,
    pub max_segments: u32,
    pub webhooks: Webhooks,
    pub crm: String,
    /// Branch warnings on NATS; without a connection (backtests), `nats.jsonl` in the outbox.
    pub nats: Option<async_nats::Client>,
    pub outbox: std::path::PathBuf,
    pub retry: Retry,
    pub permits: Arc<Semaphore>,
}

fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string()
}

/// The expected arrival between `from` and `to` as the recipient reads it:
/// in `tz`, with day and month names in `locale`'s language (English when
/// chrono has none for it).
pub fn expected((from, to): (DateTime<Utc>, DateTime<Utc>), tz: Tz, locale: &str) -> Expected {
    let (from, to) = (from.with_timezone(&tz), to.with_timezone(&tz));
    let midnight = |t: &DateTime<Tz>| t.time() == chrono::NaiveTime::MIN;
    // Whole days end at the midnight after the last one.
    let whole = midnight(&from) && midnight(&to) && to > from;
    let last = if whole { to - chrono::Duration::milliseconds(1) } else { to };
    let language = locale.split(['-', '_']).next().unwrap_or("en");
    let (chrono_locale, long, short) = match language {
        "fr" => (chrono::Locale::fr_FR, "%A %-d %B", "%a %-d/%m"),
        "zh" => (chrono::Locale::zh_CN, "%-m月%-d日（%A）", "%-m月%-d日"),
        "de" => (chrono::Locale::de_DE, "%A, %-d. %B", "%a, %-d. %b"),
        "es" => (chrono::Locale::es_ES, "%A %-d de %B", "%a %-d %b"),
        _ => (chrono::Locale::en_GB, "%A %-d %B", "%a %-d %b"),
    };
    let day = |t: &DateTime<Tz>, pattern: &str| t.format_localized(pattern, chrono_locale).to_string();
    let kind = match (whole, from.date_naive() == last.date_naive()) {
        (false, true) => "hours",
        (true, true) => "day",
        _ => "days",
    };
    Expected {
        kind,
        day: day(&from, long),
        last_day: day(&last, long),
        short_day: day(&from, short),
        short_last_day: day(&last, short),
        from: from.format("%H:%M").to_string(),
        to: to.format("%H:%M").to_string(),
    }
}

/// A link with `{parcel}` and `{alert}` filled in.
pub fn link(template: &str, parcel: &str, alert: &str) -> Option<String> {
    if template.is_empty() {
        return None;
    }
    Some(template.replace("{parcel}", &url_encode(parcel)).replace("{alert}", alert))
}

/// `text` percent-encoded for a URL: unreserved characters kept, every other byte `%XX`.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The template a customer's message about `rule` is rendered from.
pub fn customer_template(rule: &str, resolved: bool) -> String {
    if resolved {
        "customer/resolved".into()
    } else {
        format!("customer/{rule}")
    }
}

/// The template variables for alert `n` to a customer (`customer`) or a
/// branch, its instants in `tz` (and its dates in the language of the
/// templates' `locale`), its branch from `directory`, its links from `links`.
pub fn context(n: &Notice, tz: Tz, locale: &str, customer: bool, directory: &Directory, links: &Links) -> Context {
    let parcel = n.parcel_id.clone();
    let url = |t: &str| parcel.as_deref().and_then(|p| link(t, p, &n.alert_id));
    let branch = n.branch.as_deref().and_then(|b| directory.get(b));
    Context {
        rule: n.rule.clone(),
        state: n.state().into(),
        severity: n.severity.as_str().into(),
        name: if customer { n.recipient.as_ref().and_then(|r| r.name.clone()) } else { branch.map(|b| b.name.clone()) },
        parcel_state: n.parcel_state.clone(),
        reason: n.reason.clone(),
        facility: n.facility.clone(),
        country: n.country.clone(),
        at: local(n.at, tz),
        promised_by: n.promised_by.map(|t| local(t, tz)),
        return_by: n.return_by.map(|t| local(t, tz)),
        last_scan_at: n.last_scan_at.map(|t| local(t, tz)),
        expected: n.expected.map(|range| expected(range, tz, locale)),
        tracking_url: url(&links.tracking),
        reschedule_url: url(&links.reschedule),
        claim_url: url(&links.claim),
        unsubscribe_url: if customer { url(&links.unsubscribe) } else { None },
        branch: branch.map(|b| BranchView { name: b.name.clone(), address: b.address.clone(), hours: b.hours.clone() }),
        branch_code: n.branch.clone(),
        branch_name: branch.map(|b| b.name.clone()),
        count: n.count,
        window: n.window.clone(),
        usual: n.usual,
        usual_from: n.usual_from.clone(),
        volume: n.volume,
        date: None,
        parcel,
    }
}

impl Senders {
    /// The templates in force.
    pub fn templates(&self) -> Arc<Templates> {
        Arc::clone(&self.templates.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Puts checked templates in force for the messages rendered from now on.
    pub fn replace_templates(&self, templates: Templates) {
        *self.templates.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(templates);
    }

    /// The template variables for one draft, rendered with `locale`'s templates.
    pub fn context(&self, n: &Notice, tz: Tz, locale: &str, customer: bool) -> Context {
        context(n, tz, locale, customer, &self.directory, &self.links)
    }

    /// The JSON machines get (webhooks, NATS, the CRM): the alert as the
    /// engine wrote it ([`crate::alert::Line`]). Recipient contact details
    /// only for the CRM, which opens the claim in their name, with the link
    /// to the claim.
    pub fn machine_body(&self, n: &Notice, with_recipient: bool) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            #[serde(flatten)]
            alert: crate::alert::Line<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            claim_url: Option<String>,
        }
        let mut alert = n.line();
        if !with_recipient {
            alert.recipient = None;
        }
        let claim_url = with_recipient
            .then(|| n.parcel_id.as_deref().and_then(|p| link(&self.links.claim, p, &n.alert_id)))
            .flatten();
        serde_json::to_vec(&Body { alert, claim_url }).unwrap_or_default()
    }

    fn template_name(draft: &Draft) -> String {
        let n = &draft.notice;
        match draft.target {
            Target::CustomerSms { .. } | Target::CustomerEmail { .. } => customer_template(&n.rule, n.resolved),
            _ => "branch/warning".into(),
        }
    }

    /// One attempt.
    async fn send_once(&self, draft: &Draft) -> Result<(), Failure> {
        let n = &draft.notice;
        let templates = self.templates();
        let locale = templates.locale(draft.locale.as_deref()).to_string();
        let customer = draft.target.audience() == "customer";
        let name = Self::template_name(draft);
        match &draft.target {
            Target::CustomerSms { phone } | Target::BranchSms { phone } => {
                let ctx = self.context(n, draft.tz, &locale, customer);
                let body = templates.sms(&locale, &name, &ctx).map_err(Failure::permanent)?;
                let body = segments::cap(&body, self.max_segments);
                self.sms.send(&Text { to: phone.clone(), body, key: draft.key.clone() }).await
            }
            Target::CustomerEmail { email } | Target::BranchEmail { email } | Target::OpsEmail { email } => {
                let ctx = self.context(n, draft.tz, &locale, customer);
                let content = templates.email(&locale, &name, &ctx).map_err(Failure::permanent)?;
                let mail = Mail {
                    to_name: ctx.name.clone(),
                    to: email.clone(),
                    unsubscribe: ctx.unsubscribe_url.clone(),
                    content,
                    attachment: None,
                    key: draft.key.clone(),
                };
                self.mailer.send(&mail).await
            }
            Target::BranchWebhook { url } | Target::OpsWebhook { url } => {
                self.webhooks.post(url, &draft.key, self.machine_body(n, false)).await
            }
            Target::Claim => self.webhooks.post(&self.crm, &draft.key, self.machine_body(n, true)).await,
            Target::BranchNats => {
                let subject = format!("branch.warnings.{}", token(n.branch.as_deref().unwrap_or("unknown")));
                let Some(client) = &self.nats else {
                    // A backtest: the outbox shows what would have been published.
                    let body = String::from_utf8_lossy(&self.machine_body(n, false)).into_owned();
                    let line = format!("{{\"subject\":{},\"body\":{body}}}", json!(subject));
                    return append_line(&self.outbox.join("nats.jsonl"), line.as_bytes());
                };
                client
                    .publish(subject, self.machine_body(n, false).into())
                    .await
                    .map_err(|e| Failure::transient(format!("NATS publish: {e}")))?;
                client.flush().await.map_err(|e| Failure::transient(format!("NATS flush: {e}")))
            }
        }
    }

    /// Sends with retries until a final outcome, or until `stop`. `claim`
    /// runs once, holding the first attempt's permit, just before the first
    /// request: a message claimed is a message on its way (a claim taken
    /// while queued would read `unknown` after a crash though never sent).
    /// Its answer: ours to send (`Some(true)`), another's (`Some(false)`),
    /// or stopped first (`None`).
    pub async fn deliver(
        &self,
        draft: &Draft,
        stop: &mut watch::Receiver<bool>,
        claim: impl Future<Output = Option<bool>>,
    ) -> Ending {
        let started = Instant::now();
        let give_up = std_duration(self.retry.give_up_after);
        let mut claim = Some(claim);
        let mut attempts = 0u32;
        loop {
            if *stop.borrow() {
                return Ending::Interrupted;
            }
            attempts += 1;
            let result = {
                // A message queued for a permit when the dispatcher stops is
                // not sent: its alert stays unacknowledged and comes back.
                let permit = tokio::select! {
                    permit = self.permits.acquire() => permit,
                    _ = stop.changed() => return Ending::Interrupted,
                };
                let Ok(_permit) = permit else { return Ending::Interrupted };
                if *stop.borrow() {
                    return Ending::Interrupted;
                }
                if let Some(claim) = claim.take() {
                    match claim.await {
                        Some(true) => {}
                        Some(false) => return Ending::Elsewhere,
                        None => return Ending::Interrupted,
                    }
                }
                self.send_once(draft).await
            };
            let wait = match result {
                Ok(()) => return Ending::Sent { attempts },
                Err(Failure::Permanent { reason }) => return Ending::Failed { reason, attempts },
                Err(Failure::Transient { reason, retry_after }) => {
                    if started.elapsed() >= give_up {
                        return Ending::Failed {
                            reason: format!("gave up after {attempts} attempts: {reason}"),
                            attempts,
                        };
                    }
                    tracing::debug!(key = %draft.key, attempts, %reason, "transient failure; retrying");
                    backoff(&self.retry, attempts, retry_after)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return Ending::Interrupted,
            }
        }
    }
}

/// Full jitter: uniform in `[0, min(max, initial · 2^(attempt-1))]`, and
/// never less than `Retry-After`.
pub fn backoff(retry: &Retry, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let initial = std_duration(retry.initial).max(Duration::from_millis(1));
    let ceiling = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(std_duration(retry.max));
    let jittered = ceiling.mul_f64(rand::thread_rng().gen_range(0.0..=1.0));
    jittered.max(retry_after.unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Span;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let retry = Retry { initial: Span(100), max: Span(1_000), give_up_after: Span(60_000) };
        for attempt in 1..30 {
            let cap = Duration::from_millis((100u64 << (attempt - 1).min(20)).min(1_000));
            assert!(backoff(&retry, attempt, None) <= cap);
        }
        assert!(backoff(&retry, 1, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
    }

    #[test]
    fn links_encode_the_tracking_number() {
        assert_eq!(link("https://t.example/{parcel}", "A B/1", "x").unwrap(), "https://t.example/A%20B%2F1");
        assert_eq!(link("", "P", "x"), None);
    }

    #[test]
    fn the_expected_arrival_reads_in_the_recipient_s_zone_and_language() {
        let utc = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // A range within a Paris day: its hours.
        let hours = expected((utc("2026-11-19T09:00:00Z"), utc("2026-11-19T17:00:00Z")), paris, "fr-FR");
        assert_eq!(
            (hours.kind, hours.day.as_str(), hours.from.as_str(), hours.to.as_str()),
            ("hours", "jeudi 19 novembre", "10:00", "18:00")
        );
        assert_eq!(hours.short_day, "jeu. 19/11");
        // The midnights around one Paris day: that day, whole.
        let day = expected((utc("2026-11-19T23:00:00Z"), utc("2026-11-20T23:00:00Z")), paris, "en-GB");
        assert_eq!(
            (day.kind, day.day.as_str(), day.last_day.as_str()),
            ("day", "Friday 20 November", "Friday 20 November")
        );
        // Around two Shanghai days, in Chinese; an unknown language reads English.
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        let days = expected((utc("2026-11-18T16:00:00Z"), utc("2026-11-20T16:00:00Z")), shanghai, "zh-CN");
        assert_eq!(
            (days.kind, days.day.as_str(), days.last_day.as_str()),
            ("days", "11月19日（星期四）", "11月20日（星期五）")
        );
        assert_eq!(
            expected((utc("2026-11-19T09:00:00Z"), utc("2026-11-19T17:00:00Z")), paris, "xx").day,
            "Thursday 19 November"
        );
        // The same range told in another zone than the engine's days: still true.
        let elsewhere = expected((utc("2026-11-19T23:00:00Z"), utc("2026-11-20T23:00:00Z")), Tz::UTC, "en");
        assert_eq!((elsewhere.kind, elsewhere.from.as_str(), elsewhere.to.as_str()), ("days", "23:00", "23:00"));
    }
}
