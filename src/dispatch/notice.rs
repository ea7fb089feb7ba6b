//! An alert as the dispatcher reads it back from the alerts stream (or a
//! replay's output): the JSON line of [`crate::alert`], decoded into owned,
//! validated fields. The only place that knows that wire format on the way in.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::rules::{Audience, Severity};

/// Who the alert is for and how to reach them, from `label_created`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Recipient {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub locale: Option<String>,
    pub tz: Option<String>,
    /// The customer's choice; `None`: not said (every channel we can reach).
    pub channels: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Line {
    alert_id: String,
    rule: String,
    state: String,
    at: String,
    severity: String,
    audience: Vec<String>,
    #[serde(default)]
    any_hour: Vec<String>,
    parcel_id: Option<String>,
    branch: Option<String>,
    parcel_state: Option<String>,
    kind: Option<String>,
    reason: Option<String>,
    facility: Option<String>,
    country: Option<String>,
    service: Option<String>,
    promised_by: Option<String>,
    return_by: Option<String>,
    last_scan_at: Option<String>,
    recipient: Option<Recipient>,
    count: Option<u32>,
    window: Option<String>,
    usual: Option<f64>,
    volume: Option<u32>,
    #[serde(default)]
    branches: Vec<String>,
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
    /// The kind of the scan that fired an event rule.
    pub kind: Option<String>,
    pub reason: Option<String>,
    pub facility: Option<String>,
    pub country: Option<String>,
    pub service: Option<String>,
    pub promised_by: Option<DateTime<Utc>>,
    pub return_by: Option<DateTime<Utc>>,
    pub last_scan_at: Option<DateTime<Utc>>,
    pub recipient: Option<Recipient>,
    /// Branch-wide alerts: hits, window, the usual count and the volume.
    pub count: Option<u32>,
    pub window: Option<String>,
    pub usual: Option<f64>,
    pub volume: Option<u32>,
    /// A facility's alert: the branches of the parcels it counted.
    pub branches: Vec<String>,
}

fn instant(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| format!("{field}: {e}"))
}

fn optional(field: &str, text: Option<String>) -> Result<Option<DateTime<Utc>>, String> {
    text.map(|t| instant(field, &t)).transpose()
}

fn audience(field: &str, names: &[String]) -> Result<Audience, String> {
    names.iter().try_fold(Audience::default(), |a, n| {
        Audience::parse(n).map(|x| a.with(x)).ok_or_else(|| format!("{field}: unknown audience {n:?}"))
    })
}

impl Notice {
    /// Decodes one alert; the error names the field.
    pub fn decode(bytes: &[u8]) -> Result<Notice, String> {
        let line: Line = serde_json::from_slice(bytes).map_err(|e| format!("not an alert: {e}"))?;
        if line.alert_id.len() != 32 || !line.alert_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("alert_id: {:?} is not 32 hex digits", line.alert_id));
        }
        let resolved = match line.state.as_str() {
            "firing" => false,
            "resolved" => true,
            other => return Err(format!("state: {other:?} is neither firing nor resolved")),
        };
        Ok(Notice {
            alert_id: line.alert_id,
            rule: line.rule,
            resolved,
            at: instant("at", &line.at)?,
            severity: Severity::parse(&line.severity)
                .ok_or_else(|| format!("severity: unknown severity {:?}", line.severity))?,
            audience: audience("audience", &line.audience)?,
            any_hour: audience("any_hour", &line.any_hour)?,
            parcel_id: line.parcel_id,
            branch: line.branch,
            parcel_state: line.parcel_state,
            kind: line.kind,
            reason: line.reason,
            facility: line.facility,
            country: line.country,
            service: line.service,
            promised_by: optional("promised_by", line.promised_by)?,
            return_by: optional("return_by", line.return_by)?,
            last_scan_at: optional("last_scan_at", line.last_scan_at)?,
            recipient: line.recipient,
            count: line.count,
            window: line.window,
            usual: line.usual,
            volume: line.volume,
            branches: line.branches,
        })
    }

    pub fn state(&self) -> &'static str {
        if self.resolved {
            "resolved"
        } else {
            "firing"
        }
    }
}
