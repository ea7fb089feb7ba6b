//! What was sent: the idempotency record that makes "once" hold across
//! restarts. One key per parcel, alert, state, audience and channel in a
//! JetStream key-value bucket (the parcel first, so the agent's lookup
//! lists a parcel's messages with one subject filter), holding the
//! outcome as `notify.outcomes` publishes it, with a moka cache in front so
//! the common "not seen" and "already sent" answers cost no round trip
//! after the first.
//!
//! A message is recorded only after its final outcome (alertmanager's
//! order: send, then record), and its alert is acknowledged only after the
//! record is stored.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::outcome::Outcome;
use super::route::Draft;
use crate::nats::LiveError;

/// A final outcome as remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    Sent,
    /// Failed permanently, skipped, grouped or unknown: final, but nobody
    /// was told, or nobody knows.
    Final(String),
    /// Claimed before its send (who and when), no outcome yet: being sent,
    /// or its sender stopped between the request and the answer.
    Intent(String),
}

impl Recorded {
    /// From an outcome's JSON (`{"outcome": "sent" | "failed" | "skipped",
    /// "reason": …}`), or a bare word.
    fn decode(bytes: &[u8]) -> Recorded {
        #[derive(serde::Deserialize)]
        struct Stored {
            outcome: String,
            reason: Option<String>,
            by: Option<String>,
            at: Option<String>,
        }
        match serde_json::from_slice::<Stored>(bytes) {
            Ok(s) if s.outcome == "sent" => Recorded::Sent,
            Ok(s) if s.outcome == "intent" => Recorded::Intent(format!(
                "claimed by {} at {}",
                s.by.as_deref().unwrap_or("?"),
                s.at.as_deref().unwrap_or("?")
            )),
            Ok(s) if s.outcome == "skipped" => Recorded::Final(s.reason.unwrap_or(s.outcome)),
            Ok(s) => Recorded::Final(s.outcome),
            Err(_) if bytes == b"sent" => Recorded::Sent,
            Err(_) => Recorded::Final(String::from_utf8_lossy(bytes).into_owned()),
        }
    }
}

/// The ledger key of message `key` about `parcel`: `<parcel token>.<key>`
/// (`-` for messages about no parcel, such as digests).
pub fn slot(parcel: Option<&str>, key: &str) -> String {
    match parcel {
        Some(p) if !p.is_empty() => format!("{}.{key}", token(p)),
        _ => format!("-.{key}"),
    }
}

/// The newest value of each key matching the KV pattern `filter`, at most
/// `max` of them, and whether more matched: one short-lived consumer on the
/// bucket's stream filtered by subject, so listing a branch or a parcel
/// costs its own keys, not the whole bucket. Deleted keys are left out.
pub async fn entries(store: &kv::Store, filter: &str, max: u64) -> Result<(Vec<(String, Bytes)>, bool), String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures::StreamExt;
    let consumer = store
        .stream
        .create_consumer(pull::Config {
            filter_subject: format!("{}{filter}", store.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ack_policy: AckPolicy::None,
            memory_storage: true,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = consumer.cached_info().num_pending;
    let want = pending.min(max) as usize;
    let mut out = Vec::with_capacity(want);
    if want > 0 {
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?.take(want);
        let read = async {
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| e.to_string())?;
                let deleted =
                    m.headers.as_ref().and_then(|h| h.get("KV-Operation")).is_some_and(|op| op.as_str() != "PUT");
                if let (false, Some(key)) = (deleted, m.subject.strip_prefix(store.prefix.as_str())) {
                    out.push((key.to_string(), m.payload.clone()));
                }
            }
            Ok::<_, String>(())
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .map_err(|_| "timed out reading the bucket".to_string())??;
    }
    let name = consumer.cached_info().name.clone();
    let _ = store.stream.delete_consumer(&name).await;
    Ok((out, pending > max))
}

/// Who holds a message's claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This instance, now: it sends the message.
    Ours,
    /// Another instance, or this one before a restart: seen now.
    Theirs,
    /// Already seen by this instance.
    Known,
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

    /// The drafts still to send, and the outcomes of the others that are
    /// news: drops those already final; resolutions whose firing was not
    /// sent are skipped (`not_told`); a claim left without an outcome by a
    /// sender that stopped mid-send becomes `unknown`, never sent again. A
    /// draft with a fallback whose own message failed (its fallback not sent
    /// before a restart), or whose firing went by the fallback's channel,
    /// gives way to its fallback.
    pub async fn admit(&self, drafts: &[Draft]) -> Result<(Vec<Draft>, Vec<Outcome>), LiveError> {
        let mut wanted = Vec::new();
        let mut outcomes = Vec::new();
        'drafts: for first in drafts {
            let mut draft = first;
            loop {
                let fallback = draft.fallback.as_deref();
                match (self.get(&draft.slot()).await?, fallback) {
                    (Some(Recorded::Intent(claim)), _) => {
                        outcomes.extend(self.abandoned(draft, &claim).await?);
                        continue 'drafts;
                    }
                    (Some(Recorded::Final(why)), Some(next)) if why == "failed" => {
                        draft = next;
                        continue;
                    }
                    (Some(_), _) => continue 'drafts,
                    (None, _) => {}
                }
                if let Some(told) = &draft.told {
                    if self.get(&slot(draft.notice.parcel_id.as_deref(), told)).await? != Some(Recorded::Sent) {
                        if let Some(next) = fallback {
                            draft = next;
                            continue;
                        }
                        let (audience, channel) = (draft.target.audience(), draft.target.channel());
                        outcomes.push(Outcome::Skipped { audience, channel, reason: "not_told" });
                        continue 'drafts;
                    }
                }
                wanted.push(draft.clone());
                continue 'drafts;
            }
        }
        Ok((wanted, outcomes))
    }

    /// Records `draft`, found claimed (`claim`) with no outcome, as
    /// `unknown`, unless its sender recorded the outcome meanwhile (a
    /// compare-and-set on the claim's revision); the outcome to publish.
    async fn abandoned(&self, draft: &Draft, claim: &str) -> Result<Option<Outcome>, LiveError> {
        let Some(store) = &self.store else { return Ok(None) };
        let key = draft.slot();
        self.cache.invalidate(&key).await;
        let entry = store.entry(&key).await.map_err(|e| LiveError::nats("idempotency lookup", e))?;
        let Some(entry) = entry.filter(|e| matches!(Recorded::decode(&e.value), Recorded::Intent(_))) else {
            return Ok(None);
        };
        let outcome = Outcome::unknown(draft, format!("{claim}, which stopped before the answer; not sent again"));
        let body = Bytes::from(outcome.json(&draft.notice, chrono::Utc::now()));
        match store.update(&key, body, entry.revision).await {
            Ok(_) => {
                tracing::warn!(key = %draft.key, %claim, "message with an unknown outcome: its sender stopped mid-send");
                self.cache.insert(key, outcome.recorded()).await;
                Ok(Some(outcome))
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(LiveError::nats("idempotency record", e)),
        }
    }

    /// Claims the message at `key` (a [`slot`]) for this instance before it
    /// is sent, with `body` (`{"outcome": "intent", …}`) as the record: a
    /// JetStream `Create`, so of several instances (or an earlier run) only
    /// one ever holds it. A claim whose outcome never follows (a crash
    /// mid-send) stays: the message is not sent blindly again, and its
    /// record says `intent`.
    pub async fn claim(&self, key: &str, body: Bytes) -> Result<Claim, LiveError> {
        if self.cache.get(key).await.is_some() {
            return Ok(Claim::Known);
        }
        let claim = match &self.store {
            None => Claim::Ours,
            Some(store) => match store.create(key, body.clone()).await {
                Ok(_) => Claim::Ours,
                // A claim whose reply was lost (a timeout, a reconnection)
                // and is asked again finds itself: the same intent is ours.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match store.get(key).await {
                    Ok(Some(held)) if held == body => Claim::Ours,
                    Ok(_) => Claim::Theirs,
                    Err(e) => return Err(LiveError::nats("idempotency claim", e)),
                },
                Err(e) => return Err(LiveError::nats("idempotency claim", e)),
            },
        };
        self.cache.insert(key.to_string(), Recorded::Intent("claimed here".into())).await;
        Ok(claim)
    }

    /// Gives up a claim whose message could not be sent now, so that a later try may take it.
    pub async fn release(&self, key: &str) -> Result<(), LiveError> {
        self.cache.invalidate(key).await;
        if let Some(store) = &self.store {
            store.delete(key).await.map_err(|e| LiveError::nats("idempotency release", e))?;
        }
        Ok(())
    }

    /// Records the final outcome of the message at `key` (a [`slot`]), as `body` says it.
    pub async fn record(&self, key: &str, outcome: Recorded, body: Bytes) -> Result<(), LiveError> {
        if let Some(store) = &self.store {
            store.put(key, body).await.map_err(|e| LiveError::nats("idempotency record", e))?;
        }
        self.cache.insert(key.to_string(), outcome).await;
        Ok(())
    }
}

/// The longest token a key or subject gets from one input value: a
/// 3,000-character branch name made a key over the protocol's control-line
/// limit, the connection dropped, and that parcel's messages never went.
pub const MAX_TOKEN: usize = 128;

/// A string as a KV key or subject token: `[-_=a-zA-Z0-9]` kept, anything
/// else `=XX`. A token longer than [`MAX_TOKEN`] keeps its head and ends in
/// `=Z` and the hash of the whole text (`=Z` is never an escape, so a
/// hashed token meets no plain one).
pub fn token(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TOKEN));
    for b in text.bytes() {
        if out.len() > MAX_TOKEN {
            break;
        }
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.len() > MAX_TOKEN {
        let head = MAX_TOKEN - 34;
        // Never cut inside an escape.
        let cut = out[..head].rfind('=').filter(|&i| i + 3 > head).unwrap_or(head);
        out.truncate(cut);
        out.push_str(&format!("=Z{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dispatch::CustomerChannels;
    use crate::dispatch::notice::Notice;
    use crate::dispatch::route::tests::{notice, routed};

    /// The channels of the customer drafts the ledger admits of `n`'s, with one channel wanted.
    async fn admitted(ledger: &Ledger, n: &std::sync::Arc<Notice>) -> Vec<&'static str> {
        let (drafts, _) = routed(n, 0.0, CustomerChannels::First);
        let (wanted, _) = ledger.admit(&drafts).await.unwrap();
        wanted.iter().filter(|d| d.target.audience() == "customer").map(|d| d.target.channel()).collect()
    }

    #[tokio::test]
    async fn a_failed_first_channel_gives_way_to_its_fallback_once_and_the_follow_up_goes_where_it_went() {
        let ledger = Ledger::new(None, 100);
        let late = notice("late", "customer", Some(vec!["sms", "email"]));
        assert_eq!(admitted(&ledger, &late).await, ["sms"]);
        let (drafts, _) = routed(&late, 0.0, CustomerChannels::First);
        let record = |d: &Draft, r: Recorded| {
            let ledger = ledger.clone();
            let key = d.slot();
            async move { ledger.record(&key, r, Bytes::new()).await.unwrap() }
        };
        record(&drafts[0], Recorded::Final("failed".into())).await;
        // A restart between the failure and the fallback: the email is still to send.
        assert_eq!(admitted(&ledger, &late).await, ["email"]);
        record(drafts[0].fallback.as_deref().unwrap(), Recorded::Sent).await;
        assert!(admitted(&ledger, &late).await.is_empty(), "once");
        // It is delivered: the follow-up goes where the customer was told.
        let resolved = std::sync::Arc::new(Notice { resolved: true, ..(*late).clone() });
        assert_eq!(admitted(&ledger, &resolved).await, ["email"]);
        // Told by SMS: the follow-up by SMS, not by email.
        let other = std::sync::Arc::new(Notice { alert_id: "f".repeat(32), ..(*late).clone() });
        let (drafts, _) = routed(&other, 0.0, CustomerChannels::First);
        record(&drafts[0], Recorded::Sent).await;
        let resolved = std::sync::Arc::new(Notice { resolved: true, ..(*other).clone() });
        assert_eq!(admitted(&ledger, &resolved).await, ["sms"]);
    }

    /// A revised estimate goes only where the estimate it revises went: a
    /// customer whose first message was taken back (its delay over before
    /// the morning) or never sent is not told "the date we gave you has
    /// changed".
    #[tokio::test]
    async fn a_revision_goes_only_where_the_estimate_it_revises_went() {
        let ledger = Ledger::new(None, 100);
        let record = |n: &std::sync::Arc<Notice>, r: Recorded| {
            let (ledger, (drafts, _)) = (ledger.clone(), routed(n, 0.0, CustomerChannels::First));
            async move { ledger.record(&drafts[0].slot(), r, Bytes::new()).await.unwrap() }
        };
        let revision = |of: &std::sync::Arc<Notice>| {
            let mut n = (*notice("revised_estimate", "customer", Some(vec!["sms", "email"]))).clone();
            (n.alert_id, n.revises) = ("e".repeat(32), Some(of.alert_id.clone()));
            std::sync::Arc::new(n)
        };
        let stalled = notice("stalled", "customer", Some(vec!["sms", "email"]));
        record(&stalled, Recorded::Sent).await;
        assert_eq!(admitted(&ledger, &revision(&stalled)).await, ["sms"]);
        let taken_back = std::sync::Arc::new(Notice { alert_id: "d".repeat(32), ..(*stalled).clone() });
        record(&taken_back, Recorded::Final("resolved_first".into())).await;
        let (drafts, _) = routed(&revision(&taken_back), 0.0, CustomerChannels::First);
        let (wanted, outcomes) = ledger.admit(&drafts).await.unwrap();
        assert!(wanted.iter().all(|d| d.target.audience() != "customer"), "no customer message: {wanted:?}");
        assert!(outcomes.iter().any(|o| matches!(o, Outcome::Skipped { reason: "not_told", .. })), "{outcomes:?}");
        let never = std::sync::Arc::new(Notice { alert_id: "c".repeat(32), ..(*stalled).clone() });
        assert!(admitted(&ledger, &revision(&never)).await.is_empty(), "nothing told, nothing revised");
    }

    #[test]
    fn records_read_back_from_outcomes_and_bare_words() {
        assert_eq!(Recorded::decode(br#"{"outcome":"sent","channel":"sms"}"#), Recorded::Sent);
        assert_eq!(Recorded::decode(br#"{"outcome":"failed","reason":"HTTP 400"}"#), Recorded::Final("failed".into()));
        assert_eq!(Recorded::decode(br#"{"outcome":"skipped","reason":"grouped"}"#), Recorded::Final("grouped".into()));
        assert_eq!(Recorded::decode(b"sent"), Recorded::Sent);
        let intent = br#"{"outcome":"intent","by":"dispatch@h:7","at":"2026-11-20T10:00:00Z"}"#;
        assert_eq!(
            Recorded::decode(intent),
            Recorded::Intent("claimed by dispatch@h:7 at 2026-11-20T10:00:00Z".into())
        );
        assert_eq!(Recorded::decode(br#"{"outcome":"unknown","reason":"r"}"#), Recorded::Final("unknown".into()));
        assert_eq!(slot(Some("1Z.9"), "ab.firing"), "1Z=2E9.ab.firing");
        assert_eq!(slot(None, "digest"), "-.digest");
    }

    #[test]
    fn tokens_keep_keys_valid_and_distinct() {
        assert_eq!(token("FR-PAR-12"), "FR-PAR-12");
        assert_eq!(token("a.b c"), "a=2Eb=20c");
        assert_ne!(token("a.b"), token("a=2Eb"));
    }

    #[test]
    fn a_long_name_makes_a_bounded_token_of_its_own() {
        let branch = "B".repeat(3000);
        let long = token(&branch);
        assert!(long.len() <= MAX_TOKEN, "{}", long.len());
        assert!(long.starts_with("BBBB") && long.contains("=Z"), "{long}");
        assert_ne!(long, token(&format!("{}C", "B".repeat(2999))), "names differing at the end stay apart");
        assert_eq!(long, token(&branch), "the same name, the same key");
        // Escapes are not cut in half, and a value at the limit is kept as it is.
        let dotted = token(&".".repeat(500));
        assert!(dotted.trim_end_matches(|c: char| c.is_ascii_hexdigit()).ends_with("=Z"), "{dotted}");
        assert!(dotted.split("=Z").next().unwrap().split('=').skip(1).all(|e| e.len() == 2), "{dotted}");
        assert_eq!(token(&"x".repeat(MAX_TOKEN)), "x".repeat(MAX_TOKEN));
    }
}
