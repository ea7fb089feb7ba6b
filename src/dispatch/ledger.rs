//! What was sent: the idempotency record that makes "once" hold across
//! restarts. One key per alert, state, audience and channel in a JetStream
//! key-value bucket, with a moka cache in front so the common "not seen"
//! and "already sent" answers cost no round trip after the first.
//!
//! A message is recorded only after its final outcome (alertmanager's
//! order: send, then record), and its alert is acknowledged only after the
//! record is stored.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::route::{Draft, Skip};
use crate::live::LiveError;

/// A final outcome as remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    Sent,
    /// Failed permanently, skipped or grouped: final, but nobody was told.
    Final(String),
}

impl Recorded {
    fn encode(&self) -> Bytes {
        match self {
            Recorded::Sent => Bytes::from_static(b"sent"),
            Recorded::Final(outcome) => Bytes::from(outcome.clone()),
        }
    }

    fn decode(bytes: &[u8]) -> Recorded {
        match bytes {
            b"sent" => Recorded::Sent,
            other => Recorded::Final(String::from_utf8_lossy(other).into_owned()),
        }
    }
}

#[derive(Clone)]
pub struct Ledger {
    store: Option<kv::Store>,
    cache: moka::future::Cache<String, Recorded>,
}

/// A KV bucket, created when absent.
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, LiveError> {
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: name.to_string(),
                history: 1,
                max_age,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| LiveError::nats("key-value bucket create", e)),
    }
}

impl Ledger {
    /// Backed by `store`, or in memory only (backtests) when there is none.
    pub fn new(store: Option<kv::Store>, cache: u64) -> Ledger {
        Ledger { store, cache: moka::future::Cache::new(cache.max(1)) }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Recorded>, LiveError> {
        if let Some(found) = self.cache.get(key).await {
            return Ok(Some(found));
        }
        let Some(store) = &self.store else { return Ok(None) };
        let found = store.get(key).await.map_err(|e| LiveError::nats("idempotency lookup", e))?;
        let found = found.map(|b| Recorded::decode(&b));
        if let Some(r) = &found {
            self.cache.insert(key.to_string(), r.clone()).await;
        }
        Ok(found)
    }

    /// The drafts still to send: drops those already final, and
    /// resolutions whose firing was not sent (`not_told`).
    pub async fn admit(&self, drafts: &[Draft]) -> Result<(Vec<Draft>, Vec<Skip>), LiveError> {
        let mut wanted = Vec::new();
        let mut skips = Vec::new();
        for draft in drafts {
            if self.get(&draft.key).await?.is_some() {
                continue;
            }
            if let Some(told) = &draft.told {
                if self.get(told).await? != Some(Recorded::Sent) {
                    skips.push(Skip {
                        audience: draft.target.audience(),
                        channel: draft.target.channel(),
                        reason: "not_told",
                    });
                    continue;
                }
            }
            wanted.push(draft.clone());
        }
        Ok((wanted, skips))
    }

    pub async fn record(&self, key: &str, outcome: Recorded) -> Result<(), LiveError> {
        if let Some(store) = &self.store {
            store.put(key, outcome.encode()).await.map_err(|e| LiveError::nats("idempotency record", e))?;
        }
        self.cache.insert(key.to_string(), outcome).await;
        Ok(())
    }
}

/// A string as a KV key token: `[-_=a-zA-Z0-9]` kept, anything else `=XX`.
pub fn token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_keys_valid_and_distinct() {
        assert_eq!(token("FR-PAR-12"), "FR-PAR-12");
        assert_eq!(token("a.b c"), "a=2Eb=20c");
        assert_ne!(token("a.b"), token("a=2Eb"));
    }
}
