//! A rule set compiled for evaluation: rules grouped by the event kinds that
//! can trigger them, timer rules in one list, and every string a rule compares
//! with (services, branches) interned, so the per-event path compares
//! integers.

use std::sync::Arc;

use super::lanes::Lanes;
use super::parcel::Parcel;
use super::sym::{Interner, Sym};
use crate::event::Kind;
use crate::rules::{ByService, DeadlineField, Filter, KindSet, RuleSet, Trigger};
use crate::time::{Span, Ts};

/// A duration with its per-service overrides resolved to symbols.
pub struct Durations {
    default: Span,
    by_service: Vec<(Sym, Span)>,
}

impl Durations {
    fn new(d: &ByService, syms: &mut Interner) -> Durations {
        Durations {
            default: d.default,
            by_service: d.overrides.iter().filter_map(|(s, span)| Some((syms.intern(s)?, *span))).collect(),
        }
    }

    fn get(&self, service: Sym) -> Span {
        self.by_service.iter().find(|(s, _)| *s == service).map_or(self.default, |(_, d)| *d)
    }
}

/// When a timer rule's deadline falls, given the parcel.
pub enum Timer {
    Absence {
        after: Durations,
        while_in: KindSet,
    },
    Deadline {
        field: DeadlineField,
        offset: Durations,
        while_in: KindSet,
    },
    StateDuration {
        state: Kind,
        after: Durations,
    },
    /// The parcel's expected arrival passes its promise plus `margin`, at
    /// least `min_lead` before the promise.
    Predicted {
        min_lead: Span,
        margin: Span,
        while_in: KindSet,
    },
}

impl Timer {
    /// Whether a parcel in `state` can have a deadline for this timer.
    fn can_fire_in(&self, state: Kind) -> bool {
        match self {
            Timer::Absence { while_in, .. } | Timer::Deadline { while_in, .. } | Timer::Predicted { while_in, .. } => {
                while_in.contains(state)
            }
            Timer::StateDuration { state: s, .. } => *s == state,
        }
    }
}

/// A filter over parcel attributes, with strings resolved to symbols.
pub struct SymFilter {
    services: Vec<Sym>,
    branches: Vec<Sym>,
    countries: Vec<[u8; 2]>,
    reasons: Vec<String>,
    always: bool,
}

impl SymFilter {
    fn new(f: &Filter, syms: &mut Interner) -> SymFilter {
        let mut intern = |list: &[String]| list.iter().map(|s| syms.intern(s).unwrap_or(Sym::NONE)).collect();
        SymFilter {
            services: intern(&f.services),
            branches: intern(&f.branches),
            countries: f
                .countries
                .iter()
                .filter_map(|c| <[u8; 2]>::try_from(c.to_ascii_uppercase().as_bytes()).ok())
                .collect(),
            reasons: f.reasons.clone(),
            always: *f == Filter::default(),
        }
    }

    pub fn matches(&self, p: &Parcel, reason: Option<&str>) -> bool {
        fn ok<T: PartialEq>(list: &[T], v: &T) -> bool {
            list.is_empty() || list.contains(v)
        }
        self.always
            || (ok(&self.services, &p.service)
                && ok(&self.branches, &p.branch)
                && ok(&self.countries, &p.country)
                && (self.reasons.is_empty() || reason.is_some_and(|r| self.reasons.iter().any(|x| x == r))))
    }
}

/// One rule, ready to evaluate.
pub struct Compiled {
    pub id: Arc<str>,
    pub filter: SymFilter,
    pub timer: Option<Timer>,
}

/// The whole pack, compiled.
pub struct Plan {
    pub rules: Vec<Compiled>,
    /// Event-driven rules (on, nth, contacts, revised) by the kind that can trigger them.
    pub on_kind: Vec<Vec<u8>>,
    /// For each state, the timer rules that can have a deadline in it, in rule order.
    pub timers_in: Vec<Vec<u8>>,
    /// One bit per timer rule.
    pub timer_mask: u64,
    /// One bit per timer rule that fires at most once per parcel: its fired
    /// bit stays once its episode ended.
    pub once_mask: u64,
    /// For each kind, its place in a parcel's counters, if an `nth` rule counts it.
    pub counted: [Option<u8>; Kind::ALL.len()],
}

impl Plan {
    pub fn new(set: &RuleSet, syms: &mut Interner) -> Plan {
        let mut on_kind = vec![Vec::new(); Kind::ALL.len()];
        let mut timers_in = vec![Vec::new(); Kind::ALL.len()];
        let mut timer_mask = 0u64;
        let mut once_mask = 0u64;
        let mut counted = [None; Kind::ALL.len()];
        let mut places = 0u8;
        let mut rules = Vec::with_capacity(set.rules.len());
        for (i, rule) in set.rules.iter().enumerate() {
            let idx = i as u8;
            let timer = match &rule.trigger {
                Trigger::Event { kinds, .. } => {
                    for k in Kind::ALL.iter().filter(|k| kinds.contains(**k)) {
                        on_kind[*k as usize].push(idx);
                    }
                    None
                }
                Trigger::Nth { kind, .. } => {
                    on_kind[*kind as usize].push(idx);
                    if counted[*kind as usize].is_none() {
                        // The rule checker allows no more counted kinds than there are places.
                        counted[*kind as usize] = Some(places);
                        places += 1;
                    }
                    None
                }
                Trigger::Contacts { .. } => {
                    on_kind[Kind::CustomerContact as usize].push(idx);
                    None
                }
                Trigger::Revised { .. } => {
                    for k in Kind::ALL.iter().filter(|k| k.sets_state()) {
                        on_kind[*k as usize].push(idx);
                    }
                    None
                }
                Trigger::Absence { after, while_in } => {
                    Some(Timer::Absence { after: Durations::new(after, syms), while_in: *while_in })
                }
                Trigger::Deadline { field, offset, while_in } => {
                    Some(Timer::Deadline { field: *field, offset: Durations::new(offset, syms), while_in: *while_in })
                }
                Trigger::StateDuration { state, after } => {
                    Some(Timer::StateDuration { state: *state, after: Durations::new(after, syms) })
                }
                Trigger::Predicted { min_lead, margin, while_in, .. } => {
                    Some(Timer::Predicted { min_lead: *min_lead, margin: *margin, while_in: *while_in })
                }
            };
            if let Some(t) = &timer {
                for k in Kind::ALL.iter().filter(|k| t.can_fire_in(**k)) {
                    timers_in[*k as usize].push(idx);
                }
                timer_mask |= 1 << i;
                if rule.once {
                    once_mask |= 1 << i;
                }
            }
            rules.push(Compiled {
                id: Arc::from(rule.voice.id.as_str()),
                filter: SymFilter::new(&rule.filter, syms),
                timer,
            });
        }
        Plan { rules, on_kind, timers_in, timer_mask, once_mask, counted }
    }

    /// How many events of `kind` the parcel has had (0 for kinds no rule counts).
    pub fn count(&self, p: &Parcel, kind: Kind) -> u8 {
        self.counted[kind as usize].map_or(0, |i| p.counts[i as usize])
    }

    /// The earliest deadline of a timer rule not yet fired for `p` (`Ts::MAX` if none).
    pub fn next_deadline(&self, p: &Parcel, lanes: &Lanes) -> Ts {
        self.timers_in[p.state as usize]
            .iter()
            .filter(|&&r| p.fired & (1u64 << r) == 0)
            .filter_map(|&r| self.deadline(r, p, lanes))
            .min()
            .unwrap_or(Ts::MAX)
    }

    /// When timer rule `r` falls due for `p`, if it can at all in the parcel's
    /// present state. A prediction that fired holds until the parcel leaves
    /// `while_in` (it arrived): a forecast that improves does not take it back,
    /// so the customer is not told late, then on time, then late again.
    pub fn deadline(&self, r: u8, p: &Parcel, lanes: &Lanes) -> Option<Ts> {
        let rule = &self.rules[r as usize];
        let due = match rule.timer.as_ref()? {
            Timer::Absence { after, while_in } => (while_in.contains(p.state) && p.last_scan_at.get() != Ts::MIN)
                .then(|| p.last_scan_at.get().plus(after.get(p.service))),
            Timer::Deadline { field, offset, while_in } => {
                let base = match field {
                    DeadlineField::PromisedBy => p.promised_by.get(),
                    DeadlineField::ReturnBy => p.return_by.get(),
                };
                (while_in.contains(p.state) && base != Ts::MIN).then(|| base.plus(offset.get(p.service)))
            }
            Timer::StateDuration { state, after } => (p.state == *state && p.state_since.get() != Ts::MIN)
                .then(|| p.state_since.get().plus(after.get(p.service))),
            Timer::Predicted { min_lead, margin, while_in } => {
                if !while_in.contains(p.state) || p.promised_by.get() == Ts::MIN {
                    None
                } else if p.fired & (1u64 << r) != 0 {
                    Some(Ts::MIN)
                } else {
                    lanes.late_at(p, p.promised_by.get().plus(*margin), p.promised_by.get().minus(*min_lead))
                }
            }
        }?;
        rule.filter.matches(p, None).then_some(due)
    }
}
