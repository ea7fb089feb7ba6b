//! The rule model: what a rule pack says, validated and compiled into a form
//! the engine can evaluate without looking anything up by name.
//!
//! Rules are data (`rules/*.toml`); [`mod@file`] reads and checks them with
//! positions for every error, [`dir`] loads and watches a pack's directory;
//! [`crate::cases`] runs the rule unit tests through the engine. The engine
//! sees only [`RuleSet`]: kinds as bit sets, durations as [`Span`]s, services
//! as strings compared once per parcel.

pub mod dir;
pub mod file;

use std::fmt;
use std::path::Path;

use crate::event::Kind;
use crate::time::Span;

pub use file::{load_dir, RuleError};

/// How many kinds of event a parcel counts, for the `nth` rules of a pack.
pub const COUNTED_KINDS: usize = 4;

/// A set of event kinds, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindSet(u32);

impl KindSet {
    pub fn of(kinds: impl IntoIterator<Item = Kind>) -> KindSet {
        KindSet(kinds.into_iter().fold(0, |acc, k| acc | 1 << k as u32))
    }

    pub fn contains(self, k: Kind) -> bool {
        self.0 & (1 << k as u32) != 0
    }
}

/// Who an alert is for. A rule may address several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audience(u8);

impl Audience {
    pub const CUSTOMER: Audience = Audience(1);
    pub const BRANCH: Audience = Audience(2);
    pub const OPS: Audience = Audience(4);
    const NAMES: [(Audience, &'static str); 3] =
        [(Audience::CUSTOMER, "customer"), (Audience::BRANCH, "branch"), (Audience::OPS, "ops")];

    pub fn parse(s: &str) -> Option<Audience> {
        Audience::NAMES.iter().find(|(_, n)| *n == s).map(|(a, _)| *a)
    }

    pub fn with(self, other: Audience) -> Audience {
        Audience(self.0 | other.0)
    }

    pub fn includes(self, other: Audience) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Audience::NAMES.into_iter().filter(move |(a, _)| self.includes(*a)).map(|(_, n)| n)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Urgent,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "urgent" => Some(Severity::Urgent),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Urgent => "urgent",
        }
    }
}

/// A duration with per-service overrides (`express` stalls after 12 h, the rest after 24 h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByService {
    pub default: Span,
    pub overrides: Vec<(String, Span)>,
}

impl ByService {
    pub fn get(&self, service: Option<&str>) -> Span {
        service.and_then(|s| self.overrides.iter().find(|(name, _)| name == s)).map_or(self.default, |(_, span)| *span)
    }
}

/// Which timestamp of the parcel a deadline counts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadlineField {
    PromisedBy,
    ReturnBy,
}

/// What makes a single-parcel rule fire.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// An event of one of these kinds; once per parcel, or for `each` event.
    Event { kinds: KindSet, each: bool },
    /// No scan for `after` while the parcel is in one of `while_in`; re-armed by every scan.
    Absence { after: ByService, while_in: KindSet },
    /// Still in one of `while_in` at the parcel's `field` + `offset`.
    Deadline { field: DeadlineField, offset: ByService, while_in: KindSet },
    /// In `state` for `after` without leaving it.
    StateDuration { state: Kind, after: ByService },
    /// The `n`th event of `kind` for the parcel.
    Nth { kind: Kind, n: u8 },
    /// `count` customer contacts within `within`.
    Contacts { count: u8, within: Span },
    /// The parcel, in one of `while_in`, is expected (the `quantile` of the
    /// rest of its route, learnt per lane) after its promise plus `margin`,
    /// while the promise is still at least `min_lead` away. Lanes with less
    /// than `min_history` legs do not forecast.
    Predicted { quantile: f64, min_lead: Span, min_history: u32, margin: Span, while_in: KindSet },
    /// The expected arrival last told to the customer (by a customer rule
    /// with `estimate`) moved by `days` or more of their days, judged at
    /// each scan that sets the parcel's state; at most once a day of theirs.
    Revised { days: u8 },
}

impl Trigger {
    /// Timer rules are judged when the watermark passes a deadline; the others on an event.
    pub fn is_timer(&self) -> bool {
        matches!(
            self,
            Trigger::Absence { .. }
                | Trigger::Deadline { .. }
                | Trigger::StateDuration { .. }
                | Trigger::Predicted { .. }
        )
    }
}

/// Restricts a rule to some parcels or events. Empty lists match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub services: Vec<String>,
    pub countries: Vec<String>,
    pub branches: Vec<String>,
    pub reasons: Vec<String>,
}

/// How a rule speaks: to whom, how urgently, and whether it says when it is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voice {
    pub id: String,
    pub summary: String,
    pub audience: Audience,
    pub severity: Severity,
    /// The audiences told at any hour, ignoring their quiet hours.
    pub any_hour: Audience,
    /// A `resolved` record follows when the condition stops holding.
    pub resolve: bool,
}

/// A rule about one parcel.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub voice: Voice,
    pub filter: Filter,
    pub trigger: Trigger,
    /// A timer rule fires at most once per parcel: once its episode ended,
    /// its condition holding again (a revised promise missed too, a second
    /// stall) raises nothing. Without it, each episode is news.
    pub once: bool,
    /// Its firings tell the parcel's expected arrival (`expected_from` and
    /// `expected_to`), from the lane model, when it has a forecast (always
    /// for a `revised` rule).
    pub estimate: bool,
}

/// A rule about a branch: how many of its parcels hit some parcel rules.
#[derive(Clone, Debug, PartialEq)]
pub struct BranchRule {
    pub voice: Voice,
    /// Indexes into [`RuleSet::rules`] of the rules whose hits count.
    pub members: Vec<usize>,
    pub window: Span,
    pub threshold: Threshold,
    /// How far back the usual rate is learnt.
    pub baseline: Span,
    /// The usual rate is that of the same hours of the previous days (a
    /// branch's mornings against its mornings); before a whole day is known,
    /// the floor (`min_count`) alone judges.
    pub by_hour: bool,
    /// What is counted apart: each branch, or each facility the parcels are at.
    pub by: By,
    /// Indexes into [`RuleSet::rules`] of the customer rules an open episode
    /// speaks for: the dispatcher tells a customer whose parcel is at the
    /// episode's place one calm message instead of theirs.
    pub inhibits: Vec<usize>,
}

/// The place a branch rule counts a hit for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum By {
    /// The parcel's destination branch.
    #[default]
    Branch,
    /// The facility of the parcel's last scan, a hub or sort centre on its
    /// way: not once it departed, nor at its own branch.
    Facility,
}

/// When a branch's hits are too many.
#[derive(Clone, Debug, PartialEq)]
pub enum Threshold {
    /// At least `min` hits in the window, and at least `factor` times the usual rate.
    Count { min: u32, factor: f64 },
    /// At least `min_share` of the branch's parcels seen in the window, with at least `min_volume` of them.
    Share { min_share: f64, min_volume: u32 },
}

/// A validated rule pack. Rule order is the file order, files sorted by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub branch_rules: Vec<BranchRule>,
}

impl RuleSet {
    /// Loads and checks every `*.toml` rule file of a directory.
    pub fn load(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
        load_dir(dir)
    }

    pub fn find(&self, id: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.voice.id == id)
    }

    pub fn len(&self) -> usize {
        self.rules.len() + self.branch_rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.names().collect();
        f.write_str(&names.join("+"))
    }
}
