//! `forewarn dlq list|replay`: what was refused and why, and sending it
//! back to its original subject once the cause is fixed.

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures::StreamExt;

use crate::nats::wire::{ORIGINAL_SUBJECT, REASON, REASON_CODE};
use crate::nats::{connect, LiveError};

/// One dead letter.
#[derive(Debug, Clone)]
pub struct Letter {
    pub sequence: u64,
    pub subject: String,
    pub code: String,
    pub reason: String,
    pub body: bytes::Bytes,
}

/// Every dead letter in the stream, oldest first; none before the stream exists.
pub async fn list(js: &jetstream::Context, stream: &str) -> Result<Vec<Letter>, LiveError> {
    let mut handle = match js.get_stream(stream).await {
        Ok(handle) => handle,
        Err(e) if connect::is_not_found(&e.kind()) => return Ok(Vec::new()),
        Err(e) => return Err(LiveError::nats("dead-letter stream", e)),
    };
    let state = handle.info().await.map_err(|e| LiveError::nats("dead-letter stream", e))?.state.clone();
    let total = state.messages;
    if total == 0 {
        return Ok(Vec::new());
    }
    // An ordered, unacknowledged read of the whole stream: it leaves no trace.
    let consumer = handle
        .create_consumer(pull::OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() })
        .await
        .map_err(|e| LiveError::nats("dead-letter read", e))?;
    let mut messages = consumer.messages().await.map_err(|e| LiveError::nats("dead-letter read", e))?;
    let last = state.last_sequence;
    let mut letters = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| LiveError::nats("dead-letter read", e))?;
        let sequence = message.info().map_err(|e| LiveError::nats("dead-letter read", e))?.stream_sequence;
        let header = |name: &str| {
            message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string()).unwrap_or_default()
        };
        letters.push(Letter {
            sequence,
            subject: header(ORIGINAL_SUBJECT),
            code: header(REASON_CODE),
            reason: header(REASON),
            body: message.payload.clone(),
        });
        if sequence >= last {
            break;
        }
    }
    Ok(letters)
}

/// Republishes the chosen letters to their original subjects and removes
/// each from the dead-letter stream once the server stored the copy.
pub async fn replay(js: &jetstream::Context, stream: &str, letters: &[Letter]) -> Result<usize, LiveError> {
    let handle = js.get_stream(stream).await.map_err(|e| LiveError::nats("dead-letter stream", e))?;
    let mut done = 0;
    for letter in letters {
        if letter.subject.is_empty() {
            continue;
        }
        js.publish(letter.subject.clone(), letter.body.clone())
            .await
            .map_err(|e| LiveError::nats("replay publish", e))?
            .await
            .map_err(|e| LiveError::nats("replay publish", e))?;
        handle.delete_message(letter.sequence).await.map_err(|e| LiveError::nats("dead-letter delete", e))?;
        done += 1;
    }
    Ok(done)
}
