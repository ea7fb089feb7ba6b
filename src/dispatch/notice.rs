//! An alert as the dispatcher reads it back from the alerts stream (or a
//! replay's output): the engine's own wire type ([`crate::alert::Line`]),
//! decoded into owned, validated fields.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use crate::alert::{Line, RecipientLine};
use crate::rules::{Audience, Severity};
use crate::time::Ts;

/// Who the alert is for and how to reach them, from `label_created`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recipient {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub locale: Option<String>,
    pub tz: Option<String>,
    /// The customer's choice; `None`: not said (every channel we can reach).
    pub channels: Option<Vec<String>>,
}

/// One alert, ready for the policy stages.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// 32 hex digits.
    pub alert_id: String,
    pub rule: String,
    pub resolved: bool,
    pub at: DateTime<Utc>,
    pub severity: Severity,
    pub audience: Audience,
    pub any_hour: Audience,
    pub parcel_id: Option<String>,
    pub branch: Option<String>,
    pub parcel_state: Option<String>,
    /// The kind and id of the scan that fired an event rule.
    pub kind: Option<String>,
    pub event_id: Option<String>,
    pub reason: Option<String>,
    pub facility: Option<String>,
    pub country: Option<String>,
    pub service: Option<String>,
    pub promised_by: Option<DateTime<Utc>>,
    pub return_by: Option<DateTime<Utc>>,
    pub last_scan_at: Option<DateTime<Utc>>,
    /// When the parcel is expected to arrive: from, to.
    pub expected: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// A revised estimate: the alert whose estimate it revises.
    pub revises: Option<String>,
    pub recipient: Option<Recipient>,
    /// Branch-wide alerts: hits, window, the usual count and the volume.
    pub count: Option<u32>,
    pub window: Option<String>,
    pub usual: Option<f64>,
    /// `own` or `floor`: see [`Line::usual_from`].
    pub usual_from: Option<String>,
    pub volume: Option<u32>,
    /// A facility's alert: the branches of the parcels it counted.
    pub branches: Vec<String>,
}

fn instant(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| format!("{field}: {e}"))
}

fn optional(field: &str, text: Option<Cow<'_, str>>) -> Result<Option<DateTime<Utc>>, String> {
    text.map(|t| instant(field, &t)).transpose()
}

fn owned(text: Option<Cow<'_, str>>) -> Option<String> {
    text.map(Cow::into_owned)
}

fn borrowed(text: &Option<String>) -> Option<Cow<'_, str>> {
    text.as_deref().map(Cow::Borrowed)
}

impl From<RecipientLine<'_>> for Recipient {
    fn from(r: RecipientLine<'_>) -> Recipient {
        Recipient {
            name: owned(r.name),
            phone: owned(r.phone),
            email: owned(r.email),
            locale: owned(r.locale),
            tz: owned(r.tz),
            channels: r.channels.map(|c| c.into_iter().map(Cow::into_owned).collect()),
        }
    }
}

fn audience(field: &str, names: &[Cow<'_, str>]) -> Result<Audience, String> {
    names.iter().try_fold(Audience::default(), |a, n| {
        Audience::parse(n).map(|x| a.with(x)).ok_or_else(|| format!("{field}: unknown audience {n:?}"))
    })
}

impl Notice {
    /// Decodes one alert; the error names the field.
    pub fn decode(bytes: &[u8]) -> Result<Notice, String> {
        let line: Line<'_> = serde_json::from_slice(bytes).map_err(|e| format!("not an alert: {e}"))?;
        let id = |field: &str, id: &str| match id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            true => Ok(()),
            false => Err(format!("{field}: {id:?} is not 32 hex digits")),
        };
        id("alert_id", &line.alert_id)?;
        if let Some(revises) = &line.revises {
            id("revises", revises)?;
        }
        let resolved = match &*line.state {
            "firing" => false,
            "resolved" => true,
            other => return Err(format!("state: {other:?} is neither firing nor resolved")),
        };
        Ok(Notice {
            alert_id: line.alert_id.into_owned(),
            rule: line.rule.into_owned(),
            resolved,
            at: instant("at", &line.at)?,
            severity: Severity::parse(&line.severity)
                .ok_or_else(|| format!("severity: unknown severity {:?}", line.severity))?,
            audience: audience("audience", &line.audience)?,
            any_hour: audience("any_hour", &line.any_hour)?,
            parcel_id: owned(line.parcel_id),
            branch: owned(line.branch),
            parcel_state: owned(line.parcel_state),
            kind: owned(line.kind),
            event_id: owned(line.event_id),
            reason: owned(line.reason),
            facility: owned(line.facility),
            country: owned(line.country),
            service: owned(line.service),
            promised_by: optional("promised_by", line.promised_by)?,
            return_by: optional("return_by", line.return_by)?,
            last_scan_at: optional("last_scan_at", line.last_scan_at)?,
            expected: match (optional("expected_from", line.expected_from)?, optional("expected_to", line.expected_to)?)
            {
                (Some(from), Some(to)) if from <= to => Some((from, to)),
                (None, None) => None,
                (Some(_), Some(_)) => return Err("expected_to: before expected_from".into()),
                (Some(_), None) => return Err("expected_to: missing, with expected_from given".into()),
                (None, Some(_)) => return Err("expected_from: missing, with expected_to given".into()),
            },
            revises: owned(line.revises),
            recipient: line.recipient.map(Recipient::from),
            count: line.count,
            window: owned(line.window),
            usual: line.usual,
            usual_from: owned(line.usual_from),
            volume: line.volume,
            branches: line.branches.unwrap_or_default().into_iter().map(Cow::into_owned).collect(),
        })
    }

    /// The alert's wire form again, as the engine wrote it (machines —
    /// webhooks, NATS, the CRM — get it so).
    pub fn line(&self) -> Line<'_> {
        let text = |t: DateTime<Utc>| Cow::Owned(Ts(t.timestamp_millis()).text().to_string());
        let names = |a: Audience| a.names().map(Cow::Borrowed).collect();
        Line {
            alert_id: Cow::Borrowed(&self.alert_id),
            rule: Cow::Borrowed(&self.rule),
            state: Cow::Borrowed(self.state()),
            at: text(self.at),
            severity: Cow::Borrowed(self.severity.as_str()),
            audience: names(self.audience),
            any_hour: names(self.any_hour),
            parcel_id: borrowed(&self.parcel_id),
            branch: borrowed(&self.branch),
            parcel_state: borrowed(&self.parcel_state),
            kind: borrowed(&self.kind),
            event_id: borrowed(&self.event_id),
            reason: borrowed(&self.reason),
            facility: borrowed(&self.facility),
            country: borrowed(&self.country),
            service: borrowed(&self.service),
            promised_by: self.promised_by.map(text),
            return_by: self.return_by.map(text),
            last_scan_at: self.last_scan_at.map(text),
            expected_from: self.expected.map(|(from, _)| text(from)),
            expected_to: self.expected.map(|(_, to)| text(to)),
            revises: borrowed(&self.revises),
            locale: self.recipient.as_ref().and_then(|r| borrowed(&r.locale)),
            recipient: self.recipient.as_ref().map(|r| RecipientLine {
                name: borrowed(&r.name),
                phone: borrowed(&r.phone),
                email: borrowed(&r.email),
                locale: borrowed(&r.locale),
                tz: borrowed(&r.tz),
                channels: r.channels.as_ref().map(|c| c.iter().map(|x| Cow::Borrowed(x.as_str())).collect()),
            }),
            count: self.count,
            window: borrowed(&self.window),
            usual: self.usual,
            usual_from: borrowed(&self.usual_from),
            volume: self.volume,
            branches: (!self.branches.is_empty())
                .then(|| self.branches.iter().map(|b| Cow::Borrowed(b.as_str())).collect()),
        }
    }

    pub fn state(&self) -> &'static str {
        if self.resolved {
            "resolved"
        } else {
            "firing"
        }
    }
}
