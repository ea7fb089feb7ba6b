//! The alert's wire form: one type for the JSON line the engine writes
//! (`forewarn replay` output, the body of `alerts.*` messages) and the
//! dispatcher reads, so the two agree by construction. A field added here
//! is written and read at once.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// One alert as a JSON line. Text borrows where it can, both ways.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Line<'a> {
    #[serde(borrow)]
    pub alert_id: Cow<'a, str>,
    #[serde(borrow)]
    pub rule: Cow<'a, str>,
    /// `firing` or `resolved`.
    #[serde(borrow)]
    pub state: Cow<'a, str>,
    /// RFC 3339, UTC.
    #[serde(borrow)]
    pub at: Cow<'a, str>,
    #[serde(borrow)]
    pub severity: Cow<'a, str>,
    #[serde(borrow)]
    pub audience: Vec<Cow<'a, str>>,
    /// The audiences told at any hour (quiet hours do not hold them).
    #[serde(borrow, default, skip_serializing_if = "Vec::is_empty")]
    pub any_hour: Vec<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub parcel_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub parcel_state: Option<Cow<'a, str>>,
    /// The kind of the scan that fired an event rule.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub country: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub promised_by: Option<Cow<'a, str>>,
    /// When the parcel is expected to arrive, from and to (RFC 3339, UTC):
    /// a range within a day of the customer's, or the midnights around the
    /// whole days told.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub expected_from: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub expected_to: Option<Cow<'a, str>>,
    /// A revised estimate: the `alert_id` whose estimate it revises (its
    /// messages go only where that alert's went).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub revises: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub return_by: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub last_scan_at: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<RecipientLine<'a>>,
    /// Branch-wide alerts: hits, window, the usual count and the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usual: Option<f64>,
    /// What `usual` comes from: `own` (the place's history), `network` (no
    /// history of its own yet: its peers' rate per parcel, for its volume)
    /// or `floor` (neither: the rule's `min_count` alone judged).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub usual_from: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<u32>,
    /// A facility's alert: the branches of the parcels it counted.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Vec<Cow<'a, str>>>,
}

/// The customer an alert is about, as the event carried them.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct RecipientLine<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<Cow<'a, str>>,
    /// The customer's choice; absent: not said (every channel we can reach).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<Cow<'a, str>>>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::dispatch::notice::Notice;
    use crate::engine::{Config, Split};
    use crate::replay::{run_bytes, Sinks};
    use crate::rules::RuleSet;
    use crate::simulate::{self, Network, Shape};
    use crate::time::Ts;

    /// Every alert of a simulated network's replay, parcel and branch-wide:
    /// read back as a `Line` and written again, byte for byte; and the
    /// dispatcher's `Notice` holds what was written.
    #[test]
    fn every_alert_of_a_network_reads_back_as_it_was_written() {
        let start = Ts::parse_rfc3339("2026-11-16T00:00:00Z").unwrap();
        let mut events = Vec::new();
        simulate::write(
            &Network {
                parcels: 20_000,
                seed: 7,
                start,
                days: 1.0,
                shape: Shape::default(),
                reaction: Default::default(),
            },
            &mut events,
            |_| {},
        )
        .unwrap();
        let rules = RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap();
        let mut alerts = Vec::new();
        let mut sinks = Sinks { alerts: &mut alerts, rejects: None };
        run_bytes(&events, &mut Split::new(rules, Config::default()), &mut sinks, &mut |_| {}).unwrap();
        let alerts = String::from_utf8(alerts).unwrap();
        let (mut branch_wide, mut with_recipient) = (0, 0);
        for text in alerts.lines() {
            let line: Line<'_> = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&line).unwrap(), text);
            let notice = Notice::decode(text.as_bytes()).unwrap();
            assert_eq!(notice.line(), line, "the dispatcher keeps every field");
            branch_wide += usize::from(line.count.is_some());
            with_recipient += usize::from(line.recipient.is_some());
        }
        assert!(branch_wide > 0 && with_recipient > 0, "{branch_wide} {with_recipient}");
    }

    #[test]
    fn a_facility_alert_reads_back_with_its_branches() {
        let text = r#"{"alert_id":"0123456789abcdef0123456789abcdef","rule":"facility_stall","state":"firing","at":"2026-11-20T08:00:00Z","severity":"warning","audience":["branch","ops"],"facility":"FR-LYS-HUB","count":31,"window":"2h","usual":4.25,"volume":900,"branches":["FR-LYS-03","FR-PAR-12"]}"#;
        let line: Line<'_> = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&line).unwrap(), text);
        let notice = Notice::decode(text.as_bytes()).unwrap();
        assert_eq!(notice.line(), line);
        assert_eq!(notice.branches, ["FR-LYS-03", "FR-PAR-12"]);
        assert_eq!((notice.count, notice.usual, notice.volume), (Some(31), Some(4.25), Some(900)));
        assert_eq!(notice.window.as_deref(), Some("2h"));
    }

    #[test]
    fn a_revised_estimate_reads_back_with_the_alert_it_revises_and_a_bad_one_is_refused() {
        let text = r#"{"alert_id":"0123456789abcdef0123456789abcdef","rule":"revised_estimate","state":"firing","at":"2026-11-21T09:00:00Z","severity":"info","audience":["customer"],"parcel_id":"P1","expected_from":"2026-11-23T00:00:00Z","expected_to":"2026-11-24T00:00:00Z","revises":"fedcba9876543210fedcba9876543210"}"#;
        let line: Line<'_> = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&line).unwrap(), text);
        let notice = Notice::decode(text.as_bytes()).unwrap();
        assert_eq!(notice.line(), line);
        assert_eq!(notice.revises.as_deref(), Some("fedcba9876543210fedcba9876543210"));
        let bad = text.replace("fedcba9876543210fedcba9876543210", "stalled");
        assert_eq!(Notice::decode(bad.as_bytes()).unwrap_err(), r#"revises: "stalled" is not 32 hex digits"#);
    }
}
