//! Connecting to NATS (auth and TLS from the configuration and the
//! environment) and making sure the streams and the checkpoint bucket are
//! there and are what the configuration says.

use std::sync::atomic::Ordering;

use async_nats::connection::State;
use async_nats::jetstream::{self, object_store, stream};
use async_nats::ConnectOptions;

use super::LiveError;
use crate::config::{std_duration, Nats, StreamConfig, Streams, SUBSCRIPTION_CAPACITY};

/// Reads a secret from a file, trimmed; its content never reaches an error or a log.
fn secret(path: &std::path::Path, what: &str) -> Result<String, LiveError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| LiveError::config(format!("cannot read the {what} file {}: {e}", path.display())))
}

/// Connects with the configured identity. The client reconnects by itself
/// after an outage, for ever; a first connection that fails is an error.
pub async fn connect(nats: &Nats, name: &str) -> Result<async_nats::Client, LiveError> {
    let mut options = ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                other => tracing::warn!(event = %other, "NATS connection"),
            }
        });
    if let Some(path) = &nats.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| LiveError::config(format!("cannot read the credentials file {}: {e}", path.display())))?;
    }
    if let Some(path) = &nats.nkey_seed_file {
        options = options.nkey(secret(path, "nkey seed")?);
    }
    let token = match &nats.token_file {
        Some(path) => Some(secret(path, "token")?),
        None => std::env::var("FOREWARN_NATS_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    if let Some(token) = token {
        options = options.token(token);
    }
    if let Some(user) = &nats.user {
        let password = std::env::var("FOREWARN_NATS_PASSWORD").unwrap_or_default();
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(ca) = &nats.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    match (&nats.tls_cert, &nats.tls_key) {
        (Some(cert), Some(key)) => options = options.add_client_certificate(cert.clone(), key.clone()),
        (None, None) => {}
        _ => return Err(LiveError::config("nats.tls_cert and nats.tls_key go together")),
    }
    options = options.require_tls(nats.tls_required);
    let servers: Vec<&str> = nats.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let addrs: Vec<async_nats::ServerAddr> = servers
        .iter()
        .map(|s| s.parse().map_err(|e| LiveError::config(format!("NATS URL {s:?}: {e}"))))
        .collect::<Result<_, _>>()?;
    options.connect(addrs).await.map_err(|e| LiveError::Connect { url: nats.url.clone(), reason: e.to_string() })
}

/// The connection a request made now goes out on, counted from the first:
/// the current one, or while reconnecting the next. A request whose
/// connection was [`replaced`] will never hear its answer.
pub fn connection(client: &async_nats::Client) -> u64 {
    let connects = client.statistics().connects.load(Ordering::Relaxed);
    connects + u64::from(client.connection_state() != State::Connected)
}

/// Returns once the client has connected again after connection `since`.
pub async fn replaced(client: &async_nats::Client, since: u64) {
    let statistics = client.statistics();
    while statistics.connects.load(Ordering::Relaxed) <= since {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A JetStream context whose publishes wait (backpressure) instead of failing
/// when many acknowledgements are outstanding, and give up waiting for one
/// after 5 s. The outbox publishes on a connection of its own, without it.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .max_ack_inflight(16_384)
        .backpressure_on_inflight(true)
        .ack_timeout(std::time::Duration::from_secs(5))
        .build(client)
}

fn wanted(config: &StreamConfig, subjects: &[&str], replicas: usize) -> stream::Config {
    stream::Config {
        name: config.name.clone(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: std_duration(config.max_age),
        duplicate_window: std_duration(config.duplicate_window),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Creates each stream when absent; when present, refuses to start if it
/// differs from the configuration in what forewarn relies on.
pub async fn ensure_streams(js: &jetstream::Context, streams: &Streams) -> Result<(), LiveError> {
    let all = [
        (&streams.scans, vec!["scans.*"]),
        (&streams.contacts, vec!["contacts.*"]),
        (&streams.alerts, vec!["alerts.>"]),
        (&streams.dead_letters, vec!["deadletter.>"]),
        (&streams.facts, vec!["forewarn.facts.*", "forewarn.marks.*"]),
    ];
    for (config, subjects) in all {
        let want = wanted(config, &subjects, streams.replicas);
        match js.get_stream(&config.name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|e| LiveError::nats("stream info", e))?;
                check(&want, &info.config)?;
            }
            Err(e) if is_not_found(&e.kind()) => {
                js.create_stream(want).await.map_err(|e| LiveError::Stream {
                    name: config.name.clone(),
                    message: format!("cannot create it: {e}"),
                })?;
                tracing::info!(stream = %config.name, "created stream");
            }
            Err(e) => return Err(LiveError::nats("stream lookup", e)),
        }
    }
    Ok(())
}

/// Whether a stream lookup failed because the stream does not exist.
pub fn is_not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::GetStreamErrorKind::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The differences that matter, as one clear error.
fn check(want: &stream::Config, have: &stream::Config) -> Result<(), LiveError> {
    let mut diffs = Vec::new();
    let mut subjects = have.subjects.clone();
    subjects.sort();
    let mut expected = want.subjects.clone();
    expected.sort();
    if subjects != expected {
        diffs.push(format!("subjects {subjects:?}, expected {expected:?}"));
    }
    if have.retention != want.retention {
        diffs.push(format!("retention {:?}, expected {:?}", have.retention, want.retention));
    }
    if have.num_replicas != want.num_replicas {
        diffs.push(format!("{} replicas, expected {}", have.num_replicas, want.num_replicas));
    }
    if have.duplicate_window < want.duplicate_window {
        diffs.push(format!(
            "duplicate window {:?}, expected at least {:?}",
            have.duplicate_window, want.duplicate_window
        ));
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(LiveError::Stream {
        name: want.name.clone(),
        message: format!(
            "exists with {}; change the stream (nats stream edit) or the [streams] section of the configuration",
            diffs.join(", ")
        ),
    })
}

/// The checkpoint bucket, created when absent.
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<object_store::ObjectStore, LiveError> {
    match js.get_object_store(name).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: name.to_string(),
                description: Some("forewarn engine checkpoints".into()),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| LiveError::nats("checkpoint bucket", e)),
    }
}
