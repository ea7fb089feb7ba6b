//! The HTTP face of a process, on its ops address: `/healthz` and
//! `/readyz`, so an orchestrator can tell a live process from a ready one,
//! `/metrics` for Prometheus, the agent's lookup API (`/v1`, see
//! [`lookup`]) and the agent's page (`/agent`, see [`agent`]). Above the processor and the dispatcher: it reads what they
//! say (readiness, metrics, the window over NATS, the ledger), never the
//! other way round.

pub mod agent;
pub mod lookup;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::config::Config;
use crate::live::Readiness;
use crate::metrics::METRICS;
use crate::nats::LiveError;

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, String) {
    match readiness.get() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

async fn metrics(State(readiness): State<Readiness>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    readiness.get();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], METRICS.render())
}

/// Serves health, metrics and the lookup API on `config.http` in the background.
pub async fn serve(config: &Config, readiness: Readiness) -> Result<(), LiveError> {
    let addr = &config.http;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| LiveError::config(format!("cannot listen on {addr} for health: {e}")))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(readiness)
        .merge(lookup::routes(config)?);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(())
}
