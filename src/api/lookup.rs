//! The agent's API: when a customer does call, the agent sees what
//! forewarn knows of the parcel and what the customer was told. The agent's
//! page ([`super::agent`]) shows the same, read the same way.
//!
//! - `GET /v1/parcels/{id}`: the parcel as the window holds it (state, last
//!   scan, open alerts, contacts) and every message about it with its
//!   outcome and time. The window part is asked over NATS
//!   (`forewarn.lookup.parcel.<partition>`) of whichever processor owns the
//!   parcel's partition, so any instance answers for any parcel; the
//!   messages come from the dispatcher's ledger, listed by the parcel's key
//!   prefix.
//! - `GET /v1/branches/{id}/at-risk`: the branch's open parcel alerts from
//!   the at-risk bucket whose parcels are still on their way (as the
//!   digest lists them), oldest first, by pages (`limit`, `after`), as JSON
//!   or as CSV with `Accept: text/csv`.
//!
//! Read-only and bounded (page sizes, a few requests at a time, timeouts on
//! every NATS call); with `FOREWARN_API_TOKEN` (or `FOREWARN_API_TOKEN_FILE`)
//! set, every request needs `Authorization: Bearer <token>`. Phones and
//! emails appear masked.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{OnceCell, Semaphore};

use crate::config::Config;
use crate::dispatch::branches::Directory;
use crate::dispatch::digest::{self, Row};
use crate::dispatch::ledger::{entries, token};
use crate::nats::{connect, wire, LiveError};
use crate::partition;

/// A page holds this many rows unless the request asks for fewer.
const DEFAULT_PAGE: usize = 100;
/// …and never more than this.
const MAX_PAGE: usize = 1_000;
/// Requests served at once; more are told to come back.
const CONCURRENT: usize = 16;
/// Each NATS step of a request.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The HTTP side.
pub struct Api {
    config: Config,
    token: Option<String>,
    directory: Option<Directory>,
    nats: OnceCell<jetstream::Context>,
    slots: Semaphore,
}

/// The `/v1` routes and the agent's page (`/agent`), to merge into the health server.
pub fn routes(config: &Config) -> Result<Router, LiveError> {
    let token = crate::dispatch::channel::secret("FOREWARN_API_TOKEN").map_err(LiveError::config)?;
    let directory = Directory::load_to_show(&config.dispatch.branches_file(&config.rules)).ok();
    let api = Arc::new(Api {
        config: config.clone(),
        token: token.filter(|t| !t.is_empty()),
        directory,
        nats: OnceCell::new(),
        slots: Semaphore::new(CONCURRENT),
    });
    Ok(Router::new()
        .route("/v1/parcels/{id}", get(parcel))
        .route("/v1/branches/{id}/at-risk", get(at_risk))
        .merge(super::agent::routes())
        .with_state(api))
}

/// A request not answered, and why, as a JSON `{"error": …}`.
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
    /// `WWW-Authenticate` or `Retry-After`, when the status calls for one.
    header: Option<(header::HeaderName, &'static str)>,
}

fn failure(status: StatusCode, message: impl Into<String>) -> Failure {
    Failure { status, message: message.into(), header: None }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut h = HeaderMap::new();
        if let Some((name, value)) = self.header {
            h.insert(name, HeaderValue::from_static(value));
        }
        json_response(self.status, h, json!({ "error": self.message }))
    }
}

impl Api {
    /// The token requests need, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Whether `headers` carry the bearer token.
    pub fn bearer(&self, headers: &HeaderMap) -> bool {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        self.token.as_ref().is_none_or(|token| given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())))
    }

    /// A slot among the requests served at once; "busy" when none is free.
    pub fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Failure> {
        self.slots.try_acquire().map_err(|_| Failure {
            header: Some((header::RETRY_AFTER, "1")),
            ..failure(StatusCode::TOO_MANY_REQUESTS, "busy: try again in a second")
        })
    }

    /// Checks the token and takes a slot; the failure to answer otherwise.
    fn admit(&self, headers: &HeaderMap) -> Result<tokio::sync::SemaphorePermit<'_>, Failure> {
        if !self.bearer(headers) {
            return Err(Failure {
                header: Some((header::WWW_AUTHENTICATE, "Bearer")),
                ..failure(StatusCode::UNAUTHORIZED, "a bearer token is required")
            });
        }
        self.slot()
    }

    /// The branch directory, when it loaded.
    pub fn directory(&self) -> Option<&Directory> {
        self.directory.as_ref()
    }

    /// The NATS connection, made on first use (and again after a failure).
    async fn nats(&self) -> Result<&jetstream::Context, Failure> {
        self.nats
            .get_or_try_init(|| async {
                let name = format!("forewarn api {}", self.config.instance);
                let client = tokio::time::timeout(TIMEOUT, connect::connect(&self.config.nats, &name))
                    .await
                    .map_err(|_| LiveError::nats("connect", "timed out"))??;
                Ok::<_, LiveError>(connect::jetstream(client))
            })
            .await
            .map_err(|e| failure(StatusCode::SERVICE_UNAVAILABLE, format!("NATS unavailable: {e}")))
    }

    async fn bucket(&self, js: &jetstream::Context, name: &str) -> Option<jetstream::kv::Store> {
        tokio::time::timeout(TIMEOUT, js.get_key_value(name)).await.ok()?.ok()
    }
}

/// Compares secrets in a time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, headers: HeaderMap, body: Value) -> Response {
    let mut r = (status, headers, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn parcel(State(api): State<Arc<Api>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let _slot = match api.admit(&headers) {
        Ok(slot) => slot,
        Err(f) => return f.into_response(),
    };
    match api.parcel(&id).await {
        Ok(body) => json_response(StatusCode::OK, HeaderMap::new(), body),
        Err(f) => f.into_response(),
    }
}

impl Api {
    /// What forewarn knows of parcel `id`: `{"parcel_id", "partition",
    /// "window", "messages", "messages_truncated"}`, the messages oldest first.
    pub async fn parcel(&self, id: &str) -> Result<Value, Failure> {
        // Characters, as the contract counts them: a 40-character id in Chinese is 120 bytes.
        if id.is_empty() || id.chars().count() > crate::event::MAX_ID_CHARS {
            return Err(failure(StatusCode::BAD_REQUEST, "parcel_id: 1 to 64 characters"));
        }
        let js = self.nats().await?;
        let p = partition::of(id, self.config.partitions.count);
        let client = js.client();
        let asked = tokio::time::timeout(TIMEOUT, client.request(wire::lookup_subject(p), id.to_string().into()));
        let window = match asked.await {
            Ok(Ok(reply)) => serde_json::from_slice(&reply.payload)
                .unwrap_or_else(|e| json!({ "status": "unavailable", "reason": format!("bad answer: {e}") })),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                json!({ "status": "unavailable", "reason": format!("no processor answers for partition {p}") })
            }
            Ok(Err(e)) => json!({ "status": "unavailable", "reason": e.to_string() }),
            Err(_) => {
                json!({ "status": "unavailable", "reason": format!("partition {p}'s processor did not answer in time") })
            }
        };
        let (mut messages, truncated) = match self.bucket(js, &self.config.dispatch.dedup.bucket).await {
            Some(store) => match entries(&store, &format!("{}.>", token(id)), MAX_PAGE as u64).await {
                Ok((found, more)) => {
                    (found.iter().filter_map(|(_, b)| serde_json::from_slice::<Value>(b).ok()).collect(), more)
                }
                Err(e) => return Err(failure(StatusCode::SERVICE_UNAVAILABLE, format!("messages unavailable: {e}"))),
            },
            None => (Vec::new(), false),
        };
        messages.sort_by(|a: &Value, b: &Value| a["at"].as_str().cmp(&b["at"].as_str()));
        if window["status"] == "unknown" && messages.is_empty() {
            return Err(failure(StatusCode::NOT_FOUND, format!("{id}: not in flight and no message about it")));
        }
        Ok(json!({
            "parcel_id": id, "partition": p, "window": window,
            "messages": messages, "messages_truncated": truncated,
        }))
    }

    /// Branch `branch`'s open parcel alerts (alert id, row) whose parcel is
    /// still on its way, as its digest would list them, oldest first, and
    /// whether the list was cut short.
    pub async fn at_risk(&self, branch: &str) -> Result<(Vec<(String, Row)>, bool), Failure> {
        let js = self.nats().await?;
        let Some(store) = self.bucket(js, &self.config.dispatch.digest.bucket).await else {
            return Ok((Vec::new(), false));
        };
        let (rows, cut) = digest::rows(&store, branch)
            .await
            .map_err(|e| failure(StatusCode::SERVICE_UNAVAILABLE, format!("at-risk list unavailable: {e}")))?;
        Ok((digest::standing(&js.client(), self.config.partitions.count, rows).await.open, cut))
    }

    /// The branch directory's zone of `branch`.
    pub fn branch_zone(&self, branch: &str) -> Option<Tz> {
        self.directory.as_ref()?.get(branch)?.tz.parse().ok()
    }
}

#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// Where a row sorts: its time, then its alert id; `<millis>-<alert id>` as a cursor.
fn cursor(alert: &str, row: &Row) -> String {
    format!("{}-{alert}", row.since.timestamp_millis())
}

fn after(cursor: &str) -> Option<(i64, &str)> {
    let (ms, alert) = cursor.split_once('-')?;
    Some((ms.parse().ok()?, alert))
}

async fn at_risk(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(branch): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    let _slot = match api.admit(&headers) {
        Ok(slot) => slot,
        Err(f) => return f.into_response(),
    };
    let limit = page.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let start = match page.after.as_deref().map(|c| after(c).ok_or(c)) {
        None => None,
        Some(Ok(start)) => Some(start),
        Some(Err(c)) => {
            return failure(StatusCode::BAD_REQUEST, format!("after: {c:?} is not a cursor from a previous page"))
                .into_response()
        }
    };
    let (rows, cut) = match api.at_risk(&branch).await {
        Ok(found) => found,
        Err(f) => return f.into_response(),
    };
    let total = rows.len();
    let rest: Vec<&(String, Row)> = rows
        .iter()
        .filter(|(alert, row)| start.is_none_or(|(ms, a)| (row.since.timestamp_millis(), alert.as_str()) > (ms, a)))
        .collect();
    let items = &rest[..rest.len().min(limit)];
    let next = (rest.len() > limit).then(|| items.last().map(|(a, r)| cursor(a, r))).flatten();
    let mut h = HeaderMap::new();
    if let Some(next) = &next {
        let link = format!(
            "</v1/branches/{}/at-risk?limit={limit}&after={next}>; rel=\"next\"",
            crate::dispatch::deliver::url_encode(&branch)
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.insert(header::LINK, v);
        }
    }
    let wants_csv = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv"));
    if wants_csv {
        let tz = api.branch_zone(&branch).unwrap_or(Tz::UTC);
        let page: Vec<Row> = items.iter().map(|(_, r)| r.clone()).collect();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
        return (StatusCode::OK, h, digest::csv(&page, tz)).into_response();
    }
    let items: Vec<Value> = items
        .iter()
        .map(|(alert, r)| {
            json!({ "alert_id": alert, "parcel_id": r.parcel_id, "rule": r.rule, "since": r.since.to_rfc3339(),
                    "last_scan_at": r.last_scan_at.map(|t| t.to_rfc3339()), "facility": r.facility })
        })
        .collect();
    json_response(
        StatusCode::OK,
        h,
        json!({ "branch": branch, "total": total, "total_cut_short": cut, "items": items, "next": next }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_tokens_compare_whole() {
        let row = Row {
            parcel_id: "P".into(),
            rule: "late".into(),
            since: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
            last_scan_at: None,
            facility: None,
        };
        let c = cursor("ab12", &row);
        assert_eq!(after(&c), Some((1_700_000_000_123, "ab12")));
        assert_eq!(after("nonsense"), None);
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT") && !constant_time_eq(b"secret", b"secret2"));
    }
}
