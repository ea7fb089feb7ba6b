//! Email with lettre: pooled SMTP connections (plain, STARTTLS or TLS, auth
//! from the environment), multipart text + HTML, an optional attachment,
//! `List-Unsubscribe` on customer mail; or `.eml` files in the outbox.
//!
//! Names and subjects come from outside: control characters are removed
//! before lettre sees them, so CR/LF can neither add a header nor panic the
//! builder.
//!
//! lettre's `timeout` bounds the connection only, not the SMTP conversation
//! (lettre issue #1027): a server that stops answering mid-send held the
//! send, and its sending permit, for ever. A send is bounded here as a
//! whole; one that times out is a transient failure, and the transport's
//! pool is replaced so that the connection left mid-conversation is never
//! used again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{secret, Failure};
use crate::config::dispatch::Email as Config;
use crate::dispatch::address::{self, Masked};
use crate::dispatch::template::EmailText;

/// One email to send.
#[derive(Clone, Debug)]
pub struct Mail {
    pub to_name: Option<String>,
    pub to: String,
    pub content: EmailText,
    /// Customer mail: where to stop these messages.
    pub unsubscribe: Option<String>,
    pub attachment: Option<(String, Vec<u8>)>,
    /// Stable per message: the outbox file name and the Message-ID.
    pub key: String,
}

#[derive(Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_string()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

/// Where mail goes.
#[derive(Clone)]
pub enum Mailer {
    Smtp { smtp: Smtp, from: Mailbox },
    Outbox { dir: PathBuf, from: Mailbox },
}

/// An SMTP transport whose sends are bounded in time.
#[derive(Clone)]
pub struct Smtp {
    builder: Arc<AsyncSmtpTransportBuilder>,
    /// Replaced, with its pool, after a send timed out.
    transport: Arc<Mutex<AsyncSmtpTransport<Tokio1Executor>>>,
    timeout: Duration,
}

impl Smtp {
    fn transport(&self) -> AsyncSmtpTransport<Tokio1Executor> {
        self.transport.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sends `message`; `Err(None)` when the server did not finish answering in time.
    async fn send(&self, message: Message) -> Result<(), Option<lettre::transport::smtp::Error>> {
        let transport = self.transport();
        match tokio::time::timeout(self.timeout, transport.send(message)).await {
            Ok(sent) => sent.map(|_| ()).map_err(Some),
            Err(_) => {
                *self.transport.lock().unwrap_or_else(PoisonError::into_inner) =
                    AsyncSmtpTransportBuilder::clone(&self.builder).build();
                Err(None)
            }
        }
    }
}

/// Text safe for a header: no control characters, one line.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_string()
}

impl Mailer {
    /// SMTP when `config.smtp` is set (credentials from `FOREWARN_SMTP_USER`
    /// and `FOREWARN_SMTP_PASSWORD`), otherwise the outbox.
    pub fn new(config: &Config, outbox: PathBuf) -> Result<Mailer, String> {
        let from: Mailbox = config.from.parse().map_err(|e| format!("dispatch.email.from {:?}: {e}", config.from))?;
        if config.smtp.is_empty() {
            return Ok(Mailer::Outbox { dir: outbox.join("email"), from });
        }
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp).map_err(|e| {
            format!(
                "dispatch.email.smtp: {e}; use smtp://host:port, smtp://host:port?tls=required (STARTTLS) or smtps://host:port"
            )
        })?;
        if let Some(user) = secret("FOREWARN_SMTP_USER")? {
            let password = secret("FOREWARN_SMTP_PASSWORD")?.unwrap_or_default();
            builder = builder.credentials(Credentials::new(user, password));
        }
        let timeout = Duration::from_millis(config.timeout.0.max(1) as u64);
        let builder = builder.pool_config(PoolConfig::new().max_size(config.pool.max(1))).timeout(Some(timeout));
        let transport = Arc::new(Mutex::new(builder.clone().build()));
        Ok(Mailer::Smtp { smtp: Smtp { builder: Arc::new(builder), transport, timeout }, from })
    }

    fn from(&self) -> &Mailbox {
        match self {
            Mailer::Smtp { from, .. } | Mailer::Outbox { from, .. } => from,
        }
    }

    /// Builds the message; an invalid address is a permanent failure.
    pub fn build(&self, mail: &Mail) -> Result<Message, Failure> {
        let address = address::email(&mail.to).map_err(Failure::permanent)?;
        let name = mail.to_name.as_deref().map(one_line).filter(|n| !n.is_empty());
        let mut builder = Message::builder()
            .from(self.from().clone())
            .to(Mailbox::new(name, address))
            .subject(one_line(&mail.content.subject))
            .message_id(Some(format!("<{}@forewarn>", mail.key)));
        if let Some(url) = &mail.unsubscribe {
            builder = builder.header(ListUnsubscribe(one_line(url)));
        }
        let body = MultiPart::alternative_plain_html(mail.content.text.clone(), mail.content.html.clone());
        let body = match &mail.attachment {
            None => body,
            Some((file_name, bytes)) => MultiPart::mixed().multipart(body).singlepart(
                Attachment::new(one_line(file_name))
                    .body(bytes.clone(), ContentType::parse("text/csv").unwrap_or(ContentType::TEXT_PLAIN)),
            ),
        };
        builder.multipart(body).map_err(|e| Failure::permanent(format!("cannot build the message: {e}")))
    }

    pub async fn send(&self, mail: &Mail) -> Result<(), Failure> {
        let message = self.build(mail)?;
        match self {
            Mailer::Smtp { smtp, .. } => smtp.send(message).await.map_err(|e| match e {
                Some(e) if e.is_permanent() => Failure::permanent(format!("SMTP to {}: {e}", Masked(&mail.to))),
                Some(e) => Failure::transient(format!("SMTP to {}: {e}", Masked(&mail.to))),
                None => Failure::transient(format!(
                    "SMTP to {}: no answer within {} ms",
                    Masked(&mail.to),
                    smtp.timeout.as_millis()
                )),
            }),
            Mailer::Outbox { dir, .. } => {
                let write = || -> std::io::Result<()> {
                    std::fs::create_dir_all(dir)?;
                    let tmp = dir.join(format!(".{}.tmp", mail.key));
                    std::fs::write(&tmp, message.formatted())?;
                    std::fs::rename(&tmp, dir.join(format!("{}.eml", mail.key)))
                };
                write().map_err(|e| Failure::transient(format!("outbox {}: {e}", dir.display())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(name: &str, subject: &str) -> Mail {
        Mail {
            to_name: Some(name.into()),
            to: "lea@example.fr".into(),
            content: EmailText { subject: subject.into(), text: "texte".into(), html: "<p>texte</p>".into() },
            unsubscribe: Some("https://track.example.com/unsubscribe/1".into()),
            attachment: None,
            key: "k1".into(),
        }
    }

    #[test]
    fn crlf_in_a_name_or_subject_adds_no_header() {
        let mailer = Mailer::new(&Config::default(), "/tmp".into()).unwrap();
        let message = mailer.build(&mail("Léa\r\nBcc: evil@example.com", "Colis\r\nBcc: evil@example.com")).unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(!text.lines().any(|l| l.starts_with("Bcc:")), "{text}");
        assert!(text.contains("List-Unsubscribe: <https://track.example.com/unsubscribe/1>"));
    }

    #[test]
    fn non_ascii_names_and_subjects_are_encoded() {
        let mailer = Mailer::new(&Config::default(), "/tmp".into()).unwrap();
        let message = mailer.build(&mail("李雷", "您的包裹已送达")).unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        let subject = text.lines().find(|l| l.starts_with("Subject:")).unwrap();
        assert!(subject.is_ascii() && subject.contains("=?utf-8?"), "{subject}");
    }
}
