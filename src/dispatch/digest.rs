//! The daily list of each branch's at-risk parcels: open parcel alerts are
//! kept by branch in a key-value bucket (put on firing, removed on
//! resolution, expiring after `digest.max_age`), and once a day at the
//! configured local time each branch gets them as a CSV attachment. A
//! branch with none that day gets no mail: the ledger records the day's
//! digest as skipped (`no_at_risk_parcels`), so it is decided once a day.
//! Each day's digest of a branch is claimed in the ledger before it is
//! made (a KV `Create`), so of several dispatchers, or across restarts,
//! exactly one sends it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::channel::email::Mail;
use super::deliver::Senders;
use super::ledger::{entries, slot, token, Claim, Ledger, Recorded};
use super::notice::Notice;
use super::template::Context;
use crate::clock::Clock;

/// One at-risk parcel as the digest lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub parcel_id: String,
    pub rule: String,
    pub since: DateTime<Utc>,
    pub last_scan_at: Option<DateTime<Utc>>,
    pub facility: Option<String>,
}

/// Keeps the at-risk bucket in step with one alert.
pub async fn track(store: &kv::Store, n: &Notice) -> Result<(), String> {
    let (Some(branch), Some(parcel)) = (&n.branch, &n.parcel_id) else { return Ok(()) };
    let key = format!("{}.{}", token(branch), n.alert_id);
    if n.resolved {
        return store.purge(&key).await.map_err(|e| e.to_string());
    }
    let row = Row {
        parcel_id: parcel.clone(),
        rule: n.rule.clone(),
        since: n.at,
        last_scan_at: n.last_scan_at,
        facility: n.facility.clone(),
    };
    let bytes = serde_json::to_vec(&row).map_err(|e| e.to_string())?;
    store.put(&key, bytes.into()).await.map(|_| ()).map_err(|e| e.to_string())
}

/// At most this many rows a branch: beyond, the digest says it is cut short.
pub const MAX_ROWS: u64 = 100_000;

/// The branch's rows with their alert ids, oldest first (then by alert id), and whether there
/// were more than [`MAX_ROWS`].
pub async fn rows(store: &kv::Store, branch: &str) -> Result<(Vec<(String, Row)>, bool), String> {
    let (found, more) = entries(store, &format!("{}.*", token(branch)), MAX_ROWS).await?;
    let mut out: Vec<(String, Row)> = found
        .into_iter()
        .filter_map(|(key, bytes)| {
            let alert = key.rsplit_once('.').map(|(_, a)| a.to_string())?;
            serde_json::from_slice::<Row>(&bytes).ok().map(|row| (alert, row))
        })
        .collect();
    out.sort_by(|(a, x), (b, y)| (x.since, a).cmp(&(y.since, b)));
    Ok((out, more))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The CSV attachment: one header line, one line per parcel, times in the branch's zone.
pub fn csv(rows: &[Row], tz: Tz) -> String {
    let time = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    let mut out = String::from("tracking_number,rule,since,last_scan,facility\r\n");
    for r in rows {
        let fields = [
            csv_field(&r.parcel_id),
            csv_field(&r.rule),
            time(r.since),
            r.last_scan_at.map(time).unwrap_or_default(),
            csv_field(r.facility.as_deref().unwrap_or("")),
        ];
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Every `check` interval: each branch past its digest time today that has
/// not had today's digest gets it.
pub async fn run(
    senders: Arc<Senders>,
    store: kv::Store,
    ledger: Ledger,
    at: NaiveTime,
    clock: Arc<Clock>,
    check: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Some(now) = clock.now() {
            let now = DateTime::<Utc>::from_timestamp_millis(now.0).unwrap_or_default();
            for (code, branch) in senders.directory.iter() {
                let Some(email) = &branch.email else { continue };
                let tz: Tz = branch.tz.parse().unwrap_or(Tz::UTC);
                let local = now.with_timezone(&tz);
                if local.time() < at {
                    continue;
                }
                let date = local.format("%Y-%m-%d").to_string();
                let key = format!("digest.{}.{date}", token(code));
                let record = slot(None, &key);
                let intent = serde_json::json!({
                    "outcome": "intent", "channel": "email", "audience": "branch", "branch": code,
                    "digest": date, "at": now.to_rfc3339(),
                });
                match ledger.claim(&record, intent.to_string().into()).await {
                    Ok(Claim::Ours) => {}
                    Ok(Claim::Theirs) => {
                        let by = "another dispatcher, or this one before a restart";
                        tracing::info!(branch = %code, digest = %date, by, "daily digest already claimed");
                        continue;
                    }
                    Ok(Claim::Known) => continue,
                    Err(e) => {
                        tracing::warn!(branch = %code, error = %e, "daily digest not claimed; will try again");
                        continue;
                    }
                }
                let (outcome, recorded, count) = match send(&senders, &store, code, email, tz, &date, &key).await {
                    Ok(Some(count)) => {
                        tracing::info!(branch = %code, parcels = count, "daily digest sent");
                        ("sent", Recorded::Sent, count)
                    }
                    Ok(None) => {
                        tracing::info!(branch = %code, "no daily digest: no at-risk parcels");
                        ("skipped", Recorded::Final("no_at_risk_parcels".into()), 0)
                    }
                    Err(e) => {
                        tracing::warn!(branch = %code, error = %e, "daily digest not sent; will try again");
                        if let Err(e) = ledger.release(&record).await {
                            tracing::warn!(branch = %code, error = %e, "daily digest claim not released");
                        }
                        continue;
                    }
                };
                let mut body = serde_json::json!({
                    "outcome": outcome, "channel": "email", "audience": "branch", "branch": code,
                    "digest": date, "parcels": count, "at": now.to_rfc3339(),
                });
                if let Recorded::Final(reason) = &recorded {
                    body["reason"] = serde_json::json!(reason);
                }
                if let Err(e) = ledger.record(&record, recorded, body.to_string().into()).await {
                    tracing::warn!(branch = %code, error = %e, "digest outcome not recorded");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(check) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn send(
    senders: &Senders,
    store: &kv::Store,
    code: &str,
    email: &str,
    tz: Tz,
    date: &str,
    key: &str,
) -> Result<Option<usize>, String> {
    let (rows, more) = rows(store, code).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    if more {
        tracing::warn!(branch = %code, listed = rows.len(), "digest cut short: more at-risk parcels than it lists");
    }
    let rows: Vec<Row> = rows.into_iter().map(|(_, row)| row).collect();
    let branch = senders.directory.get(code);
    let ctx = Context {
        rule: "digest".into(),
        state: "firing".into(),
        severity: "info".into(),
        name: branch.map(|b| b.name.clone()),
        branch_code: Some(code.to_string()),
        branch_name: branch.map(|b| b.name.clone()),
        count: Some(rows.len() as u32),
        date: Some(date.to_string()),
        ..Context::default()
    };
    let templates = senders.templates();
    let locale = templates.locale(branch.map(|b| b.locale.as_str())).to_string();
    let content = templates.email(&locale, "branch/digest", &ctx)?;
    let mail = Mail {
        to_name: ctx.name.clone(),
        to: email.to_string(),
        content,
        unsubscribe: None,
        attachment: Some((format!("at-risk-{code}-{date}.csv"), csv(&rows, tz).into_bytes())),
        key: key.to_string(),
    };
    senders.mailer.send(&mail).await.map_err(|f| f.reason().to_string())?;
    Ok(Some(rows.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_quotes_what_needs_it_and_shows_local_times() {
        let t = DateTime::parse_from_rfc3339("2026-11-20T07:30:00Z").unwrap().with_timezone(&Utc);
        let rows = [Row {
            parcel_id: "P1".into(),
            rule: "late".into(),
            since: t,
            last_scan_at: Some(t),
            facility: Some("Hub, \"north\"".into()),
        }];
        let paris: Tz = "Europe/Paris".parse().unwrap();
        expect_test::expect![[r#"
            tracking_number,rule,since,last_scan,facility
            P1,late,2026-11-20 08:30,2026-11-20 08:30,"Hub, ""north"""
        "#]]
        .assert_eq(&csv(&rows, paris).replace("\r\n", "\n"));
    }
}
