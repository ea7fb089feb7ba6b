//! The proactivity judgment: each customer contact against what forewarn
//! had told that customer, the proof (or not) that it spoke first. A contact
//! after the first customer-facing alert is judged when it comes; the
//! contacts before it, when that alert fires. `forewarn report` and the
//! replay's statistics read the verdicts.

use std::sync::Arc;

use super::parcel::Parcel;
use super::plan::Plan;
use crate::event::{Event, Kind, Topic};
use crate::holdout::Draw;
use crate::time::{Span, Ts};

/// A customer contact judged against what forewarn had told the customer:
/// the proof, or not, that it spoke first. Contacts on parcels no
/// customer-facing alert has spoken about (yet) are judged when one does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// The parcel's draw for the hold-out group: the live metrics tell the
    /// groups apart by it.
    pub draw: Draw,
    pub topic: Topic,
    /// When the customer got in touch.
    pub at: Ts,
    /// The rule whose customer-facing alert spoke first.
    pub rule: Arc<str>,
    /// Whether it spoke before the contact…
    pub told_first: bool,
    /// …and by how long (the lead time), or how long after the contact it spoke.
    pub gap: Span,
}

/// A contact on a parcel whose customer forewarn had already told: it spoke
/// first, by the time between.
pub(super) fn contact_after_telling(p: &Parcel, ev: &Event<'_>, plan: &Plan) -> Option<Judged> {
    if ev.kind != Kind::CustomerContact || p.told_at() > ev.at {
        return None;
    }
    let rule = plan.rules.get(usize::from(p.told_by()))?;
    let topic = ev.contact.map_or(Topic::Other, |c| c.topic);
    let gap = ev.at.since(p.told_at());
    Some(Judged { draw: Draw::of(p.id()), topic, at: ev.at, rule: rule.id.clone(), told_first: true, gap })
}

/// Forewarn first spoke to the parcel's customer at `at` (rule `rule`): the
/// contacts it meets, before it or on its way, each judged. `draw` is the
/// parcel's ([`Draw::of`]).
pub(super) fn on_telling(p: &Parcel, draw: Draw, at: Ts, rule: &Arc<str>, into: &mut Vec<Judged>) {
    for (c, topic) in p.contacts() {
        let (told_first, gap) = (c >= at, if c >= at { c.since(at) } else { at.since(c) });
        into.push(Judged { draw, topic, at: c, rule: rule.clone(), told_first, gap });
    }
}
