//! Phone numbers and email addresses: checked before anything is sent
//! (an invalid one is a permanent failure, never retried) and masked
//! wherever they could reach a log.

use std::fmt;

/// Checks an E.164 number (`+` and the full international number) and
/// returns it in canonical E.164 form.
pub fn e164(text: &str) -> Result<String, String> {
    if !text.starts_with('+') {
        return Err(format!("{} is not E.164 (it must start with + and the country code)", Masked(text)));
    }
    let number = phonenumber::parse(None, text).map_err(|e| format!("{} is not a phone number: {e}", Masked(text)))?;
    if !phonenumber::is_valid(&number) {
        return Err(format!("{} is not a valid number for its country", Masked(text)));
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Checks an email address (no display name, no CR/LF).
pub fn email(text: &str) -> Result<lettre::Address, String> {
    text.parse::<lettre::Address>().map_err(|e| format!("{} is not an email address: {e}", Masked(text)))
}

/// A phone number or address as logs, outcomes and the agent API may show
/// it: enough to tell two apart for whoever already knows them, not enough
/// to contact anyone. An address keeps its first character and the domain
/// after its last `@`; a number its first four and last two characters.
/// Anything else (a list of addresses, a line break, a forged header) shows
/// as `***`: input decides nothing of what a log line says.
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if let Some((user, domain)) = s.rsplit_once('@') {
            let first = user.chars().next().filter(char::is_ascii_alphanumeric);
            let is_domain = !domain.is_empty()
                && domain.len() <= 253
                && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            return match (first, is_domain) {
                (Some(first), true) => write!(f, "{first}***@{domain}"),
                _ => f.write_str("***"),
            };
        }
        let phone_like = s.chars().all(|c| c.is_ascii_digit() || "+ -().".contains(c));
        let chars: Vec<char> = s.chars().collect();
        if !phone_like || chars.len() <= 6 {
            return f.write_str("***");
        }
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 2..].iter().collect();
        write!(f, "{head}***{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_checked_as_e164() {
        assert_eq!(e164("+33612345678").unwrap(), "+33612345678");
        assert_eq!(e164("+8613812345678").unwrap(), "+8613812345678");
        assert!(e164("0612345678").unwrap_err().contains("not E.164"));
        assert!(e164("+331").is_err());
    }

    #[test]
    fn masks_hide_the_middle() {
        assert_eq!(Masked("+33612345678").to_string(), "+336***78");
        assert_eq!(Masked("lea.martin@example.fr").to_string(), "l***@example.fr");
        assert!(!Masked("+33612345678").to_string().contains("12345"));
    }

    #[test]
    fn masks_cannot_be_forged_or_leak_a_second_address() {
        // Once "e***@example.fr, victim@evil.example" in logs and the agent API.
        assert_eq!(Masked("e@example.fr, victim@evil.example").to_string(), "e***@evil.example");
        assert_eq!(Masked("e@example.fr\r\nBcc: victim@evil.example").to_string(), "e***@evil.example");
        assert_eq!(Masked("lea@example.fr\r\nBcc: x").to_string(), "***", "not a domain after the last @");
        assert_eq!(Masked("\u{202e}@example.fr").to_string(), "***");
        assert_eq!(Masked("+3361234\r\n5678").to_string(), "***");
        assert_eq!(Masked("+33 6 12 34 56 78").to_string(), "+33 ***78");
    }

    #[test]
    fn header_injection_is_not_an_address() {
        assert!(email("a@b.fr\r\nBcc: x@y.z").is_err());
        assert!(email("lea@example.fr").is_ok());
    }
}
