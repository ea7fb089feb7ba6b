//! The logs of the long-running commands: standard error, levels by
//! `RUST_LOG`, text or JSON, and no value can forge a line.

/// Logs on standard error, levels by `RUST_LOG`, as text or as one JSON
/// object a line (`FOREWARN_LOG_FORMAT=json`) for log collectors.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(|| Escaped(Vec::new()));
    let _ = match std::env::var("FOREWARN_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().flatten_event(true).with_current_span(false).try_init(),
        _ => logs.try_init(),
    };
}

/// One log record, written to standard error when done with every control
/// and bidirectional-override character escaped but its final newline: a
/// value that carries CR/LF (an address, a reason, a rule file's text)
/// cannot forge a line, whatever the format.
struct Escaped(Vec<u8>);

impl std::io::Write for Escaped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Escaped {
    fn drop(&mut self) {
        let line = escape_controls(&String::from_utf8_lossy(&self.0));
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }
}

/// `text` with control characters (but a final newline and tabs) and the
/// bidirectional controls written as `\u{…}` escapes.
fn escape_controls(text: &str) -> String {
    let body = text.strip_suffix('\n');
    let mut out = String::with_capacity(text.len() + 1);
    for c in body.unwrap_or(text).chars() {
        if c != '\t' && forewarn::event::is_unprintable(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    if body.is_some() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn a_log_line_stays_one_line_whatever_its_values_carry() {
        let forged = "WARN dead letter to=e@x.fr\r\nINFO Bcc: victim@evil.example \u{1b}[2J \u{202e}txt.exe\n";
        let line = escape_controls(forged);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        assert!(line.contains(r"\u{d}\u{a}INFO Bcc"), "{line}");
        assert!(line.contains(r"\u{1b}[2J") && line.contains(r"\u{202e}txt.exe"), "{line}");
        assert_eq!(escape_controls("plain\tline\n"), "plain\tline\n");
    }
}
