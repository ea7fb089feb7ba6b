//! A JetStream pull consumer read straight off the connection. The client's
//! own pull stream wraps every message with a clone of the JetStream
//! context and parses its reply subject into dates the processor does not
//! need: about 15 % of forewarn's time in the live bench. Here the
//! consumer's messages arrive on an inbox subscription as they are; the
//! next pull goes out when half of the last is taken, and a consumer that
//! sends neither messages nor heartbeats for two heartbeat intervals is an
//! error (the processor then reopens it at its position).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{Client, StatusCode, Subscriber};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Sleep;

/// How long one pull stays open on the server (it then ends with a 408
/// saying how many of its messages were left undelivered).
const EXPIRES: Duration = Duration::from_secs(30);

/// A message of the consumer, with where it sits in its stream.
pub struct Delivery {
    pub message: async_nats::Message,
    /// Its sequence in the stream.
    pub seq: u64,
    /// When the server stored it.
    pub published: SystemTime,
}

/// Why the consumer's messages stopped; the processor reopens it.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("no message nor heartbeat for {0:?}")]
    MissedHeartbeats(Duration),
    #[error("a pull request could not be sent: {0}")]
    Request(String),
    #[error("the server ended the consumer: {0}")]
    Status(String),
    #[error("a message without a JetStream reply subject: {0:?}")]
    NotJetStream(Option<String>),
}

/// The messages of one durable pull consumer, in stream order.
pub struct Pull {
    messages: Subscriber,
    /// Asks the request task for one more pull.
    ask: mpsc::Sender<()>,
    /// The request task's answer: the pull went out, or why not.
    sent: mpsc::Receiver<Result<(), String>>,
    batch: usize,
    /// Messages asked for and not yet delivered or given up by the server.
    pending: usize,
    /// A pull asked for and not yet confirmed sent.
    asking: bool,
    heartbeat: Duration,
    /// Armed while no message is at hand: missed heartbeats past it.
    silence: Option<Pin<Box<Sleep>>>,
}

impl Pull {
    /// Reads consumer `durable` of `stream` in pulls of `batch` messages, the
    /// server sending a heartbeat every `heartbeat` while it has none.
    pub async fn open(
        client: &Client,
        stream: &str,
        durable: &str,
        batch: usize,
        heartbeat: Duration,
    ) -> Result<Pull, async_nats::SubscribeError> {
        let inbox = client.new_inbox();
        let messages = client.subscribe(inbox.clone()).await?;
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}");
        let body: bytes::Bytes = serde_json::json!({
            "batch": batch,
            "expires": EXPIRES.as_nanos() as u64,
            "idle_heartbeat": heartbeat.as_nanos() as u64,
        })
        .to_string()
        .into();
        let (ask, mut asked) = mpsc::channel::<()>(1);
        let (confirm, sent) = mpsc::channel(1);
        let client = client.clone();
        // Publishing awaits the connection; a task of its own keeps the stream's polling free of it.
        tokio::spawn(async move {
            while asked.recv().await.is_some() {
                let result = client.publish_with_reply(subject.clone(), inbox.clone(), body.clone()).await;
                if confirm.send(result.map_err(|e| e.to_string())).await.is_err() {
                    break;
                }
            }
        });
        Ok(Pull { messages, ask, sent, batch, pending: 0, asking: false, heartbeat, silence: None })
    }
}

impl Stream for Pull {
    type Item = Result<Delivery, PullError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if !this.asking && this.pending <= this.batch / 2 {
                if this.ask.try_send(()).is_err() {
                    return Poll::Ready(Some(Err(PullError::Request("the request task ended".into()))));
                }
                this.asking = true;
            }
            match this.sent.poll_recv(cx) {
                Poll::Ready(Some(Ok(()))) => {
                    this.pending += this.batch;
                    this.asking = false;
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(PullError::Request(e)))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            match this.messages.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => {
                    this.silence = None;
                    match message.status {
                        None | Some(StatusCode::OK) => {
                            this.pending = this.pending.saturating_sub(1);
                            let Some((seq, published)) = message.reply.as_deref().and_then(position) else {
                                let reply = message.reply.map(|r| r.to_string());
                                return Poll::Ready(Some(Err(PullError::NotJetStream(reply))));
                            };
                            return Poll::Ready(Some(Ok(Delivery { message, seq, published })));
                        }
                        Some(StatusCode::IDLE_HEARTBEAT) => continue,
                        // A pull ended (expired, or cut short by the server): what it left undelivered.
                        Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED)
                            if message.description.as_deref().is_none_or(|d| !ends_consumer(d)) =>
                        {
                            let left = message
                                .headers
                                .as_ref()
                                .and_then(|h| h.get("Nats-Pending-Messages"))
                                .and_then(|v| v.as_str().parse().ok())
                                .unwrap_or(this.batch);
                            this.pending = this.pending.saturating_sub(left);
                            continue;
                        }
                        Some(status) => {
                            let why = format!("{status} {}", message.description.unwrap_or_default());
                            return Poll::Ready(Some(Err(PullError::Status(why))));
                        }
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            let limit = 2 * this.heartbeat;
            let silence = this.silence.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            return match silence.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.silence = None;
                    Poll::Ready(Some(Err(PullError::MissedHeartbeats(limit))))
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// Whether a 408/409's description says the consumer itself is gone or
/// misused, rather than that one pull ended.
fn ends_consumer(description: &str) -> bool {
    ["Consumer Deleted", "Consumer is push based", "Exceeded MaxRequest"].iter().any(|d| description.starts_with(d))
}

/// The stream sequence and the time stored of a JetStream message, from its
/// reply subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.
/// <consumer seq>.<nanoseconds>.<pending>`, or with `<domain>.<account>.`
/// before the stream and any tokens after (ADR-15).
pub fn position(reply: &str) -> Option<(u64, SystemTime)> {
    // One pass over the bytes: `str::split` costs a search per token, and
    // this runs for every message.
    let rest = reply.strip_prefix("$JS.ACK.")?.as_bytes();
    // Where tokens 0 to 8 begin; token k ends before token k + 1.
    let mut starts = [0; 9];
    let mut tokens = 1;
    for (i, &b) in rest.iter().enumerate() {
        if b == b'.' {
            if let Some(start) = starts.get_mut(tokens) {
                *start = i + 1;
            }
            tokens += 1;
        }
    }
    let first = match tokens {
        7 => 0,
        n if n >= 9 => 2,
        _ => return None,
    };
    // Both tokens read are followed by another (`<pending>` at least).
    let token = |k: usize| &rest[starts[k]..starts[k + 1] - 1];
    let seq = digits(token(first + 3))?;
    let nanos = digits(token(first + 5))?;
    Some((seq, UNIX_EPOCH + Duration::from_nanos(nanos)))
}

/// A decimal number of up to 19 digits (no overflow, no sign).
fn digits(token: &[u8]) -> Option<u64> {
    if token.is_empty() || token.len() > 19 {
        return None;
    }
    token.iter().try_fold(0u64, |n, &b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_subject_gives_the_stream_sequence_and_the_time_stored() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_764_950_400_123_456_789);
        // The 9-token form of servers before 2.10.
        assert_eq!(position("$JS.ACK.SCANS.forewarn-0.1.4711.17.1764950400123456789.42"), Some((4711, at)));
        // ADR-15: domain (`_` for none) and account hash first, a random token after.
        assert_eq!(
            position("$JS.ACK._.ACCHASH.SCANS.forewarn-0.1.4712.18.1764950400123456789.0.x9Rb"),
            Some((4712, at))
        );
        assert_eq!(position("$JS.ACK.hub.ACCHASH.SCANS.forewarn-0.1.4713.18.1764950400123456789.0"), Some((4713, at)));
        for bad in [
            "",
            "_INBOX.abc",
            "$JS.ACK.SCANS.forewarn-0.1.4711",
            "$JS.ACK.SCANS.forewarn-0.1.x.17.1764950400123456789.42",
            "$JS.ACK.SCANS.forewarn-0.1.4711.17.-5.42",
            "$JS.ACK._.ACC.SCANS.forewarn-0.1.4712.18.1764950400123456789",
            "$JS.ACK.SCANS.forewarn-0.1.4711.17.99999999999999999999.42",
            "$JS.ACK.SCANS.forewarn-0.1..17.1764950400123456789.42",
        ] {
            assert_eq!(position(bad), None, "{bad}");
        }
    }
}
