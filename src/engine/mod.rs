//! The engine: a pure, deterministic core that turns events and watermarks
//! into alerts.
//!
//! No IO, no async runtime, no wall clock: event time and the watermark are
//! arguments, so replaying a file and consuming NATS give the same alerts,
//! byte for byte. State is the parcel [`window`], one ordered set of
//! event-time timers (one entry per parcel at most: its next wake-up) and the
//! [`branch`] aggregates.
//!
//! An event's way, file by file: `apply.rs` takes it in and folds it into
//! its parcel (`parcel.rs`; names interned in `sym.rs`), `plan.rs` says
//! which rules it fires, `judge.rs` judges a customer contact against what
//! forewarn had said, `lanes.rs` learns the leg it ends. Timer rules are
//! judged in event time (`wake.rs`, `timers.rs`): when the watermark passes
//! a deadline, on the events up to it. An event newer than a parcel's
//! unjudged deadline is parked until that judgment, and a contact until the
//! watermark passes it; both then apply in event-time order, so the arrival
//! order of events within the lateness does not change the alerts. Alerts
//! leave through `emit` here; `split.rs` runs an engine per partition.
//! `checkpoint.rs` orders the saved state that each part writes in
//! `codec.rs`'s form (`*/checkpoint.rs`).

mod apply;
pub mod branch;
mod checkpoint;
mod codec;
mod expected;
mod frontier;
mod judge;
mod lanes;
mod parcel;
mod plan;
mod split;
mod sym;
mod timers;
mod view;
mod wake;
pub mod window;

use std::sync::Arc;

pub use branch::{BranchStage, Fact};
pub use checkpoint::Form;
pub use codec::{CheckpointError, Snapshot};
pub use judge::Judged;
pub use lanes::LaneStats;
pub use split::Split;
pub use view::{Lookup, OpenAlert, ParcelView};

use crate::alert::{Alert, AlertId, AlertState, ParcelFacts, RecipientFacts, TriggerFacts};
use crate::buffer;
use crate::event::{Event, Kind, Topic};
use crate::holdout::Draw;
use crate::partition;
use crate::rules::{Audience, By, RuleSet, Trigger};
use crate::time::{Span, Ts, Ts48};
use expected::Told;
use frontier::Frontier;
use lanes::{Lanes, Place};
use parcel::{event_fingerprint, take_recipient, LaneRef, Open, Parcel};
use plan::Plan;
pub use sym::Symbols;
use sym::{Interner, Sym};
use timers::{Entry, Timers};
use window::{parcel_hash, Tombstones, Window};

/// The most events a parcel holds aside; beyond, events apply on arrival.
const MAX_PARKED: usize = 64;

/// How many parcels ahead the wake-up loop asks the CPU to fetch.
const PREFETCH_AHEAD: usize = 8;
/// The most wake-ups taken from the timers at once: when most parcels
/// share a deadline, judging them does not first copy them all.
const WAKE_BATCH: usize = 4096;

/// Limits and lateness. Every bound of the engine's memory is here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How far behind the newest event time the watermark runs.
    pub lateness: Span,
    /// How far ahead of its partition's flow a replayed event may be dated
    /// before it waits for the flow (live refuses by arrival time instead).
    pub horizon: Span,
    /// How long a done parcel (delivered, collected, returned, lost) stays, for late events.
    pub retention: Span,
    /// A parcel with no event for this long leaves the window.
    pub max_idle: Span,
    /// The most parcels in the window; beyond it the parcel with the earliest timer leaves.
    pub max_parcels: usize,
    /// How many evicted parcels are remembered, so late duplicates do not revive them.
    pub tombstones: usize,
    /// The most distinct facility, branch, service, locale and time zone
    /// names: the bound of the engine's table of names, the process's when
    /// its engines share one ([`Engine::sharing`]).
    pub max_symbols: usize,
    /// The deployment's partition count: predictions learn per partition,
    /// so that a replay and every split of the partitions learn the same.
    pub partitions: u16,
    /// The most places a partition's predictions learn on their own (fine
    /// lanes); the others are learnt with their class (see `lanes.rs`).
    pub max_lanes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lateness: Span::hours(1),
            horizon: Span::hours(1),
            retention: Span::hours(48),
            max_idle: Span::hours(24 * 30),
            max_parcels: 4_000_000,
            tombstones: 1 << 18,
            max_symbols: 1 << 20,
            partitions: 16,
            max_lanes: lanes::FINE_LANES,
        }
    }
}

/// Why a parcel left the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    Done,
    Idle,
    Capacity,
}

/// Counters an operator wants to see; all monotonic but `parcels` and `timers`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub duplicates: u64,
    /// Events older than the watermark when they arrived.
    pub beyond_lateness: u64,
    /// Events for parcels that already left the window.
    pub closed: u64,
    /// Events older than the parcel's end, which change counts but raise nothing.
    pub superseded: u64,
    pub parcels_created: u64,
    pub evicted_done: u64,
    pub evicted_idle: u64,
    pub evicted_capacity: u64,
    pub peak_parcels: usize,
    /// Timer wake-ups processed (a parcel re-examined when a deadline came).
    pub wakes: u64,
    /// Events held until a deadline before them was judged.
    pub parked: u64,
    /// Names not interned because the symbol table was full.
    pub symbol_overflow: u64,
    /// Contacts held until the watermark passed them (counted in `parked` too).
    pub held: u64,
}

/// What became of an applied event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Applied,
    Duplicate,
    /// The parcel left the window; the event is counted and ignored.
    Closed,
    /// Newer than a deadline not judged yet: applied once it is.
    Parked,
}

pub struct Engine {
    set: Arc<RuleSet>,
    plan: Plan,
    config: Config,
    window: Window,
    /// Each parcel's next wake-up.
    timers: Timers,
    /// Scratch space for the timers a watermark step makes due.
    due: Vec<Entry>,
    /// Transit times per lane, for `predicted` rules.
    lanes: Lanes,
    tombstones: Tombstones,
    /// The names its parcels and lanes hold, in a table it may share with
    /// the process's other engines ([`Engine::sharing`]).
    syms: Symbols,
    /// Counts the facts below when the engine runs its own branch stage, and
    /// says which rules make facts either way.
    branches: BranchStage,
    /// The size of the last snapshot, the room the next one starts with.
    snapshot_bytes: std::sync::atomic::AtomicUsize,
    /// Branch facts made since the last [`Engine::advance`] (or
    /// [`Engine::take_facts`] when the branch stage runs apart).
    facts: Vec<Fact>,
    /// Contacts judged since the last [`Engine::take_judged`]…
    judged: Vec<Judged>,
    /// …and the parcels whose customer a customer-facing alert spoke to for
    /// the first time, by their draw for the hold-out group.
    told: Vec<Draw>,
    branch_stage_inside: bool,
    watermark: Ts,
    /// Facts made now are dated after this: the watermark as the step making
    /// them began. A stage that counted up to a watermark this engine
    /// announced never meets a fact in its past, whenever the announcement
    /// reached it, so what it counts depends on the facts alone.
    facts_after: Ts,
    /// A step of the watermark was left unfinished ([`Engine::advance_within`]).
    stepping: bool,
    /// Each partition's flow of scan times: what the watermark follows.
    frontier: Frontier,
    max_contact_at: Ts,
    stats: Stats,
}

impl Engine {
    /// An engine with a table of names of its own.
    pub fn new(set: RuleSet, config: Config) -> Engine {
        let syms = Symbols::new(config.max_symbols);
        Engine::sharing(set, config, syms)
    }

    /// An engine naming places in `syms`, the table of the process's
    /// engines (`config.max_symbols` is then the table's own bound).
    pub fn sharing(set: RuleSet, config: Config, syms: Symbols) -> Engine {
        let plan = Plan::new(&set, &mut syms.lock());
        let lanes = Lanes::new(&set, config.partitions, config.lateness, config.max_lanes);
        let frontier = Frontier::new(config.partitions);
        Engine {
            branches: BranchStage::new(&set, config.partitions),
            facts: Vec::new(),
            snapshot_bytes: Default::default(),
            judged: Vec::new(),
            told: Vec::new(),
            branch_stage_inside: true,
            set: Arc::new(set),
            plan,
            tombstones: Tombstones::new(config.tombstones),
            lanes,
            config,
            window: Window::default(),
            timers: Timers::default(),
            due: Vec::new(),
            syms,
            watermark: Ts::MIN,
            facts_after: Ts::MIN,
            stepping: false,
            frontier,
            max_contact_at: Ts::MIN,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn parcels(&self) -> usize {
        self.window.len()
    }

    pub fn timers(&self) -> usize {
        self.timers.len()
    }

    /// The lanes' counters, with the lanes of every level and how many are fine.
    pub fn lane_stats(&self) -> (&LaneStats, (usize, usize)) {
        (&self.lanes.stats, self.lanes.lanes())
    }

    /// Hands branch facts to the caller ([`Engine::take_facts`]) instead of
    /// counting them here: for engines of several partitions whose facts meet
    /// in one [`BranchStage`].
    pub fn without_branch_stage(mut self) -> Engine {
        self.branch_stage_inside = false;
        self
    }

    /// The branch facts made since the last call, when the stage runs apart.
    pub fn take_facts(&mut self, into: &mut Vec<Fact>) {
        into.append(&mut self.facts);
        buffer::release(&mut self.facts);
    }

    /// The contacts judged since the last call, and the parcels told for
    /// the first time.
    pub fn take_judged(&mut self, into: &mut Vec<Judged>, told: &mut Vec<Draw>) {
        into.append(&mut self.judged);
        told.append(&mut self.told);
        buffer::release(&mut self.judged);
        buffer::release(&mut self.told);
    }

    /// Every timer at or before this instant has fired.
    pub fn watermark(&self) -> Ts {
        self.watermark
    }

    /// The newest time seen, of scans and contacts.
    pub fn newest(&self) -> Ts {
        self.frontier.newest().max(self.max_contact_at)
    }

    /// How far ahead of the flow a replayed event may be dated.
    pub fn horizon(&self) -> Span {
        self.config.horizon
    }

    /// The newest scan time the partitions' flows vouch for, outliers aside.
    pub fn vouched(&self) -> Ts {
        self.frontier.vouched()
    }

    /// The watermark the input alone justifies: the newest scan time the
    /// partitions' flows vouch for, minus the lateness.
    pub fn input_watermark(&self) -> Ts {
        self.vouched().minus(self.config.lateness)
    }

    fn partition_of(&self, parcel_id: &str) -> u16 {
        match self.config.partitions {
            0 | 1 => 0,
            n => partition::of(parcel_id, n),
        }
    }

    /// Replaces the rules without losing state: episodes of rules that keep their id stay open.
    pub fn replace_rules(&mut self, set: RuleSet) {
        let remap: Vec<Option<u8>> = self.set.rules.iter().map(|r| set.find(&r.voice.id).map(|i| i as u8)).collect();
        self.plan = Plan::new(&set, &mut self.syms.lock());
        let lanes_forgotten = self.lanes.replace_rules(&set);
        self.branches.replace_rules(&set);
        self.set = Arc::new(set);
        for p in self.window.iter_mut() {
            if lanes_forgotten {
                p.lane = LaneRef::NONE;
            }
            p.remap_rules(&remap);
        }
        // New deadlines may fall earlier than the wake-ups already set.
        for slot in self.window.live_slots() {
            self.window.get_mut(slot).wake = Ts48::MAX;
            self.reschedule(slot);
        }
    }

    /// Emits an alert of rule `r` about the parcel in `slot`; a timer rule's
    /// alert tells the parcel as it is, an event rule's as it was when its
    /// `trigger` happened.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        slot: u32,
        r: u8,
        state: AlertState,
        at: Ts,
        episode: &str,
        trigger: Option<Triggered>,
        out: &mut Vec<Alert>,
    ) {
        let p = self.window.get(slot);
        let (then_state, then_facility) = Triggered::then(trigger.as_ref(), p);
        let rule = &self.set.rules[r as usize];
        let id = &self.plan.rules[r as usize].id;
        let syms = self.syms.lock();
        let (branch, mut facts) = (syms.get(p.branch).cloned(), facts(p, &syms, trigger));
        let estimate = (state == AlertState::Firing && rule.estimate).then(|| zone(&syms, p));
        drop(syms);
        let alert_id = AlertId::new(id, p.id(), episode);
        let mut told = None;
        if let Some(tz) = estimate {
            facts.expected = self.lanes.arrival(p, at).and_then(|arrival| expected::claim(&arrival, tz));
            told = facts.expected.map(|claim| Told::new(claim, at, tz).told_by(alert_id));
            if matches!(rule.trigger, Trigger::Revised { .. }) {
                facts.revises = Some(p.told_estimate().by());
            }
        }
        let alert = Alert {
            id: alert_id,
            rule: id.clone(),
            state,
            at,
            severity: rule.voice.severity,
            audience: rule.voice.audience,
            any_hour: rule.voice.any_hour,
            parcel: Some(facts),
            branch: branch.clone(),
            branch_facts: None,
        };
        if state == AlertState::Firing && alert.audience.includes(Audience::CUSTOMER) {
            let p = self.window.get_mut(slot);
            if let Some(told) = told {
                p.tell_estimate(told);
            }
            if p.tell(at, r) {
                let draw = Draw::of(p.id());
                judge::on_telling(p, draw, at, id, &mut self.judged);
                self.told.push(draw);
            }
        }
        if state == AlertState::Firing {
            let at = self.fact_at(at);
            let fact =
                |branch: Arc<str>, facility| Fact { at, rule: Some(id.clone()), branch, facility, key: alert.id.0 };
            if let (Some(b), true) = (&branch, self.branches.counts(r as usize, By::Branch)) {
                self.facts.push(fact(b.clone(), None));
            }
            // A parcel whose last scan was its departure is on the road, not at
            // the facility; one at its own branch is the branch rules' business.
            let p = self.window.get(slot);
            let on_the_way = then_state != Kind::Departed && then_facility != p.branch;
            let facility = self.syms.lock().get(then_facility).filter(|_| on_the_way).cloned();
            if let (Some(f), true) = (facility, self.branches.counts(r as usize, By::Facility)) {
                self.facts.push(fact(branch.unwrap_or_else(|| Arc::from("")), Some(f)));
            }
        }
        out.push(alert);
    }

    /// When a fact of something at `at` counts: then, or just after the
    /// watermark the step making it began with.
    fn fact_at(&self, at: Ts) -> Ts {
        if self.facts_after == Ts::MIN {
            at
        } else {
            at.max(Ts(self.facts_after.0 + 1))
        }
    }
}

/// The event that fired an event rule, and the parcel's state and place when it happened.
pub(super) struct Triggered {
    facts: TriggerFacts,
    state: Kind,
    facility: Sym,
}

impl Triggered {
    /// The parcel's state and place an alert tells: when its event happened,
    /// or as it is for a timer rule's.
    fn then(trigger: Option<&Triggered>, p: &Parcel) -> (Kind, Sym) {
        trigger.map_or((p.state, p.facility), |t| (t.state, t.facility))
    }
}

/// The customer's zone, UTC when they gave none (or one unknown).
fn zone(syms: &Interner, p: &Parcel) -> chrono_tz::Tz {
    syms.get(p.tz).and_then(|tz| tz.parse().ok()).unwrap_or(chrono_tz::Tz::UTC)
}

fn facts(p: &Parcel, syms: &Interner, trigger: Option<Triggered>) -> ParcelFacts {
    let known = |t: Ts| (t != Ts::MIN).then_some(t);
    let (state, facility) = Triggered::then(trigger.as_ref(), p);
    ParcelFacts {
        parcel_id: p.id().to_string(),
        state,
        facility: syms.get(facility).cloned(),
        country: (p.country != [0; 2]).then_some(p.country),
        service: syms.get(p.service).cloned(),
        promised_by: known(p.promised_by.get()),
        return_by: known(p.return_by.get()),
        last_scan_at: known(p.last_scan_at.get()),
        trigger: trigger.map(|t| t.facts),
        expected: None,
        revises: None,
        recipient: p.has_recipient().then(|| RecipientFacts {
            name: p.name().map(str::to_string),
            phone: p.phone().map(str::to_string),
            email: p.email().map(str::to_string),
            locale: syms.get(p.locale).cloned(),
            tz: syms.get(p.tz).cloned(),
            channels: p.channels(),
        }),
    }
}

#[cfg(test)]
mod tests;
