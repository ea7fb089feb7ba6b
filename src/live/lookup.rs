//! The processor's side of the agent's lookup ([`crate::api`] serves it):
//! the owner of a parcel's partition answers what its window holds of the
//! parcel, asked over NATS (`forewarn.lookup.parcel.<partition>`), so any
//! instance's API answers for any parcel. Phones and emails leave masked.
//! It also answers where many parcels stand at once
//! (`forewarn.lookup.standing.<partition>`), so that the at-risk lists drop
//! parcels that were delivered ([`crate::dispatch::digest`]).

use futures::stream::SelectAll;
use serde_json::{json, Value};

use crate::dispatch::address::Masked;
use crate::engine::{Engine, Lookup};
use crate::nats::{wire, LiveError};
use crate::partition;

/// The processor's side: one subscription per owned partition (one
/// wildcard when it owns them all), in a queue group so that two owners
/// during a hand-over answer once.
pub async fn subscribe(
    client: &async_nats::Client,
    owned: &partition::Owned,
) -> Result<SelectAll<async_nats::Subscriber>, LiveError> {
    let subjects: Vec<String> = if owned.list.len() == usize::from(owned.count) {
        vec!["forewarn.lookup.parcel.*".into(), "forewarn.lookup.standing.*".into()]
    } else {
        owned.list.iter().flat_map(|&p| [wire::lookup_subject(p), wire::standing_subject(p)]).collect()
    };
    let mut all = SelectAll::new();
    for s in subjects {
        let sub =
            client.queue_subscribe(s, "forewarn".into()).await.map_err(|e| LiveError::nats("lookup subscribe", e))?;
        all.push(sub);
    }
    Ok(all)
}

/// The answer to a lookup request for the parcel named in `payload`.
pub fn answer(engine: Option<&Engine>, payload: &[u8]) -> Vec<u8> {
    let id = String::from_utf8_lossy(payload);
    let lookup = engine.map_or(Lookup::Unknown, |e| e.lookup(&id));
    window_json(&lookup).to_string().into_bytes()
}

/// Where each parcel of `payload` (tracking numbers, one a line) stands, as
/// a JSON array in the same order: its state while the window holds it
/// (`delivered` for one delivered and not yet gone), `closed` once it left,
/// `unknown` when never seen; `engine` finds the engine of a parcel's
/// partition.
pub fn standing<'e>(engine: impl Fn(&str) -> Option<&'e Engine>, payload: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(payload);
    let answers: Vec<&str> = text.lines().map(|id| engine(id).map_or("unknown", |e| e.standing(id))).collect();
    serde_json::to_vec(&answers).unwrap_or_default()
}

fn window_json(lookup: &Lookup) -> Value {
    let v = match lookup {
        Lookup::Unknown => return json!({ "status": "unknown" }),
        Lookup::Closed => return json!({ "status": "closed" }),
        Lookup::InFlight(v) => v,
    };
    let f = &v.facts;
    let text = |t: Option<crate::time::Ts>| t.map(|t| t.to_string());
    let recipient = f.recipient.as_ref().map(|r| {
        json!({
            "phone": r.phone.as_deref().map(|p| Masked(p).to_string()),
            "email": r.email.as_deref().map(|e| Masked(e).to_string()),
            "locale": r.locale.as_deref(),
            "tz": r.tz.as_deref(),
            "channels": r.channels.map(|c| c.names().collect::<Vec<_>>()),
        })
    });
    json!({
        "status": "in_flight",
        "state": f.state.as_str(),
        "state_since": text(v.state_since),
        "last_scan": { "at": text(f.last_scan_at), "facility": f.facility.as_deref(),
                       "country": f.country.as_ref().and_then(|c| std::str::from_utf8(c).ok()) },
        "last_event_at": v.last_event_at.to_string(),
        "branch": v.branch.as_deref(),
        "service": f.service.as_deref(),
        "promised_by": text(f.promised_by),
        "return_by": text(f.return_by),
        "recipient": recipient,
        "open_alerts": v.open.iter().map(|o| json!({
            "rule": &*o.rule, "severity": o.severity.as_str(), "since": text(o.since),
        })).collect::<Vec<_>>(),
        "contacts": v.contacts.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_part_masks_contact_details() {
        let v = window_json(&Lookup::Unknown);
        assert_eq!(v["status"], "unknown");
        let mut engine = Engine::new(
            crate::rules::RuleSet::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).unwrap(),
            crate::engine::Config::default(),
        );
        let ev = br#"{"v":1,"event_id":"e1","parcel_id":"A","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-22T18:00:00Z","recipient":{"phone":"+33612345678","email":"lea@example.fr","channels":["sms"]}}"#;
        engine.ingest(&crate::event::decode(ev).unwrap(), &mut Vec::new());
        let text = String::from_utf8(answer(Some(&engine), b"A")).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!((v["status"].as_str(), v["state"].as_str()), (Some("in_flight"), Some("label_created")));
        assert!(!text.contains("12345678") && !text.contains("lea@"), "{text}");
        assert_eq!(v["recipient"]["channels"], json!(["sms"]));
    }

    #[test]
    fn where_parcels_stand_comes_in_the_order_asked() {
        let mut engine = Engine::new(
            crate::rules::RuleSet::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).unwrap(),
            crate::engine::Config::default(),
        );
        for ev in [
            r#"{"v":1,"event_id":"a1","parcel_id":"A","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-22T18:00:00Z","recipient":{}}"#,
            r#"{"v":1,"event_id":"b1","parcel_id":"B","kind":"label_created","at":"2026-11-20T08:00:00Z","promised_by":"2026-11-22T18:00:00Z","recipient":{}}"#,
            r#"{"v":1,"event_id":"b2","parcel_id":"B","kind":"delivered","at":"2026-11-20T15:00:00Z"}"#,
        ] {
            engine.ingest(&crate::event::decode(ev.as_bytes()).unwrap(), &mut Vec::new());
        }
        let answer: Vec<String> = serde_json::from_slice(&standing(|_| Some(&engine), b"B\nC\nA")).unwrap();
        assert_eq!(answer, ["delivered", "unknown", "label_created"]);
        let none: Vec<String> = serde_json::from_slice(&standing(|_| None, b"A")).unwrap();
        assert_eq!(none, ["unknown"], "a partition not held here");
    }
}
