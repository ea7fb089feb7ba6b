//! `/healthz` and `/readyz` on the processor's HTTP address, so an
//! orchestrator can tell a live process from a ready one, `/metrics` for
//! Prometheus, and the agent's lookup API (`/v1`, see [`super::lookup`]).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::LiveError;
use crate::config::Config;

/// Why the processor is not ready, or `None` when it is.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<Option<String>>>);

impl Readiness {
    pub fn new(reason: &str) -> Readiness {
        Readiness(Arc::new(Mutex::new(Some(reason.to_string()))))
    }

    pub fn set(&self, reason: Option<&str>) {
        if let Ok(mut r) = self.0.lock() {
            *r = reason.map(str::to_string);
        }
    }

    fn get(&self) -> Option<String> {
        self.0.lock().map(|r| r.clone()).unwrap_or_else(|_| Some("state unavailable".into()))
    }
}

/// Why an instance with `waiting` input messages on the server is not ready, if it is not.
pub fn lagging(waiting: u64, max: u64) -> Option<String> {
    (waiting > max).then(|| format!("catching up: {waiting} messages waiting on the server (ready_max_pending {max})"))
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, String) {
    match readiness.get() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

async fn metrics() -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::METRICS.render())
}

/// Serves health, metrics and the lookup API on `config.http` in the background.
pub async fn serve(config: &Config, readiness: Readiness) -> Result<(), LiveError> {
    let addr = &config.http;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| LiveError::Config(format!("cannot listen on {addr} for health: {e}")))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(readiness)
        .merge(super::lookup::routes(config)?);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_far_behind_is_not_ready_and_says_why() {
        assert_eq!(lagging(1_000, 1_000), None);
        let reason = lagging(1_001, 1_000).expect("not ready");
        assert!(reason.contains("1001 messages waiting") && reason.contains("ready_max_pending 1000"), "{reason}");
    }
}
