use expect_test::{expect, Expect};

use super::*;

/// Decodes `input` and compares a one-line summary (or the rejection reason
/// and its metric code) with the expectation.
fn check(input: &str, expected: Expect) {
    let actual = match decode(input.as_bytes()) {
        Ok(e) => format!(
            "ok {} {} {} at={} facility={:?} branch={:?} country={:?} promised_by={:?} return_by={:?} recipient={:?} contact={:?}",
            e.kind,
            e.parcel_id,
            e.event_id,
            e.at,
            e.facility.as_deref(),
            e.branch.as_deref(),
            e.country.map(|c| String::from_utf8_lossy(&c).into_owned()),
            e.promised_by.map(|t| t.to_string()),
            e.return_by.map(|t| t.to_string()),
            e.recipient.map(|r| (r.name, r.phone, r.email, r.locale, r.tz, r.channels.map(|c| c.names().collect::<Vec<_>>()))),
            e.contact,
        ),
        Err(r) => format!("{} [{}]", r, r.code()),
    };
    expected.assert_eq(&actual);
}

#[test]
fn accepts_the_contract_examples() {
    check(
        r#"{"v":1,"event_id":"sc-7f3a9c00012","parcel_id":"1Z999AA10123456784","kind":"departed","at":"2026-11-20T08:15:00+01:00","facility":"FR-LYS-HUB","branch":"FR-PAR-12","country":"FR"}"#,
        expect![[
            r#"ok departed 1Z999AA10123456784 sc-7f3a9c00012 at=2026-11-20T07:15:00Z facility=Some("FR-LYS-HUB") branch=Some("FR-PAR-12") country=Some("FR") promised_by=None return_by=None recipient=None contact=None"#
        ]],
    );
    check(
        r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"label_created","at":"2026-11-20T08:15:00Z","promised_by":"2026-11-22T18:00:00+01:00","service":"express",
            "recipient":{ "name": "Léa Martin", "phone": "+33612345678", "email": "lea@example.fr", "locale": "fr-FR", "tz": "Europe/Paris", "channels": ["sms", "email"] }}"#,
        expect![[
            r#"ok label_created P1 e1 at=2026-11-20T08:15:00Z facility=None branch=None country=None promised_by=Some("2026-11-22T17:00:00Z") return_by=None recipient=Some((Some("Léa Martin"), Some("+33612345678"), Some("lea@example.fr"), Some("fr-FR"), Some("Europe/Paris"), Some(["sms", "email"]))) contact=None"#
        ]],
    );
    check(
        r#"{"v":1,"event_id":"c1","parcel_id":"P1","kind":"customer_contact","at":"2026-11-21T10:00:00Z","channel":"phone","topic":"not_received"}"#,
        expect![[
            r#"ok customer_contact P1 c1 at=2026-11-21T10:00:00Z facility=None branch=None country=None promised_by=None return_by=None recipient=None contact=Some(Contact { channel: Some(Phone), topic: NotReceived })"#
        ]],
    );
}

#[test]
fn accepts_more_than_the_contract() {
    // Extra fields, lower-case country, an unknown topic and channel, an empty channel list.
    check(
        r#"{"v":1,"event_id":"e2","parcel_id":"P2","kind":"ready_for_pickup","at":"2026-11-20T08:15:00Z","return_by":"2026-11-27T18:00:00Z","country":"fr","scanner":"HX-9","extra":{"a":[1,2]}}"#,
        expect![[
            r#"ok ready_for_pickup P2 e2 at=2026-11-20T08:15:00Z facility=None branch=None country=Some("FR") promised_by=None return_by=Some("2026-11-27T18:00:00Z") recipient=None contact=None"#
        ]],
    );
    check(
        r#"{"v":1,"event_id":"c2","parcel_id":"P2","kind":"customer_contact","at":"2026-11-21T10:00:00Z","channel":"fax","topic":"weather"}"#,
        expect![[
            r#"ok customer_contact P2 c2 at=2026-11-21T10:00:00Z facility=None branch=None country=None promised_by=None return_by=None recipient=None contact=Some(Contact { channel: Some(Other), topic: Other })"#
        ]],
    );
    check(
        r#"{"v":1,"event_id":"e3","parcel_id":"P3","kind":"label_created","at":"2026-11-20T08:15:00Z","promised_by":"2026-11-22T18:00:00Z","recipient":{"channels":[],"pager":"x"}}"#,
        expect![[
            r#"ok label_created P3 e3 at=2026-11-20T08:15:00Z facility=None branch=None country=None promised_by=Some("2026-11-22T18:00:00Z") return_by=None recipient=Some((None, None, None, None, None, Some([]))) contact=None"#
        ]],
    );
}

#[test]
fn rejects_with_a_reason_naming_the_field() {
    let base = r#""event_id":"e1","parcel_id":"P1","kind":"departed","at":"2026-11-20T08:15:00Z""#;
    check(&format!(r#"{{{base}}}"#), expect!["missing v [missing_field]"]);
    check(
        &format!(r#"{{"v":2,{base}}}"#),
        expect!["v: unsupported contract version 2 (this processor reads v1) [unsupported_version]"],
    );
    check(&format!(r#"{{"v":"1",{base}}}"#), expect!["v: expected an integer [invalid_field]"]);
    check(
        r#"{"v":1,"event_id":"e1","kind":"departed","at":"2026-11-20T08:15:00Z"}"#,
        expect!["missing parcel_id [missing_field]"],
    );
    check(
        r#"{"v":1,"parcel_id":"P1","kind":"departed","at":"2026-11-20T08:15:00Z"}"#,
        expect!["missing event_id [missing_field]"],
    );
    check(
        r#"{"v":1,"event_id":"e1","parcel_id":"P1","at":"2026-11-20T08:15:00Z"}"#,
        expect!["missing kind [missing_field]"],
    );
    check(r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"departed"}"#, expect!["missing at [missing_field]"]);
    check(
        r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"teleported","at":"2026-11-20T08:15:00Z"}"#,
        expect![[r#"unknown kind "teleported" [unknown_kind]"#]],
    );
    check(
        r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"departed","at":"yesterday"}"#,
        expect!["at: not an RFC 3339 timestamp [invalid_field]"],
    );
    check(
        r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"departed","at":1732090500}"#,
        expect!["at: expected a string [invalid_field]"],
    );
    check(
        r#"{"v":1,"event_id":"","parcel_id":"P1","kind":"departed","at":"2026-11-20T08:15:00Z"}"#,
        expect!["event_id: must be 1 to 64 characters, got 0 [invalid_field]"],
    );
    check(
        &format!(
            r#"{{"v":1,"event_id":"e1","parcel_id":"{}","kind":"departed","at":"2026-11-20T08:15:00Z"}}"#,
            "P".repeat(65)
        ),
        expect!["parcel_id: must be 1 to 64 characters, got 65 [invalid_field]"],
    );
    check(
        &format!(r#"{{"v":1,{base},"country":"FRA"}}"#),
        expect![[r#"country: "FRA" is not an ISO 3166-1 alpha-2 code [invalid_field]"#]],
    );
    check(
        &format!(r#"{{"v":1,{base},"promised_by":"soon"}}"#),
        expect!["promised_by: not an RFC 3339 timestamp [invalid_field]"],
    );
    check(
        r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"label_created","at":"2026-11-20T08:15:00Z","recipient":{}}"#,
        expect!["missing promised_by (required on label_created) [missing_field]"],
    );
    check(
        r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"label_created","at":"2026-11-20T08:15:00Z","promised_by":"2026-11-22T18:00:00Z"}"#,
        expect!["missing recipient (required on label_created) [missing_field]"],
    );
    check(
        r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"ready_for_pickup","at":"2026-11-20T08:15:00Z"}"#,
        expect!["missing return_by (required on ready_for_pickup) [missing_field]"],
    );
    check(
        &format!(r#"{{"v":1,{base},"recipient":{{"channels":"sms"}}}}"#),
        expect![[r#"recipient: channels: expected a list of strings, got "sms" [invalid_field]"#]],
    );
    check(&format!(r#"{{"v":1,{base},"recipient":"Léa"}}"#), expect!["recipient: expected an object [invalid_field]"]);
    check(
        r#"{"v":1,"event_id":"e1""#,
        expect!["event_id: not valid JSON: EOF while parsing an object at line 1 column 22 [invalid_field]"],
    );
    check(r#"[1,2,3]"#, expect!["not a JSON object [invalid_json]"]);
    check(
        &format!(r#"{{"v":1,{base},"at":"2026-11-21T08:15:00Z"}}"#),
        expect!["not valid JSON: duplicate field `at` at line 1 column 90 [invalid_json]"],
    );
}

#[test]
fn rejects_oversized_events_before_parsing() {
    let big = format!(r#"{{"v":1,"pad":"{}"}}"#, "x".repeat(MAX_EVENT_BYTES));
    check(&big, expect!["event larger than 64 KiB (65552 bytes) [too_large]"]);
}

#[test]
fn borrows_strings_without_escapes() {
    let input = r#"{"v":1,"event_id":"e1","parcel_id":"P\u00e9","kind":"departed","at":"2026-11-20T08:15:00Z","facility":"HUB"}"#;
    let e = decode(input.as_bytes()).unwrap();
    assert!(matches!(e.event_id, Cow::Borrowed(_)));
    assert!(matches!(e.facility, Some(Cow::Borrowed(_))));
    assert_eq!(e.parcel_id, "Pé");
}

#[test]
fn every_kind_decodes() {
    for kind in Kind::ALL {
        let extra = match kind {
            Kind::LabelCreated => r#","promised_by":"2026-11-22T18:00:00Z","recipient":{}"#,
            Kind::ReadyForPickup => r#","return_by":"2026-11-27T18:00:00Z""#,
            _ => "",
        };
        let input =
            format!(r#"{{"v":1,"event_id":"e","parcel_id":"P","kind":"{kind}","at":"2026-11-20T08:15:00Z"{extra}}}"#);
        assert_eq!(decode(input.as_bytes()).map(|e| e.kind), Ok(*kind));
    }
}

#[test]
fn refuses_instants_no_scanner_saw() {
    // Year 9999 made a replay publish millions of lane versions; year 0 in
    // +01:00 is year -1, which printed as 9999.
    check(
        r#"{"v":1,"event_id":"e","parcel_id":"P","kind":"departed","at":"9999-12-31T23:59:59Z"}"#,
        expect![[r#"at: outside 1970-01-01 to 2099-12-31 [invalid_field]"#]],
    );
    check(
        r#"{"v":1,"event_id":"e","parcel_id":"P","kind":"departed","at":"0000-01-01T00:00:00+01:00"}"#,
        expect![[r#"at: outside 1970-01-01 to 2099-12-31 [invalid_field]"#]],
    );
    check(
        r#"{"v":1,"event_id":"e","parcel_id":"P","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2100-01-01T00:00:00Z","recipient":{}}"#,
        expect![[r#"promised_by: outside 1970-01-01 to 2099-12-31 [invalid_field]"#]],
    );
    check(
        r#"{"v":1,"event_id":"e","parcel_id":"P","kind":"departed","at":"2099-12-31T23:59:59Z"}"#,
        expect![[
            r#"ok departed P e at=2099-12-31T23:59:59Z facility=None branch=None country=None promised_by=None return_by=None recipient=None contact=None"#
        ]],
    );
}

#[test]
fn reasons_stay_short_and_quote_no_contact_data() {
    let long_kind = format!(
        r#"{{"v":1,"event_id":"e","parcel_id":"P","kind":"{}","at":"2026-11-20T08:00:00Z"}}"#,
        "K".repeat(60_015)
    );
    check(&long_kind, expect![[r#"unknown kind a value of 60015 characters [unknown_kind]"#]]);
    check(
        r#"{"v":1,"event_id":"e","parcel_id":"P","kind":"departed","at":"2026-11-20T08:00:00Z","country":"lea.martin@example.fr"}"#,
        expect![[r#"country: a value of 21 characters is not an ISO 3166-1 alpha-2 code [invalid_field]"#]],
    );
    check(
        r#"{"v":1,"event_id":"e","parcel_id":"P","kind":"departd","at":"2026-11-20T08:00:00Z"}"#,
        expect![[r#"unknown kind "departd" [unknown_kind]"#]],
    );
}

#[test]
fn every_reject_code_is_listed_for_the_metrics() {
    let every = [
        Reject::TooLarge { bytes: 1 },
        Reject::BadJson(String::new()),
        Reject::NotAnObject,
        Reject::Missing(Field::V),
        Reject::MissingFor { field: Field::Recipient, kind: Kind::LabelCreated },
        Reject::Invalid { field: Field::At, problem: String::new() },
        Reject::UnknownKind(String::new()),
        Reject::UnsupportedVersion(String::new()),
        Reject::Future { ahead: Span::hours(1) },
    ];
    let codes: std::collections::BTreeSet<&str> = every.iter().map(Reject::code).collect();
    assert_eq!(codes, Reject::CODES.iter().copied().collect());
}

#[test]
fn text_fields_are_bounded_and_printable() {
    let name = "N".repeat(50_000);
    check(
        &format!(
            r#"{{"v":1,"event_id":"e","parcel_id":"P","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-22T08:00:00Z","recipient":{{"name":"{name}"}}}}"#
        ),
        expect![[r#"recipient: name: longer than 200 characters (50000) [invalid_field]"#]],
    );
    check(
        &format!(
            r#"{{"v":1,"event_id":"e","parcel_id":"P","kind":"departed","at":"2026-11-20T08:00:00Z","branch":"{}"}}"#,
            "B".repeat(3000)
        ),
        expect![[r#"branch: longer than 200 characters (3000) [invalid_field]"#]],
    );
    check(
        r#"{"v":1,"event_id":"e","parcel_id":"P","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-22T08:00:00Z","recipient":{"name":"L\u0000a \u001b[2J \u202etxt"}}"#,
        expect![[r#"recipient: name: holds a control or bidirectional-override character [invalid_field]"#]],
    );
    check(
        "{\"v\":1,\"event_id\":\"e\\r\\nx\",\"parcel_id\":\"P\",\"kind\":\"departed\",\"at\":\"2026-11-20T08:00:00Z\"}",
        expect![[r#"event_id: holds a control or bidirectional-override character [invalid_field]"#]],
    );
    // 200 characters of three bytes each are fine: characters are counted, not bytes.
    let wide = format!(
        r#"{{"v":1,"event_id":"e","parcel_id":"P","kind":"departed","at":"2026-11-20T08:00:00Z","facility":"{}"}}"#,
        "仓".repeat(200)
    );
    assert_eq!(decode(wide.as_bytes()).map(|e| e.facility.map(|f| f.chars().count())), Ok(Some(200)));
}

#[test]
fn json_that_cannot_be_read_still_names_its_field() {
    check(
        r#"{"v":1,"event_id":"e","parcel_id":"P","kind":"departed","at":"2026-11-20T08:00:00Z","country":1e400}"#,
        expect!["country: not valid JSON: number out of range at line 1 column 99 [invalid_field]"],
    );
    let deep = format!(
        r#"{{"v":1,"event_id":"e","parcel_id":"P","kind":"departed","at":"2026-11-20T08:00:00Z","recipient":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    check(&deep, expect![[r#"recipient: nested deeper than 64 levels [invalid_field]"#]]);
    // 30,000 levels in 60 KB: the parsers overflowed a 2 MiB stack (a tokio
    // worker's) and aborted the process.
    let deepest = format!(r#"{{"v":1,"pad":{}1{}}}"#, "[".repeat(30_000), "]".repeat(30_000));
    let on_a_small_stack =
        std::thread::Builder::new().stack_size(2 << 20).spawn(move || decode(deepest.as_bytes()).map(|_| ()));
    let refused = on_a_small_stack.expect("a thread").join().expect("no stack overflow");
    assert_eq!(refused, Err(Reject::BadJson("nested deeper than 64 levels".into())));
    check(
        r#"{"v":1,"event_id":"e\"}:{","kind":"#,
        expect!["kind: not valid JSON: EOF while parsing a value at line 1 column 34 [invalid_field]"],
    );
}

#[test]
fn a_valid_recipient_does_not_hide_a_wrong_field_after_it() {
    // Fields are looked at in name order: a good recipient once ended the
    // search with the parser's own message, which quoted the bad value.
    check(
        r#"{"v":"lea@example.fr","event_id":"e","parcel_id":"P","kind":"departed","at":"2026-11-20T08:00:00Z","recipient":{"name":"Léa"}}"#,
        expect!["v: expected an integer [invalid_field]"],
    );
}

/// One label with a promise already past (a year's typo) once told its
/// customer at once that the parcel was late; a return date already past,
/// that it was going back.
#[test]
fn refuses_a_promise_or_return_date_already_past_when_given() {
    check(
        r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"label_created","at":"2026-11-20T08:15:00Z","promised_by":"2025-11-22T18:00:00Z","recipient":{}}"#,
        expect!["promised_by: 2025-11-22T18:00:00Z is before the label itself (at 2026-11-20T08:15:00Z): a date already past when given [invalid_field]"],
    );
    check(
        r#"{"v":1,"event_id":"e2","parcel_id":"P2","kind":"ready_for_pickup","at":"2026-11-20T08:15:00Z","return_by":"2026-11-20T08:00:00Z"}"#,
        expect!["return_by: 2026-11-20T08:00:00Z is before the pickup notice itself (at 2026-11-20T08:15:00Z): a date already past when given [invalid_field]"],
    );
    // A scan may carry the label's promise after it passed (the parcel is late).
    check(
        r#"{"v":1,"event_id":"e3","parcel_id":"P1","kind":"arrived","at":"2026-11-24T08:15:00Z","promised_by":"2026-11-22T18:00:00Z"}"#,
        expect![[
            r#"ok arrived P1 e3 at=2026-11-24T08:15:00Z facility=None branch=None country=None promised_by=Some("2026-11-22T18:00:00Z") return_by=None recipient=None contact=None"#
        ]],
    );
}
