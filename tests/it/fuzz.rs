//! Property tests of the two parsers that read what others write: event
//! decoding (the contract) and rule files. Bounded for CI (proptest's 256
//! cases a property, or `PROPTEST_CASES`); a long run is one environment
//! variable away: `PROPTEST_CASES=2000000 cargo test --test it fuzz`.
//! Each property: no panic, and a refusal is short, one line and names
//! its place.

use std::path::PathBuf;

use forewarn::event::{decode, is_unprintable, MAX_EMAIL_CHARS, MAX_TEXT_CHARS};
use proptest::prelude::*;

const VALID: &str = r#"{"v":1,"event_id":"e1","parcel_id":"1Z999","kind":"label_created","at":"2026-11-20T08:15:00+01:00","facility":"FR-LYS-HUB","branch":"FR-PAR-12","country":"FR","promised_by":"2026-11-22T18:00:00Z","service":"express","recipient":{"name":"Léa Martin","phone":"+33612345678","email":"lea@example.fr","locale":"fr-FR","tz":"Europe/Paris","channels":["sms","email"]},"reason":"x","return_by":"2026-11-27T18:00:00Z"}"#;

const FIELDS: [&str; 14] = [
    "v",
    "event_id",
    "parcel_id",
    "kind",
    "at",
    "facility",
    "branch",
    "country",
    "promised_by",
    "service",
    "recipient",
    "reason",
    "return_by",
    "topic",
];

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)),
        ".{0,300}".prop_map(serde_json::Value::from),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}(Z|[+-][0-9]{2}:[0-9]{2})".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What any decoding must give: an event within the contract's bounds, or
/// a short one-line reason.
fn holds(bytes: &[u8]) {
    match decode(bytes) {
        Ok(e) => {
            for text in [&e.facility, &e.branch, &e.service, &e.reason].into_iter().flatten() {
                assert!(text.chars().count() <= MAX_TEXT_CHARS && !text.chars().any(is_unprintable), "{text:?}");
            }
            if let Some(r) = &e.recipient {
                for text in [&r.name, &r.phone, &r.locale, &r.tz].into_iter().flatten() {
                    assert!(text.chars().count() <= MAX_TEXT_CHARS && !text.chars().any(is_unprintable), "{text:?}");
                }
                assert!(r.email.as_ref().is_none_or(|e| e.chars().count() <= MAX_EMAIL_CHARS));
            }
        }
        Err(reject) => {
            let reason = reject.to_string();
            assert!(reason.chars().count() <= 400 && !reason.contains('\n'), "{reason:.500}");
        }
    }
}

proptest! {
    #[test]
    fn any_bytes_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        holds(&bytes);
    }

    #[test]
    fn any_value_in_any_field_decodes_or_is_refused(field in prop::sample::select(&FIELDS[..]), value in json()) {
        let mut event: serde_json::Value = serde_json::from_str(VALID).expect("valid");
        event[field] = value;
        let bytes = serde_json::to_vec(&event).expect("JSON");
        holds(&bytes);
    }

    #[test]
    fn a_valid_event_cut_or_flipped_decodes_or_is_refused(cut in 0..VALID.len(), at in 0..VALID.len(), byte in any::<u8>()) {
        let mut bytes = VALID.as_bytes().to_vec();
        bytes[at] = byte;
        holds(&bytes);
        holds(&bytes[..cut]);
    }

    #[test]
    fn any_rule_file_loads_or_says_where_it_is_wrong(cut in 0..4000usize, at in 0..4000usize, byte in any::<u8>(), junk in ".{0,200}") {
        let pack = std::fs::read_to_string(super::repo("rules/delay.toml")).expect("the delay rules");
        let mut bytes = pack.into_bytes();
        let at = at % bytes.len();
        bytes[at] = byte;
        bytes.truncate(cut.max(1).min(bytes.len()));
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        text.push_str(&junk);
        if let Err(errors) = forewarn::rules::file::load_sources(&[(PathBuf::from("rules/delay.toml"), text)]) {
            for e in errors {
                let message = e.to_string();
                prop_assert!(message.starts_with("rules/delay.toml"), "{message}");
            }
        }
    }
}
