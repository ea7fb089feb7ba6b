//! Where messages leave: email over SMTP ([`email`]), SMS through an HTTP
//! gateway ([`sms`]), signed JSON webhooks ([`webhook`]), each with an
//! outbox-directory form for when no server is configured.
//!
//! Every send ends in `Ok` or a [`Failure`] that says whether trying again
//! can help: the retry stage decides on that alone.

pub mod email;
pub mod sms;
pub mod webhook;

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a send did not go through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Try again later (SMTP 4xx, connection errors, HTTP 5xx, 429, timeouts);
    /// not before `retry_after` when the server said so.
    Transient { reason: String, retry_after: Option<Duration> },
    /// Trying again cannot help (SMTP 5xx, other HTTP 4xx, an invalid address).
    Permanent { reason: String },
}

impl Failure {
    pub fn transient(reason: impl Into<String>) -> Failure {
        Failure::Transient { reason: reason.into(), retry_after: None }
    }

    pub fn permanent(reason: impl Into<String>) -> Failure {
        Failure::Permanent { reason: reason.into() }
    }

    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient { reason, .. } | Failure::Permanent { reason } => reason,
        }
    }
}

/// What an HTTP answer means for the message: success, retry, or give up.
pub fn classify(status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    let reason = format!("HTTP {}", status.as_u16());
    if status.is_server_error() || status == 429 || status == 408 {
        let retry_after = headers.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_after);
        return Err(Failure::Transient { reason, retry_after });
    }
    Err(Failure::permanent(reason))
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn retry_after(text: &str) -> Option<Duration> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(text.trim()).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// A request error: timeouts and connection failures are worth retrying.
pub fn request_failure(e: &reqwest::Error) -> Failure {
    if e.is_timeout() || e.is_connect() || e.is_request() || e.is_body() {
        Failure::transient(format!("{}", DisplayError(e)))
    } else {
        Failure::permanent(format!("{}", DisplayError(e)))
    }
}

/// An error and its causes on one line, without the URL (it may carry a token).
struct DisplayError<'a>(&'a reqwest::Error);

impl std::fmt::Display for DisplayError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0;
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else {
            "request failed"
        };
        f.write_str(kind)?;
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A secret from the environment, or from the file an environment variable
/// `<NAME>_FILE` names. Never logged.
pub fn secret(name: &str) -> Result<Option<String>, String> {
    if let Ok(value) = std::env::var(name) {
        return Ok(Some(value));
    }
    let file_var = format!("{name}_FILE");
    match std::env::var(&file_var) {
        Ok(path) => std::fs::read_to_string(&path)
            .map(|s| Some(s.trim().to_string()))
            .map_err(|e| format!("{file_var}: cannot read {path}: {e}")),
        Err(_) => Ok(None),
    }
}

/// Appends one line to an outbox file, creating the directory.
pub fn append_line(path: &Path, line: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        file.write_all(&buf)
    };
    write().map_err(|e| Failure::transient(format!("outbox {}: {e}", path.display())))
}

/// A reqwest client with a timeout.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(256)
        .user_agent(concat!("forewarn/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
    use reqwest::StatusCode;

    #[test]
    fn http_answers_decide_retries() {
        let none = HeaderMap::new();
        assert_eq!(classify(StatusCode::OK, &none), Ok(()));
        assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE, &none), Err(Failure::transient("HTTP 503")));
        assert_eq!(classify(StatusCode::BAD_REQUEST, &none), Err(Failure::permanent("HTTP 400")));
        let mut later = HeaderMap::new();
        later.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &later),
            Err(Failure::Transient { reason: "HTTP 429".into(), retry_after: Some(Duration::from_secs(7)) })
        );
    }

    #[test]
    fn signatures_are_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
