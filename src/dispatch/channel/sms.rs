//! SMS through an HTTP gateway: a Twilio-compatible API (form POST to
//! `<base>/2010-04-01/Accounts/<account>/Messages.json`, basic auth with the
//! account and `FOREWARN_SMS_TOKEN`) or a generic JSON webhook signed with
//! `FOREWARN_SMS_SECRET`; or one JSON line per SMS in the outbox.
//!
//! Numbers are checked as E.164 and texts capped to the configured number
//! of segments before anything leaves.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::webhook::post_signed;
use super::{append_line, classify, http_client, request_failure, secret, Failure};
use crate::config::dispatch::{Sms as Config, SmsProvider};
use crate::dispatch::address::{e164, Masked};
use crate::dispatch::segments;

/// One SMS to send.
#[derive(Clone, Debug)]
pub struct Text {
    pub to: String,
    pub body: String,
    /// Stable per message: the gateway can drop a retried copy.
    pub key: String,
}

#[derive(Clone)]
pub enum Gateway {
    Twilio { client: reqwest::Client, url: String, account: String, token: String, from: String },
    Webhook { client: reqwest::Client, url: String, secret: Option<String>, from: String },
    Outbox { path: PathBuf, from: String },
}

#[derive(Serialize)]
struct WebhookBody<'a> {
    to: &'a str,
    from: &'a str,
    text: &'a str,
    encoding: &'static str,
    segments: u32,
    idempotency_key: &'a str,
}

impl Gateway {
    pub fn new(config: &Config, outbox: PathBuf) -> Result<Gateway, String> {
        let from = config.from.clone();
        if config.url.is_empty() {
            return Ok(Gateway::Outbox { path: outbox.join("sms.jsonl"), from });
        }
        let client = http_client(Duration::from_millis(config.timeout.0.max(1) as u64))?;
        let url = config.url.trim_end_matches('/').to_string();
        match config.provider {
            SmsProvider::Twilio => {
                if config.account.is_empty() {
                    return Err("dispatch.sms.account: the Twilio account SID is needed".into());
                }
                let token = secret("FOREWARN_SMS_TOKEN")?
                    .ok_or("the Twilio auth token is needed: set FOREWARN_SMS_TOKEN (or FOREWARN_SMS_TOKEN_FILE)")?;
                Ok(Gateway::Twilio { client, url, account: config.account.clone(), token, from })
            }
            SmsProvider::Webhook => Ok(Gateway::Webhook { client, url, secret: secret("FOREWARN_SMS_SECRET")?, from }),
        }
    }

    /// The JSON of the webhook gateway and of the outbox: recipient, text, its encoding and segments.
    fn body(&self, to: &str, text: &Text) -> Result<Vec<u8>, Failure> {
        let from = match self {
            Gateway::Twilio { from, .. } | Gateway::Webhook { from, .. } | Gateway::Outbox { from, .. } => from,
        };
        let (encoding, segments) = segments::count(&text.body);
        let body = WebhookBody {
            to,
            from,
            text: &text.body,
            encoding: encoding.as_str(),
            segments,
            idempotency_key: &text.key,
        };
        serde_json::to_vec(&body).map_err(|e| Failure::permanent(e.to_string()))
    }

    /// Sends `text` (already capped); an invalid number is a permanent failure.
    pub async fn send(&self, text: &Text) -> Result<(), Failure> {
        let to = e164(&text.to).map_err(Failure::permanent)?;
        match self {
            Gateway::Twilio { client, url, account, token, from } => {
                let endpoint = format!("{url}/2010-04-01/Accounts/{account}/Messages.json");
                let response = client
                    .post(endpoint)
                    .basic_auth(account, Some(token))
                    .form(&[("To", to.as_str()), ("From", from.as_str()), ("Body", text.body.as_str())])
                    .send()
                    .await
                    .map_err(|e| request_failure(&e))?;
                classify(response.status(), response.headers())
            }
            Gateway::Webhook { client, url, secret, .. } => {
                post_signed(client, url, secret.as_deref(), &text.key, self.body(&to, text)?).await
            }
            Gateway::Outbox { path, .. } => append_line(path, &self.body(&to, text)?),
        }
        .map_err(|f| match f {
            Failure::Transient { reason, retry_after } => {
                Failure::Transient { reason: format!("SMS to {}: {reason}", Masked(&to)), retry_after }
            }
            Failure::Permanent { reason } => Failure::permanent(format!("SMS to {}: {reason}", Masked(&to))),
        })
    }
}
