//! The agent's page: `GET /agent` on the ops address, for call-centre agents
//! in a browser. They type a tracking number and see, on one screen, what
//! forewarn knows of the parcel (state, last scan, open alerts, the
//! customer's contacts, a timeline) and every message it sent about it
//! (channel, time, outcome) before they answer; or a branch code, and see
//! its parcels at risk.
//!
//! Read through the same [`Api`] as the JSON lookup, so both say the same.
//! Server-rendered with minijinja from templates compiled into the binary;
//! no JavaScript. The API's token rule: with `FOREWARN_API_TOKEN` set, a
//! request needs it, as a bearer token (a proxy in front may add it) or as
//! the password of HTTP Basic authentication, which the browser asks for
//! itself (any user name). Phones and emails arrive masked; times are shown
//! in the customer's zone (else the branch's, else UTC).

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::{context, Environment};
use serde::Deserialize;
use serde_json::Value;

use super::lookup::{constant_time_eq, Api, Failure};
use crate::dispatch::deliver::url_encode;

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in [
        ("layout.html", include_str!("agent/layout.html")),
        ("search.html", include_str!("agent/search.html")),
        ("error.html", include_str!("agent/error.html")),
        ("parcel.html", include_str!("agent/parcel.html")),
        ("branch.html", include_str!("agent/branch.html")),
    ] {
        if let Err(e) = env.add_template(name, source) {
            panic!("agent template {name} does not parse: {e}");
        }
    }
    env
});

/// The `/agent` routes, sharing the lookup API's state.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/agent", get(search))
        .route("/agent/parcels/{id}", get(parcel))
        .route("/agent/branches/{id}", get(branch))
}

/// A rendered page, never cached or framed, with nothing but its own styles.
fn page(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let html = match TEMPLATES.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(error = %e, template = name, "agent page not rendered");
            return (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered\n").into_response();
        }
    };
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

fn failed(f: Failure) -> Response {
    let heading = match f.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::BAD_REQUEST => "Not a tracking number",
        StatusCode::TOO_MANY_REQUESTS => "Busy: try again in a second",
        _ => "Unavailable",
    };
    page(f.status, "error.html", context! { heading, message => f.message })
}

/// The password of the request's HTTP Basic authentication.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let encoded = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.1.to_string())
}

/// Whether the request may see pages: no token configured, or the token as
/// a bearer token or a Basic password.
fn signed_in(api: &Api, headers: &HeaderMap) -> bool {
    let Some(token) = api.token() else { return true };
    api.bearer(headers) || basic_password(headers).is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()))
}

/// A slot for a signed-in request; otherwise the page that answers it.
fn admit<'a>(api: &'a Api, headers: &HeaderMap) -> Result<tokio::sync::SemaphorePermit<'a>, Box<Response>> {
    if !signed_in(api, headers) {
        return Err(Box::new(sign_in()));
    }
    api.slot().map_err(|f| Box::new(failed(f)))
}

/// The answer to a request without the token: the browser asks for it.
fn sign_in() -> Response {
    let heading = "Sign in";
    let message = "Sign in with the access token as the password (any user name): the token of the agent's API, \
                   FOREWARN_API_TOKEN, from the team that runs forewarn.";
    let mut r = page(StatusCode::UNAUTHORIZED, "error.html", context! { heading, message });
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"forewarn agent\", charset=\"UTF-8\""),
    );
    r
}

#[derive(Deserialize)]
struct Search {
    q: Option<String>,
}

/// The search box; a search goes to the branch's page when the directory
/// knows the code, else to the parcel's.
async fn search(State(api): State<Arc<Api>>, headers: HeaderMap, Query(s): Query<Search>) -> Response {
    if !signed_in(&api, &headers) {
        return sign_in();
    }
    match s.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        None => page(StatusCode::OK, "search.html", context! {}),
        Some(q) if api.directory().is_some_and(|d| d.get(q).is_some()) => {
            Redirect::to(&format!("/agent/branches/{}", url_encode(q))).into_response()
        }
        Some(q) => Redirect::to(&format!("/agent/parcels/{}", url_encode(q))).into_response(),
    }
}

/// An instant as the agent reads it, in `tz`.
fn shown(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%a %d %b %Y, %H:%M %Z").to_string()
}

fn instant(text: Option<&str>) -> Option<DateTime<Utc>> {
    Some(DateTime::parse_from_rfc3339(text?).ok()?.with_timezone(&Utc))
}

/// An RFC 3339 instant as the agent reads it, in `tz`.
fn local(text: Option<&str>, tz: Tz) -> Option<String> {
    instant(text).map(|t| shown(t, tz))
}

/// The parts of `values` that are text, joined by `sep`.
fn joined<'a>(values: impl IntoIterator<Item = &'a Value>, sep: &str) -> String {
    values.into_iter().filter_map(Value::as_str).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(sep)
}

/// Where a scan was made: its facility and country, as known.
fn place(scan: &Value) -> String {
    joined([&scan["facility"], &scan["country"]], " · ")
}

/// What happened to the parcel and what was said, oldest first: its last
/// scan, its alerts, the messages and the customer's contacts.
fn timeline(w: &Value, messages: &[Value], tz: Tz) -> Vec<minijinja::Value> {
    let mut events: Vec<(DateTime<Utc>, String)> = Vec::new();
    let scan = &w["last_scan"];
    if let Some(at) = instant(scan["at"].as_str()) {
        let place = place(scan);
        let state = w["state"].as_str().unwrap_or("scan");
        events
            .push((at, if place.is_empty() { format!("Scan: {state}") } else { format!("Scan: {state} at {place}") }));
    }
    for a in w["open_alerts"].as_array().into_iter().flatten() {
        if let Some(at) = instant(a["since"].as_str()) {
            events.push((
                at,
                format!("Alert: {} ({})", a["rule"].as_str().unwrap_or("?"), a["severity"].as_str().unwrap_or("?")),
            ));
        }
    }
    for m in messages {
        if let Some(at) = instant(m["at"].as_str()) {
            let text = |k: &str| m[k].as_str().unwrap_or("?");
            let to = match text("audience") {
                "crm" => "Claim to the CRM".to_string(),
                audience => format!("Message to the {audience} by {}", text("channel")),
            };
            let what = format!("{to}: {} {}, {}", text("rule"), text("state"), text("outcome"));
            events.push((at, what));
        }
    }
    for c in w["contacts"].as_array().into_iter().flatten() {
        if let Some(at) = instant(c.as_str()) {
            events.push((at, "The customer contacted the carrier".into()));
        }
    }
    events.sort_by_key(|e| e.0);
    events.into_iter().map(|(at, what)| context! { at => shown(at, tz), what }).collect()
}

/// The parcel's page.
async fn parcel(State(api): State<Arc<Api>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let _slot = match admit(&api, &headers) {
        Ok(slot) => slot,
        Err(page) => return *page,
    };
    let found = match api.parcel(&id).await {
        Ok(found) => found,
        Err(f) => return failed(f),
    };
    let (w, messages) = (&found["window"], found["messages"].as_array().map_or(&[][..], Vec::as_slice));
    let branch = w["branch"].as_str().or_else(|| messages.iter().find_map(|m| m["branch"].as_str()));
    let tz = w["recipient"]["tz"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .or_else(|| branch.and_then(|b| api.branch_zone(b)))
        .unwrap_or(Tz::UTC);
    let status = match w["status"].as_str() {
        Some("in_flight") => "in flight",
        Some("closed") => "delivered or closed",
        Some("unknown") => "not in the window",
        _ => "window unavailable",
    };
    let r = &w["recipient"];
    let channels = r["channels"].as_array().map(|c| joined(c, ", "));
    let customer = joined([&r["phone"], &r["email"], &r["locale"]], " · ")
        + &channels
            .map(|c| format!(" · channels: {}", if c.is_empty() { "none (opted out)" } else { &c }))
            .unwrap_or_default();
    let scan = &w["last_scan"];
    let last_scan = local(scan["at"].as_str(), tz).map(|at| {
        let place = place(scan);
        if place.is_empty() {
            at
        } else {
            format!("{at} at {place}")
        }
    });
    let alerts: Vec<_> = w["open_alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| context! { rule => a["rule"].as_str(), severity => a["severity"].as_str(), since => local(a["since"].as_str(), tz) })
        .collect();
    let listed: Vec<_> = messages
        .iter()
        .map(|m| {
            let outcome = match m["outcome"].as_str() {
                Some("intent") => "sending",
                other => other.unwrap_or("?"),
            };
            context! {
                at => local(m["at"].as_str(), tz), audience => m["audience"].as_str(), channel => m["channel"].as_str(),
                to => m["to"].as_str(), instead_of => m["instead_of"].as_str(), rule => m["rule"].as_str(),
                state => m["state"].as_str(), outcome, reason => m["reason"].as_str(),
            }
        })
        .collect();
    let contacts: Vec<_> =
        w["contacts"].as_array().into_iter().flatten().filter_map(|c| local(c.as_str(), tz)).collect();
    let ctx = context! {
        q => id, id, status, reason => w["reason"].as_str(), state => w["state"].as_str(),
        state_since => local(w["state_since"].as_str(), tz), last_scan,
        promised_by => local(w["promised_by"].as_str(), tz), return_by => local(w["return_by"].as_str(), tz),
        branch, branch_href => branch.map(|b| format!("/agent/branches/{}", url_encode(b))),
        service => w["service"].as_str(), customer => (!customer.is_empty()).then_some(customer),
        zone => tz.name(), open_alerts => alerts, messages => listed, truncated => found["messages_truncated"].as_bool(),
        contacts, timeline => timeline(w, messages, tz),
    };
    page(StatusCode::OK, "parcel.html", ctx)
}

/// Rows a branch's page lists at most.
const ROWS: usize = 500;

/// The branch's page: its parcels at risk, oldest first.
async fn branch(State(api): State<Arc<Api>>, headers: HeaderMap, Path(code): Path<String>) -> Response {
    let _slot = match admit(&api, &headers) {
        Ok(slot) => slot,
        Err(page) => return *page,
    };
    let (rows, cut) = match api.at_risk(&code).await {
        Ok(found) => found,
        Err(f) => return failed(f),
    };
    let known = api.directory().and_then(|d| d.get(&code));
    let tz = api.branch_zone(&code).unwrap_or(Tz::UTC);
    let at = |t: DateTime<Utc>| t.with_timezone(&tz).format("%a %d %b, %H:%M").to_string();
    let listed: Vec<_> = rows
        .iter()
        .take(ROWS)
        .map(|(_, r)| {
            context! {
                parcel => r.parcel_id, href => format!("/agent/parcels/{}", url_encode(&r.parcel_id)), rule => r.rule,
                since => at(r.since), last_scan => r.last_scan_at.map(at), facility => r.facility,
            }
        })
        .collect();
    let ctx = context! {
        q => code, code, name => known.map(|b| b.name.clone()), total => rows.len(), cut,
        more => rows.len() > ROWS, rows => listed, zone => tz.name(),
    };
    page(StatusCode::OK, "branch.html", ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_page_renders_and_what_came_from_outside_is_escaped() {
        let hostile = "<script>alert(1)</script>";
        let w = json!({
            "status": "in_flight", "state": "arrived", "last_scan": { "at": "2026-11-20T09:00:00Z", "facility": hostile },
            "recipient": { "phone": "+336***78", "tz": "Europe/Paris", "channels": ["sms"] },
            "open_alerts": [{ "rule": "late", "severity": "warning", "since": "2026-11-20T10:00:00Z" }],
            "contacts": ["2026-11-20T11:00:00Z"],
        });
        let messages = [json!({ "at": "2026-11-20T10:01:00Z", "audience": "customer", "channel": "sms",
                                "rule": "late", "state": "firing", "outcome": "sent" })];
        let tz: Tz = "Europe/Paris".parse().unwrap();
        let events = timeline(&w, &messages, tz);
        let text: Vec<String> = events.iter().map(|e| e.get_attr("what").unwrap().to_string()).collect();
        assert_eq!(
            text,
            [
                format!("Scan: arrived at {hostile}"),
                "Alert: late (warning)".into(),
                "Message to the customer by sms: late firing, sent".into(),
                "The customer contacted the carrier".into(),
            ],
            "oldest first"
        );
        assert_eq!(
            events[0].get_attr("at").unwrap().to_string(),
            "Fri 20 Nov 2026, 10:00 CET",
            "in the customer's zone"
        );
        let ctx = context! { id => hostile, status => "in flight", zone => "Europe/Paris", timeline => events,
        messages => Vec::<minijinja::Value>::new(), q => hostile };
        let html = TEMPLATES.get_template("parcel.html").unwrap().render(ctx).unwrap();
        assert!(!html.contains(hostile) && html.contains("&lt;script&gt;"), "{html}");
        for (name, ctx) in [
            ("search.html", context! {}),
            ("error.html", context! { heading => "Not found", message => hostile }),
            (
                "branch.html",
                context! { code => hostile, total => 0, rows => Vec::<minijinja::Value>::new(), zone => "UTC" },
            ),
        ] {
            let html = TEMPLATES.get_template(name).unwrap().render(ctx).unwrap();
            assert!(html.contains("</html>") && !html.contains(hostile), "{name}: {html}");
        }
    }

    #[test]
    fn the_token_is_the_basic_password_whatever_the_user_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic YWdlbnQ6dG9rOjNu"));
        assert_eq!(basic_password(&headers).as_deref(), Some("tok:3n"), "agent:tok:3n, the password may hold a colon");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_password(&headers), None);
    }
}
