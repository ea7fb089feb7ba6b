//! What forewarn writes on NATS besides checkpoints: alerts, branch facts and
//! watermark marks, dead letters. Subjects, message ids and headers live
//! here, so readers (`forewarn dlq`, the branch stage, tests) and writers
//! agree.

use std::time::SystemTime;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertId, AlertState};
use crate::engine::Fact;
use crate::event::Reject;
use crate::partition;
use crate::time::Ts;

/// Dead-letter headers: why, and where the message came from.
pub const REASON: &str = "Forewarn-Reason";
pub const REASON_CODE: &str = "Forewarn-Reason-Code";
pub const ORIGINAL_SUBJECT: &str = "Forewarn-Subject";
pub const ORIGINAL_STREAM: &str = "Forewarn-Stream";
pub const ORIGINAL_SEQUENCE: &str = "Forewarn-Sequence";
/// On a dead letter whose body was cut: the original size in bytes…
pub const ORIGINAL_SIZE: &str = "Forewarn-Original-Size";
/// …and the SHA-256 of the original bytes, in hex.
pub const ORIGINAL_SHA256: &str = "Forewarn-Original-Sha256";

/// The most of a refused message's bytes a dead letter keeps: an event
/// larger than this is refused whole, so its head shows what it was, and a
/// dead letter always fits under any server's `max_payload`.
pub const MAX_LETTER_BODY: usize = crate::event::MAX_EVENT_BYTES;
/// The longest reason a dead letter carries, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// A message to publish into JetStream, kept until the server stored it.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub subject: String,
    /// Sent as `Nats-Msg-Id`: JetStream drops a copy within the duplicate window.
    pub id: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Outgoing {
    /// The headers it goes with: its own and, with an id, `Nats-Msg-Id`.
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            map.insert(*name, value.as_str());
        }
        if let Some(id) = &self.id {
            map.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        map
    }
}

/// The subject on which the owner of `partition` answers the agent's lookups.
pub fn lookup_subject(partition: u16) -> String {
    format!("forewarn.lookup.parcel.{partition}")
}

/// The subject on which the owner of `partition` answers where parcels
/// stand, many at once (the at-risk lists ask it).
pub fn standing_subject(partition: u16) -> String {
    format!("forewarn.lookup.standing.{partition}")
}

/// The header of an alert message saying when what made it (the event, or
/// the clock moving the watermark) arrived, in Unix milliseconds: where the
/// dispatcher's end-to-end latency starts.
pub const ARRIVED: &str = "Forewarn-Arrived";

/// When an alert's cause arrived, from its message; `None` without the header.
pub fn arrived(headers: Option<&HeaderMap>) -> Option<SystemTime> {
    let ms: u64 = headers?.get(ARRIVED)?.as_str().parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// `alerts.parcel.<rule>`, `alerts.facility.<rule>` or `alerts.branch.<rule>`;
/// the id of the message is the alert id with its state, so a firing and its
/// resolution are two messages and a re-emitted one is dropped by JetStream.
pub fn alert(a: &Alert, arrived: SystemTime) -> Outgoing {
    let mut line = Vec::with_capacity(512);
    a.write_json_line(&mut line);
    line.pop();
    let about = match (&a.parcel, a.branch_facts.as_ref().and_then(|b| b.facility.as_ref())) {
        (Some(_), _) => "parcel",
        (None, Some(_)) => "facility",
        (None, None) => "branch",
    };
    let millis = arrived.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
    Outgoing {
        subject: ["alerts.", about, ".", &a.rule].concat(),
        id: Some(alert_message_id(a.id, a.state)),
        headers: vec![(ARRIVED, itoa::Buffer::new().format(millis).to_string())],
        body: Bytes::from(line),
    }
}

/// `<alert id>.<state>`.
fn alert_message_id(id: AlertId, state: AlertState) -> String {
    let hex = id.hex();
    // Hex digits are ASCII.
    [std::str::from_utf8(&hex).unwrap_or(""), ".", state.as_str()].concat()
}

#[derive(Serialize, Deserialize)]
struct FactLine<'a> {
    at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    branch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    facility: Option<&'a str>,
    key: String,
}

/// The most facts one message carries (~150 bytes each, far below any `max_payload`).
pub const FACTS_PER_MESSAGE: usize = 512;

/// `forewarn.facts.<partition of the place counted>`: a branch's facts meet
/// in one branch stage, a facility's in one too. Facts go in batches, one
/// JSON line each, one message per facts partition (and per
/// [`FACTS_PER_MESSAGE`]): a fact per message cost the processor as much as
/// the scan that made it. A message's id hashes its lines, so the same
/// batch sent again (a publish retried, a restart that made it again) is
/// dropped by JetStream; a batch cut otherwise after a restart repeats facts
/// already sent, and a stage holds its pending facts in a set, where a copy
/// is the same element (such facts are dated after the last announced
/// watermark, so they are still pending when the copy comes).
pub fn facts(facts: &[Fact], partitions: u16) -> Vec<Outgoing> {
    let mut by_partition: std::collections::BTreeMap<u16, Vec<&Fact>> = std::collections::BTreeMap::new();
    for f in facts {
        by_partition.entry(partition::of(f.place(), partitions)).or_default().push(f);
    }
    let mut out = Vec::new();
    for (p, facts) in by_partition {
        for chunk in facts.chunks(FACTS_PER_MESSAGE) {
            let mut body = Vec::with_capacity(chunk.len() * 160);
            for f in chunk {
                let at = f.at.text();
                let line = FactLine {
                    at: &at,
                    rule: f.rule.as_deref(),
                    branch: &f.branch,
                    facility: f.facility.as_deref(),
                    key: format!("{:032x}", f.key),
                };
                if serde_json::to_writer(&mut body, &line).is_ok() {
                    body.push(b'\n');
                }
            }
            out.push(Outgoing {
                subject: format!("forewarn.facts.{p}"),
                id: Some(format!("facts.{:016x}.{}", fnv1a64(&body), chunk.len())),
                headers: Vec::new(),
                body: Bytes::from(body),
            });
        }
    }
    out
}

/// FNV-1a, 64 bits: a batch's identity, not a partition.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Every fact of a message, one per line; a message with a line that is not
/// a fact is refused whole, naming the line.
pub fn parse_facts(body: &[u8]) -> Result<Vec<Fact>, String> {
    let lines = body.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    lines.enumerate().map(|(i, line)| parse_fact(line).map_err(|e| format!("line {}: {e}", i + 1))).collect()
}

fn parse_fact(body: &[u8]) -> Result<Fact, String> {
    let line: FactLine<'_> = serde_json::from_slice(body).map_err(|e| format!("branch fact: {e}"))?;
    Ok(Fact {
        at: Ts::parse_rfc3339(line.at).ok_or("branch fact: at is not an RFC 3339 timestamp")?,
        rule: line.rule.map(Into::into),
        branch: line.branch.into(),
        facility: line.facility.map(Into::into),
        key: u128::from_str_radix(&line.key, 16).map_err(|_| "branch fact: key is not hex")?,
    })
}

#[derive(Serialize, Deserialize)]
struct MarkLine<'a> {
    watermark: &'a str,
    partitions: u16,
}

/// `forewarn.marks.<partition>`: every fact of the partition at or before
/// the watermark is stored. The same mark sent again (after an outage, a
/// restart) carries the same id, and the server keeps one.
pub fn mark(partition: u16, partitions: u16, watermark: Ts) -> Outgoing {
    let at = watermark.text();
    Outgoing {
        subject: format!("forewarn.marks.{partition}"),
        id: Some(format!("marks.{partition}.{}", &*at)),
        headers: Vec::new(),
        body: Bytes::from(serde_json::to_vec(&MarkLine { watermark: &at, partitions }).unwrap_or_default()),
    }
}

/// The watermark a mark carries, checked against this deployment's partition count.
pub fn parse_mark(body: &[u8], partitions: u16) -> Result<Ts, String> {
    let line: MarkLine<'_> = serde_json::from_slice(body).map_err(|e| format!("watermark mark: {e}"))?;
    if line.partitions != partitions {
        return Err(format!(
            "a processor runs with {} partitions, this one with {partitions}: every instance must agree",
            line.partitions
        ));
    }
    Ts::parse_rfc3339(line.watermark).ok_or_else(|| "watermark mark: not an RFC 3339 timestamp".into())
}

/// Why an input message is refused.
#[derive(Debug)]
pub enum Refusal {
    /// It breaks the contract.
    Contract(Reject),
    /// Its subject is not `scans.<partition>` / `contacts.<partition>` of this deployment.
    Subject(String),
    /// Its parcel hashes to another partition than its subject's.
    Misrouted { subject: String, expected: u16 },
    /// A branch fact or watermark mark the branch stage cannot use.
    BranchInput(String),
}

impl Refusal {
    /// The codes beyond the contract's [`Reject::CODES`].
    pub const CODES: &[&str] = &["bad_subject", "misrouted", "bad_branch_input"];

    /// A closed set, for metrics and the reason-code header.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Contract(r) => r.code(),
            Refusal::Subject(_) => "bad_subject",
            Refusal::Misrouted { .. } => "misrouted",
            Refusal::BranchInput(_) => "bad_branch_input",
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Refusal::Contract(r) => r.to_string(),
            Refusal::Subject(s) => format!("subject {s:?} is not <stream>.<partition> of this deployment"),
            Refusal::Misrouted { subject, expected } => {
                format!("misrouted: parcel_id hashes to partition {expected}, the message came on {subject}")
            }
            Refusal::BranchInput(reason) => reason.clone(),
        }
    }
}

/// `deadletter.<original subject>`, with the original bytes (their head,
/// size and hash when they are too many to keep) and the reason.
pub fn dead_letter(subject: &str, stream: &str, sequence: u64, body: Bytes, why: &Refusal) -> Outgoing {
    let mut letter = letter(subject, body, why.code(), &why.reason());
    letter.id = Some(format!("{stream}.{sequence}"));
    letter.headers.push((ORIGINAL_STREAM, stream.to_string()));
    letter.headers.push((ORIGINAL_SEQUENCE, sequence.to_string()));
    letter
}

/// A message the server will never store (larger than it takes), as a dead
/// letter of its own subject with the server's reason: the stream moves on.
pub fn refused_letter(out: &Outgoing, error: &str) -> Outgoing {
    let mut letter = letter(&out.subject, out.body.clone(), "publish_refused", &format!("not stored: {error}"));
    letter.id = out.id.as_ref().map(|id| format!("refused.{id}"));
    letter
}

fn letter(subject: &str, body: Bytes, code: &str, reason: &str) -> Outgoing {
    let mut headers = vec![
        (REASON, bounded(reason, MAX_REASON_CHARS)),
        (REASON_CODE, code.to_string()),
        (ORIGINAL_SUBJECT, subject.to_string()),
    ];
    let body = if body.len() > MAX_LETTER_BODY {
        headers.push((ORIGINAL_SIZE, body.len().to_string()));
        headers.push((ORIGINAL_SHA256, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body))));
        body.slice(..MAX_LETTER_BODY)
    } else {
        body
    };
    Outgoing { subject: format!("deadletter.{subject}"), id: None, headers, body }
}

/// `text` on one line, control characters as spaces, at most `max`
/// characters (the last an ellipsis when cut).
pub fn bounded(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_says_when_its_cause_arrived_to_the_millisecond() {
        let a = Alert {
            id: AlertId(42),
            rule: "late".into(),
            state: AlertState::Firing,
            at: Ts(1_795_132_800_000),
            severity: crate::rules::Severity::Warning,
            audience: crate::rules::Audience::CUSTOMER,
            any_hour: crate::rules::Audience::default(),
            branch: None,
            parcel: None,
            branch_facts: None,
        };
        let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_132_812_345);
        let out = alert(&a, when);
        assert_eq!(arrived(Some(&out.header_map())), Some(when));
        assert_eq!(arrived(None), None);
    }

    #[test]
    fn every_refusal_code_is_listed_for_the_metrics() {
        let own = [
            Refusal::Subject(String::new()),
            Refusal::Misrouted { subject: String::new(), expected: 0 },
            Refusal::BranchInput(String::new()),
        ];
        let codes: Vec<&str> = own.iter().map(Refusal::code).collect();
        assert_eq!(codes, Refusal::CODES);
        let future = Refusal::Contract(Reject::Future { ahead: crate::time::Span::hours(1) });
        assert!(Reject::CODES.contains(&future.code()));
    }

    #[test]
    fn a_dead_letter_keeps_a_bounded_head_and_says_what_it_cut() {
        let why = Refusal::Contract(Reject::UnknownKind("x".repeat(500)));
        let letter = dead_letter("scans.1", "SCANS", 7, Bytes::from(vec![b'a'; MAX_LETTER_BODY + 1]), &why);
        let header = |name: &str| letter.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(letter.body.len(), MAX_LETTER_BODY);
        assert_eq!(header(ORIGINAL_SIZE), Some("65537"));
        assert_eq!(header(REASON).map(|r| r.chars().count()), Some(MAX_REASON_CHARS));
        assert!(header(REASON).is_some_and(|r| r.ends_with('…')));
        let small = dead_letter("scans.1", "SCANS", 8, Bytes::from_static(b"{}\r\n"), &why);
        assert_eq!(&small.body[..], b"{}\r\n", "kept whole");
        assert!(small.headers.iter().all(|(n, _)| *n != ORIGINAL_SIZE));
        assert_eq!(bounded("a\r\nBcc: x", 200), "a  Bcc: x", "no line breaks in a header");
    }

    #[test]
    fn facts_go_in_batches_per_stage_and_read_back_what_was_written() {
        let f = Fact {
            at: Ts(1_795_132_800_123),
            rule: Some("late".into()),
            branch: "FR-PAR-12".into(),
            facility: None,
            key: 7 << 70,
        };
        // A facility fact meets the facility's other facts, whatever the parcel's branch.
        let at_hub = Fact { facility: Some("DE-FRA-HUB".into()), ..f.clone() };
        let intake = |k: u128| Fact { rule: None, key: k, ..f.clone() };
        let mut all = vec![f.clone(), at_hub.clone()];
        all.extend((0..FACTS_PER_MESSAGE as u128 + 1).map(intake));
        let out = facts(&all, 16);
        let branch = format!("forewarn.facts.{}", partition::of("FR-PAR-12", 16));
        let hub = format!("forewarn.facts.{}", partition::of("DE-FRA-HUB", 16));
        assert_ne!(branch, hub, "the example needs two stages");
        let subjects: Vec<&str> = out.iter().map(|o| o.subject.as_str()).collect();
        let mut expected = vec![branch.as_str(), branch.as_str(), hub.as_str()];
        expected.sort();
        assert_eq!(subjects, expected, "one message per stage, and one more past {FACTS_PER_MESSAGE} facts");
        let read: Vec<Vec<Fact>> = out.iter().map(|o| parse_facts(&o.body).expect("reads")).collect();
        let to_branch: Vec<Fact> =
            read.iter().zip(&out).filter(|(_, o)| o.subject == branch).flat_map(|(r, _)| r.clone()).collect();
        let mut wanted = vec![f.clone()];
        wanted.extend((0..FACTS_PER_MESSAGE as u128 + 1).map(intake));
        assert_eq!(to_branch, wanted, "in order, none lost");
        let to_hub: Vec<&Vec<Fact>> = read.iter().zip(&out).filter(|(_, o)| o.subject == hub).map(|(r, _)| r).collect();
        assert_eq!(to_hub, [&vec![at_hub]]);
        // The same batch has the same id (JetStream drops the copy); another batch another.
        assert_eq!(facts(&all, 16)[0].id, out[0].id);
        assert_ne!(facts(&all[1..], 16).iter().find(|o| o.subject == branch).map(|o| &o.id), Some(&out[0].id));
        // A line that is no fact refuses the message, naming the line.
        let mut broken = out[0].body.to_vec();
        broken.extend_from_slice(b"{\"at\":\"yesterday\"}\n");
        assert!(parse_facts(&broken).unwrap_err().starts_with(&format!("line {}:", read[0].len() + 1)));
    }

    #[test]
    fn marks_read_back_what_was_written() {
        let m = mark(3, 16, Ts(1_795_132_800_000));
        assert_eq!(parse_mark(&m.body, 16), Ok(Ts(1_795_132_800_000)));
        assert_eq!(m.id, mark(3, 16, Ts(1_795_132_800_000)).id, "sent again, the server keeps one");
        assert_ne!(m.id, mark(3, 16, Ts(1_795_132_800_001)).id);
        assert_ne!(m.id, mark(4, 16, Ts(1_795_132_800_000)).id);
        assert!(parse_mark(&m.body, 8).unwrap_err().contains("every instance must agree"));
    }
}
