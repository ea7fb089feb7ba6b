//! Why an event is refused, in words that name the field and quote nothing
//! long or personal: the [`Reject`] reasons and codes, and the slow path that
//! finds the field at fault once the fast typed pass has failed.

use super::*;

/// Why an event was rejected. The display text names the field; [`Reject::code`]
/// is the closed label used in metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("event larger than 64 KiB ({bytes} bytes)")]
    TooLarge { bytes: usize },
    #[error("not valid JSON: {0}")]
    BadJson(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("missing {0}")]
    Missing(Field),
    #[error("missing {field} (required on {kind})")]
    MissingFor { field: Field, kind: Kind },
    #[error("{field}: {problem}")]
    Invalid { field: Field, problem: String },
    #[error("unknown kind {0}")]
    UnknownKind(String),
    #[error("v: unsupported contract version {0} (this processor reads v1)")]
    UnsupportedVersion(String),
    #[error(
        "at: dated {ahead} after its arrival at the server (a scanner's clock?); refused, it moves no one's event time"
    )]
    Future { ahead: Span },
    #[error(
        "at: dated {ahead} ahead of the flow of scans, which did not follow it (a scanner's clock?); refused, it moved no one's event time"
    )]
    AheadOfFlow { ahead: Span },
}

impl Reject {
    /// Every [`Reject::code`], so a dashboard sees each at 0 before the first.
    pub const CODES: &[&str] = &[
        "too_large",
        "invalid_json",
        "missing_field",
        "invalid_field",
        "unknown_kind",
        "unsupported_version",
        "future_event",
    ];

    /// A label from a small closed set, for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::TooLarge { .. } => "too_large",
            Reject::BadJson(_) | Reject::NotAnObject => "invalid_json",
            Reject::Missing(_) | Reject::MissingFor { .. } => "missing_field",
            Reject::Invalid { .. } => "invalid_field",
            Reject::UnknownKind(_) => "unknown_kind",
            Reject::UnsupportedVersion(_) => "unsupported_version",
            Reject::Future { .. } | Reject::AheadOfFlow { .. } => "future_event",
        }
    }

    /// The field at fault, when there is one.
    pub fn field(&self) -> Option<Field> {
        match self {
            Reject::Missing(f) | Reject::MissingFor { field: f, .. } | Reject::Invalid { field: f, .. } => Some(*f),
            Reject::UnknownKind(_) => Some(Field::Kind),
            Reject::UnsupportedVersion(_) => Some(Field::V),
            Reject::Future { .. } | Reject::AheadOfFlow { .. } => Some(Field::At),
            _ => None,
        }
    }

    pub(super) fn invalid(field: Field, problem: impl Into<String>) -> Reject {
        Reject::Invalid { field, problem: problem.into() }
    }
}

/// Input quoted in a reason: short values as they are, anything long (or
/// that may be contact data) by its length only, so that reasons stay
/// bounded and hold no one's address.
pub(super) fn echo(value: &str) -> String {
    const MAX_ECHO: usize = 24;
    if value.chars().count() <= MAX_ECHO
        && !value.contains('@')
        && value.chars().all(|c| c.is_alphanumeric() || "_-. ".contains(c))
    {
        format!("{value:?}")
    } else {
        format!("a value of {} characters", value.chars().count())
    }
}

/// The slow path, taken only for input the typed pass refused: finds the
/// field whose JSON type is wrong, so the reason names it.
pub(super) fn explain(bytes: &[u8], err: serde_json::Error) -> Reject {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        // Out-of-range numbers (1e400), nesting past the recursion limit, a
        // cut-off document: still say in which field, when there is one.
        Err(e) => {
            return match field_at(bytes, offset(bytes, e.line(), e.column())) {
                Some(field) => Reject::invalid(field, format!("not valid JSON: {}", unquoted(&e))),
                None => Reject::BadJson(unquoted(&e)),
            }
        }
    };
    let Some(object) = value.as_object() else {
        return Reject::NotAnObject;
    };
    for (name, value) in object {
        let Some(field) = Field::parse(name) else {
            continue;
        };
        let expected = match field {
            Field::V => (!value.is_i64()).then_some("expected an integer"),
            Field::Recipient => match value.as_object().map(recipient_problem) {
                None => Some("expected an object"),
                Some(Some(problem)) => return problem,
                Some(None) => None,
            },
            _ => (!value.is_string() && !value.is_null()).then_some("expected a string"),
        };
        if let Some(problem) = expected {
            return Reject::invalid(field, problem);
        }
    }
    Reject::BadJson(unquoted(&err))
}

/// A parser's message without the input it quotes (`invalid type: string
/// "…"` can hold anything: an address, a control character).
fn unquoted(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match (text.find('"'), text.rfind('"')) {
        (Some(first), Some(last)) if last > first => format!("{}…{}", &text[..first], &text[last + 1..]),
        _ => text,
    }
}

/// Where the nesting passes [`MAX_DEPTH`], if it does. Only a document
/// with more opening brackets than that is scanned (one SIMD count else).
pub(super) fn too_deep(bytes: &[u8]) -> Option<usize> {
    if memchr::memchr2_iter(b'{', b'[', bytes).count() <= MAX_DEPTH {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The byte offset of a 1-based line and column.
fn offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let start: usize = bytes.split(|&b| b == b'\n').take(line.saturating_sub(1)).map(|l| l.len() + 1).sum();
    start + column.saturating_sub(1)
}

/// The top-level field whose value holds byte `offset` (or ends there), by
/// a scan that only follows strings and nesting (the document need not be valid).
pub(super) fn field_at(bytes: &[u8], offset: usize) -> Option<Field> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut start, mut last, mut key) = (0, (0, 0), None);
    for (i, &b) in bytes.iter().enumerate().take(offset + 1) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => (in_string, last) = (false, (start, i)),
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => (in_string, start) = (true, i + 1),
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 1 => key = Some(last),
            _ => {}
        }
    }
    let (s, e) = key?;
    Field::parse(std::str::from_utf8(&bytes[s..e]).ok()?)
}

fn recipient_problem(r: &serde_json::Map<String, serde_json::Value>) -> Option<Reject> {
    r.iter().find_map(|(name, value)| {
        let problem = match name.as_str() {
            "channels" => match value.as_array() {
                Some(list) if list.iter().all(|c| c.is_string()) => None,
                _ if value.is_null() => None,
                _ => Some(format!("channels: expected a list of strings, got {value}")),
            },
            "name" | "phone" | "email" | "locale" | "tz" if !value.is_string() && !value.is_null() => {
                Some(format!("{name}: expected a string"))
            }
            _ => None,
        };
        problem.map(|p| Reject::invalid(Field::Recipient, p))
    })
}
