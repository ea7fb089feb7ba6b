//! The daily list of each branch's at-risk parcels: open parcel alerts are
//! kept by branch in a key-value bucket (put on firing, removed on
//! resolution, expiring after `digest.max_age`), and once a day at the
//! configured local time each branch gets them as a CSV attachment. Most
//! alerts never resolve (a failed attempt, a customs notice, a damage): a
//! row is listed only while its parcel is on its way, as the processors'
//! windows say ([`standing`]); the rows of parcels delivered, collected or
//! returned since, or gone from the window, end there. A
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
use crate::metrics::METRICS;

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

/// A parcel's at-risk rows end when the window says it is in one of these
/// states, or has left: it reached its recipient, or went back.
const ENDED: [&str; 4] = ["delivered", "collected", "returned", "closed"];
/// Tracking numbers asked about in one request.
const ASKED: usize = 1_000;
/// How long a partition's owner has to answer.
const ANSWER: Duration = Duration::from_secs(3);

/// At-risk rows sorted by where their parcels stand.
#[derive(Debug, Default)]
pub struct Standing {
    /// Parcels still on their way, or that no window could place: listed.
    pub open: Vec<(String, Row)>,
    /// Alert ids of rows whose parcel was delivered, collected or returned,
    /// or left the window.
    pub ended: Vec<String>,
    /// Requests no processor answered in time: their rows stay listed.
    pub unanswered: usize,
}

/// Asks the processors that own the rows' parcels (`partitions` of them,
/// by the parcel's partition, `ASKED` tracking numbers a request, all at
/// once) where each parcel stands, and sorts the rows, keeping their order.
pub async fn standing(client: &async_nats::Client, partitions: u16, rows: Vec<(String, Row)>) -> Standing {
    let mut by_partition: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
    for (i, (_, row)) in rows.iter().enumerate() {
        by_partition.entry(crate::partition::of(&row.parcel_id, partitions)).or_default().push(i);
    }
    let requests = by_partition.iter().flat_map(|(&p, rows)| rows.chunks(ASKED).map(move |chunk| (p, chunk)));
    let asked = futures::future::join_all(requests.map(|(p, chunk)| {
        let ids: Vec<&str> = chunk.iter().map(|&i| rows[i].1.parcel_id.as_str()).collect();
        let request = client.request(crate::nats::wire::standing_subject(p), ids.join("\n").into());
        async move {
            let answer = tokio::time::timeout(ANSWER, request).await.ok().and_then(Result::ok);
            let states = answer.and_then(|m| serde_json::from_slice::<Vec<String>>(&m.payload).ok());
            (chunk, states.filter(|s| s.len() == chunk.len()))
        }
    }))
    .await;
    let mut ended = vec![false; rows.len()];
    let mut unanswered = 0;
    for (chunk, states) in asked {
        match states {
            Some(states) => chunk.iter().zip(states).for_each(|(&i, s)| ended[i] = ENDED.contains(&s.as_str())),
            None => unanswered += 1,
        }
    }
    let mut out = Standing { unanswered, ..Standing::default() };
    for ((alert, row), ended) in rows.into_iter().zip(ended) {
        if ended {
            out.ended.push(alert);
        } else {
            out.open.push((alert, row));
        }
    }
    out
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

/// When the digests go, and how to ask where their parcels stand.
pub struct Daily {
    /// The local time of each branch's digest.
    pub at: NaiveTime,
    /// How often the branches are looked over.
    pub check: Duration,
    /// The deployment's partition count: which processor to ask about a parcel.
    pub partitions: u16,
}

/// Every `daily.check` interval: each branch past its digest time today that
/// has not had today's digest gets it.
pub async fn run(
    senders: Arc<Senders>,
    store: kv::Store,
    ledger: Ledger,
    daily: Daily,
    clock: Arc<Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let Daily { at, check, partitions } = daily;
    loop {
        if let Some(now) = clock.now() {
            let now = DateTime::<Utc>::from_timestamp_millis(now.0).unwrap_or_default();
            for (code, branch) in senders.directory.iter() {
                if branch.email.is_none() {
                    continue;
                }
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
                let (outcome, recorded, count) = match send(&senders, &store, partitions, code, tz, &date, &key).await {
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

/// Sends branch `code` its digest of the day `date` (the ledger's `key`),
/// after removing the rows whose parcel's story ended; `None` when no row
/// is left, or the branch has no address.
async fn send(
    senders: &Senders,
    store: &kv::Store,
    partitions: u16,
    code: &str,
    tz: Tz,
    date: &str,
    key: &str,
) -> Result<Option<usize>, String> {
    let branch = senders.directory.get(code);
    let Some(email) = branch.and_then(|b| b.email.as_deref()) else { return Ok(None) };
    let (rows, more) = rows(store, code).await?;
    if more {
        tracing::warn!(branch = %code, listed = rows.len(), "digest cut short: more at-risk parcels than it lists");
    }
    let rows = match &senders.nats {
        Some(client) if !rows.is_empty() => {
            let standing = standing(client, partitions, rows).await;
            if standing.unanswered > 0 {
                let unanswered = standing.unanswered;
                tracing::warn!(branch = %code, unanswered, "no processor said where some parcels stand; listed");
            }
            for alert in &standing.ended {
                store.purge(format!("{}.{alert}", token(code))).await.map_err(|e| e.to_string())?;
                METRICS.at_risk_ended.inc();
            }
            standing.open
        }
        _ => rows,
    };
    if rows.is_empty() {
        return Ok(None);
    }
    let rows: Vec<Row> = rows.into_iter().map(|(_, row)| row).collect();
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
