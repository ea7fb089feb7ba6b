//! Signed JSON webhooks: branch systems and the CRM's claims. The body is
//! signed with HMAC-SHA256 (`X-Forewarn-Signature: sha256=<hex>`) and carries
//! an `Idempotency-Key`, so a receiver can refuse forgeries and drop the
//! copy of a retried request. Without a URL, the request is a line of
//! `webhooks.jsonl` in the outbox.

use std::path::PathBuf;

use super::{append_line, classify, request_failure, signature, Failure};

pub const SIGNATURE: &str = "X-Forewarn-Signature";
pub const IDEMPOTENCY: &str = "Idempotency-Key";

#[derive(Clone)]
pub struct Webhooks {
    pub client: reqwest::Client,
    pub secret: Option<String>,
    pub outbox: PathBuf,
}

impl Webhooks {
    /// POSTs `body` (JSON) to `url`, or appends it to the outbox when `url` is empty.
    pub async fn post(&self, url: &str, key: &str, body: Vec<u8>) -> Result<(), Failure> {
        if url.is_empty() {
            let line = serde_json::json!({ "idempotency_key": key, "body": serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default() });
            return append_line(&self.outbox.join("webhooks.jsonl"), line.to_string().as_bytes());
        }
        post_signed(&self.client, url, self.secret.as_deref(), key, body).await
    }
}

/// One signed POST, its answer classified.
pub async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&str>,
    key: &str,
    body: Vec<u8>,
) -> Result<(), Failure> {
    let mut request =
        client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").header(IDEMPOTENCY, key);
    if let Some(secret) = secret {
        request = request.header(SIGNATURE, signature(secret.as_bytes(), &body));
    }
    let response = request.body(body).send().await.map_err(|e| request_failure(&e))?;
    classify(response.status(), response.headers())
}
