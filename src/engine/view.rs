//! One parcel as the window holds it, for the agent's lookup: read-only,
//! so answering a call centre never changes what the engine decides.

use std::sync::Arc;

use super::window::parcel_hash;
use super::{facts, Engine};
use crate::alert::ParcelFacts;
use crate::rules::Severity;
use crate::time::Ts;

/// What the window knows of a parcel.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// In flight.
    InFlight(Box<ParcelView>),
    /// It left the window (done, or gone quiet for too long).
    Closed,
    /// Never seen by this engine, or forgotten.
    Unknown,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParcelView {
    pub facts: ParcelFacts,
    pub branch: Option<Arc<str>>,
    /// When it entered its current state.
    pub state_since: Option<Ts>,
    pub last_event_at: Ts,
    pub open: Vec<OpenAlert>,
    /// The most recent customer contacts, oldest first.
    pub contacts: Vec<Ts>,
}

/// A rule whose condition holds for the parcel now.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAlert {
    pub rule: Arc<str>,
    pub severity: Severity,
    /// When it fired, for rules that resolve (others fire once and stay).
    pub since: Option<Ts>,
}

impl Engine {
    /// Where a parcel stands, as the lookup names it, without building its
    /// view: its state while the window holds it, `closed` once it left,
    /// `unknown` when never seen (or forgotten).
    pub fn standing(&self, parcel_id: &str) -> &'static str {
        let hash = parcel_hash(parcel_id);
        match self.window.find(parcel_id, hash) {
            Some(slot) => self.window.get(slot).state.as_str(),
            None if self.tombstones.contains(hash) => "closed",
            None => "unknown",
        }
    }

    pub fn lookup(&self, parcel_id: &str) -> Lookup {
        let hash = parcel_hash(parcel_id);
        let Some(slot) = self.window.find(parcel_id, hash) else {
            return if self.tombstones.contains(hash) { Lookup::Closed } else { Lookup::Unknown };
        };
        let p = self.window.get(slot);
        // A resolving rule that fires once keeps its bit after its episode ended.
        let resolved_once = self.plan.once_mask & !p.open_rules();
        let open = (0..self.set.rules.len())
            .filter(|&r| p.fired & (1u64 << r) != 0)
            .filter(|&r| resolved_once & (1u64 << r) == 0 || !self.set.rules[r].voice.resolve)
            .map(|r| OpenAlert {
                rule: self.plan.rules[r].id.clone(),
                severity: self.set.rules[r].voice.severity,
                since: p.opens().find(|o| usize::from(o.rule) == r).map(|o| o.at),
            })
            .collect();
        let known = |t: Ts| (t != Ts::MIN).then_some(t);
        let syms = self.syms.lock();
        Lookup::InFlight(Box::new(ParcelView {
            facts: facts(p, &syms, None),
            branch: syms.get(p.branch).cloned(),
            state_since: known(p.state_since.get()),
            last_event_at: p.last_event_at.get(),
            open,
            contacts: p.contacts().map(|(t, _)| t).collect(),
        }))
    }
}
