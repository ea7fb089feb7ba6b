//! Reading rule files: the TOML shape of a rule, and errors that say where
//! (`file:line:column`), what is wrong and what to write instead.
//!
//! Values are checked while they are deserialised (a kind, a duration, an
//! audience), so toml attaches the position of the offending value to the
//! error; checks across rules (duplicate ids, branch rules naming unknown
//! rules) run after every file is read and point at the rule's table.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{
    Audience, BranchRule, By, ByService, DeadlineField, Filter, KindSet, Rule, RuleSet, Severity, Threshold, Trigger,
    Voice, COUNTED_KINDS,
};
use crate::event::Kind;
use crate::time::Span;

/// The most single-parcel rules a pack may hold (the engine keeps one bit per rule per parcel).
pub const MAX_PARCEL_RULES: usize = 64;
/// The most contacts a `contacts` rule may count (the engine keeps that many contact times per parcel).
pub const MAX_CONTACTS: u8 = 4;

/// A rule pack problem, with its position (line 0: the file or directory as a whole).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), position(*line, *column))]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

fn position(line: usize, column: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}:{column}")
    }
}

impl RuleError {
    pub(crate) fn at(file: &Path, text: &str, offset: usize, message: impl Into<String>) -> RuleError {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
        RuleError { file: file.to_path_buf(), line, column, message: message.into() }
    }

    pub(crate) fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> RuleError {
        let offset = err.span().map_or(0, |s| s.start);
        RuleError::at(file, text, offset, with_suggestion(err.message()))
    }
}

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// serde names the unknown key and the expected ones in backticks; add the likely intended one.
fn with_suggestion(message: &str) -> String {
    let message = message.trim_end();
    if !message.starts_with("unknown field") {
        return message.to_string();
    }
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    match quoted.split_first() {
        Some((unknown, expected)) => match suggest(unknown, expected.iter().copied()) {
            Some(s) => format!("{message}; did you mean `{s}`?"),
            None => message.to_string(),
        },
        None => message.to_string(),
    }
}

macro_rules! parsed_name {
    ($name:ident($inner:ty), $what:literal, $parse:expr, $all:expr) => {
        #[derive(Clone, Copy, Debug)]
        struct $name($inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                match $parse(text.as_str()) {
                    Some(v) => Ok($name(v)),
                    None => {
                        let all: Vec<&str> = $all;
                        let hint = match suggest(&text, all.iter().copied()) {
                            Some(s) => format!("did you mean {s:?}?"),
                            None => format!("expected one of {}", all.join(", ")),
                        };
                        Err(serde::de::Error::custom(format!("unknown {} {text:?}; {hint}", $what)))
                    }
                }
            }
        }
    };
}

parsed_name!(KindName(Kind), "kind", Kind::parse, Kind::ALL.iter().map(|k| k.as_str()).collect());
parsed_name!(AudienceName(Audience), "audience", Audience::parse, vec!["customer", "branch", "ops"]);
parsed_name!(SeverityName(Severity), "severity", Severity::parse, vec!["info", "warning", "urgent"]);
parsed_name!(
    FieldName(DeadlineField),
    "deadline field",
    |s| match s {
        "promised_by" => Some(DeadlineField::PromisedBy),
        "return_by" => Some(DeadlineField::ReturnBy),
        _ => None,
    },
    vec!["promised_by", "return_by"]
);

/// A duration written as text (`"24h"`).
#[derive(Clone, Copy, Debug)]
struct Dur(Span);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Span::parse(&text).map(Dur).map_err(serde::de::Error::custom)
    }
}

fn kinds(list: &[KindName]) -> KindSet {
    KindSet::of(list.iter().map(|k| k.0))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    #[serde(default)]
    summary: String,
    audience: Vec<AudienceName>,
    severity: SeverityName,
    #[serde(default)]
    any_hour: Vec<AudienceName>,
    #[serde(default)]
    resolve: bool,
    #[serde(default)]
    once: bool,
    #[serde(default)]
    estimate: bool,
    #[serde(default, rename = "where")]
    filter: RawFilter,
    #[serde(default)]
    by_service: BTreeMap<String, Dur>,
    on: Option<RawOn>,
    absence: Option<RawAbsence>,
    deadline: Option<RawDeadline>,
    state_duration: Option<RawStateDuration>,
    nth: Option<RawNth>,
    contacts: Option<RawContacts>,
    predicted: Option<RawPredicted>,
    revised: Option<RawRevised>,
    branch: Option<RawBranch>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    #[serde(default)]
    service: Vec<String>,
    #[serde(default)]
    country: Vec<String>,
    #[serde(default)]
    branch: Vec<String>,
    #[serde(default)]
    reason: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOn {
    kind: Vec<KindName>,
    #[serde(default)]
    each: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbsence {
    after: Dur,
    while_in: Vec<KindName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeadline {
    field: FieldName,
    #[serde(default = "zero")]
    offset: Dur,
    while_in: Vec<KindName>,
}

fn zero() -> Dur {
    Dur(Span::ZERO)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStateDuration {
    state: KindName,
    after: Dur,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNth {
    kind: KindName,
    n: Spanned<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContacts {
    count: Spanned<u8>,
    within: Dur,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPredicted {
    quantile: Spanned<f64>,
    min_lead: Dur,
    min_history: u32,
    #[serde(default = "zero")]
    margin: Dur,
    while_in: Vec<KindName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevised {
    days: Option<Spanned<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBranch {
    rules: Spanned<Vec<String>>,
    window: Dur,
    #[serde(default = "week")]
    baseline: Dur,
    min_count: Option<u32>,
    #[serde(default = "one")]
    rate_factor: f64,
    min_share: Option<Spanned<f64>>,
    #[serde(default)]
    min_volume: u32,
    #[serde(default)]
    by_hour: bool,
    #[serde(default)]
    by: Option<Spanned<String>>,
    #[serde(default)]
    inhibits: Vec<String>,
}

fn week() -> Dur {
    Dur(Span::hours(24 * 7))
}

fn one() -> f64 {
    1.0
}

const TRIGGERS: &str = "on, absence, deadline, state_duration, nth, contacts, predicted, revised or branch";

/// One file's rules before cross-file checks: parcel rules, and branch rules
/// whose member names are still to be resolved.
struct Parsed {
    rules: Vec<(Rule, usize)>,
    branch_rules: Vec<(BranchRule, Vec<Named>, usize)>,
}

fn parse_file(path: &Path, text: &str) -> Result<Parsed, Vec<RuleError>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| vec![RuleError::from_toml(path, text, &e)])?;
    let mut out = Parsed { rules: Vec::new(), branch_rules: Vec::new() };
    let mut errors = Vec::new();
    for spanned in raw.rule {
        let offset = spanned.span().start;
        let raw = spanned.into_inner();
        let id_offset = raw.id.span().start;
        let err = |offset: usize, msg: String| RuleError::at(path, text, offset, msg);
        match compile(raw) {
            Ok(Compiled::Parcel(rule)) => out.rules.push((rule, id_offset)),
            Ok(Compiled::Branch(rule, members)) => out.branch_rules.push((rule, members, id_offset)),
            Err((Some(at), msg)) => errors.push(err(at, msg)),
            Err((None, msg)) => errors.push(err(offset, msg)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

enum Compiled {
    Parcel(Rule),
    Branch(BranchRule, Vec<Named>),
}

/// A problem inside one rule: its position when known, else the rule's own.
type Problem = (Option<usize>, String);

fn compile(raw: RawRule) -> Result<Compiled, Problem> {
    let id = raw.id.get_ref().clone();
    let id_at = Some(raw.id.span().start);
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err((
            id_at,
            format!(
                "rule id {id:?} must be lower-case letters, digits and _ (it is a metric label and a template name)"
            ),
        ));
    }
    if raw.audience.is_empty() {
        return Err((None, format!("rule `{id}` has an empty audience; name customer, branch or ops")));
    }
    let voice = Voice {
        summary: raw.summary,
        audience: raw.audience.iter().fold(Audience::default(), |a, n| a.with(n.0)),
        severity: raw.severity.0,
        any_hour: raw.any_hour.iter().fold(Audience::default(), |a, n| a.with(n.0)),
        resolve: raw.resolve,
        id: id.clone(),
    };
    let by_service = |default: Span| ByService {
        default,
        overrides: raw.by_service.iter().map(|(s, d)| (s.clone(), d.0)).collect(),
    };
    let mut triggers: Vec<(&str, Trigger)> = Vec::new();
    if let Some(on) = raw.on {
        triggers.push(("on", Trigger::Event { kinds: kinds(&on.kind), each: on.each }));
    }
    if let Some(a) = raw.absence {
        triggers.push(("absence", Trigger::Absence { after: by_service(a.after.0), while_in: kinds(&a.while_in) }));
    }
    if let Some(d) = raw.deadline {
        let trigger =
            Trigger::Deadline { field: d.field.0, offset: by_service(d.offset.0), while_in: kinds(&d.while_in) };
        triggers.push(("deadline", trigger));
    }
    if let Some(s) = raw.state_duration {
        triggers.push(("state_duration", Trigger::StateDuration { state: s.state.0, after: by_service(s.after.0) }));
    }
    if let Some(n) = raw.nth {
        if *n.n.get_ref() == 0 {
            return Err((Some(n.n.span().start), "nth: n counts from 1".into()));
        }
        triggers.push(("nth", Trigger::Nth { kind: n.kind.0, n: *n.n.get_ref() }));
    }
    if let Some(c) = raw.contacts {
        let count = *c.count.get_ref();
        if count == 0 || count > MAX_CONTACTS {
            return Err((Some(c.count.span().start), format!("contacts: count must be 1 to {MAX_CONTACTS}")));
        }
        triggers.push(("contacts", Trigger::Contacts { count, within: c.within.0 }));
    }
    if let Some(f) = raw.predicted {
        let quantile = *f.quantile.get_ref();
        if !(quantile > 0.0 && quantile < 1.0) {
            return Err((Some(f.quantile.span().start), "predicted: quantile is a fraction between 0 and 1".into()));
        }
        if f.while_in.iter().any(|k| k.0.is_done() || k.0 == Kind::ReadyForPickup) {
            let msg = format!("rule `{id}`: predicted.while_in names a state where the parcel has already arrived");
            return Err((None, msg));
        }
        let trigger = Trigger::Predicted {
            quantile,
            min_lead: f.min_lead.0,
            min_history: f.min_history.max(1),
            margin: f.margin.0,
            while_in: kinds(&f.while_in),
        };
        triggers.push(("predicted", trigger));
    }
    if let Some(v) = raw.revised {
        let days = v.days.as_ref().map_or(1, |d| *d.get_ref());
        if days == 0 {
            let at = v.days.map(|d| d.span().start);
            return Err((at, "revised: days counts from 1 (a move within the day is no news)".into()));
        }
        triggers.push(("revised", Trigger::Revised { days }));
    }
    let is_branch = raw.branch.is_some();
    let count = triggers.len() + usize::from(is_branch);
    if count != 1 {
        let names: Vec<&str> = triggers.iter().map(|(n, _)| *n).chain(is_branch.then_some("branch")).collect();
        let msg = if count == 0 {
            format!("rule `{id}` has no trigger; give it one of {TRIGGERS}")
        } else {
            format!("rule `{id}` has {} triggers ({}); a rule has exactly one", count, names.join(", "))
        };
        return Err((None, msg));
    }
    if let Some(b) = raw.branch {
        if raw.estimate {
            let msg = format!("rule `{id}`: estimate tells one parcel's expected arrival; a branch rule has none");
            return Err((None, msg));
        }
        return branch_rule(voice, b).map(|(r, m)| Compiled::Branch(r, m));
    }
    let (_, trigger) = triggers.remove(0);
    if !raw.by_service.is_empty() && (!trigger.is_timer() || matches!(trigger, Trigger::Predicted { .. })) {
        return Err((
            None,
            format!("rule `{id}`: by_service applies to absence, deadline and state_duration rules only"),
        ));
    }
    if raw.once && !trigger.is_timer() {
        let msg = format!(
            "rule `{id}`: once applies to timer rules (absence, deadline, state_duration, predicted); an event rule fires once per parcel unless on.each = true"
        );
        return Err((None, msg));
    }
    if !raw.filter.reason.is_empty() && trigger.is_timer() {
        let msg =
            format!("rule `{id}`: where.reason filters events; a timer rule has no event to filter (use on or nth)");
        return Err((None, msg));
    }
    let filter = Filter {
        services: raw.filter.service,
        countries: raw.filter.country,
        branches: raw.filter.branch,
        reasons: raw.filter.reason,
    };
    let estimate = raw.estimate || matches!(trigger, Trigger::Revised { .. });
    Ok(Compiled::Parcel(Rule { voice, filter, trigger, once: raw.once, estimate }))
}

/// A rule a branch rule names: `true` for one it inhibits, `false` for one it counts.
type Named = (String, bool);

/// A branch rule and the rules it names.
fn branch_rule(voice: Voice, b: RawBranch) -> Result<(BranchRule, Vec<Named>), Problem> {
    let threshold = match (b.min_count, b.min_share) {
        (Some(min), None) => Threshold::Count { min, factor: b.rate_factor },
        (None, Some(share)) => {
            let s = *share.get_ref();
            if !(0.0..=1.0).contains(&s) {
                return Err((Some(share.span().start), "min_share is a fraction between 0 and 1".into()));
            }
            Threshold::Share { min_share: s, min_volume: b.min_volume }
        }
        _ => return Err((None, format!("branch rule `{}` needs exactly one of min_count or min_share", voice.id))),
    };
    if b.window.0 <= Span::ZERO {
        return Err((None, format!("branch rule `{}`: window must be positive", voice.id)));
    }
    let by = match b.by.as_ref().map(|s| (s.get_ref().as_str(), s.span().start)) {
        None | Some(("branch", _)) => By::Branch,
        Some(("facility", _)) => By::Facility,
        Some((other, at)) => {
            return Err((Some(at), format!("by = {other:?}: a branch rule counts by \"branch\" or \"facility\"")))
        }
    };
    let members = b.rules.get_ref().clone();
    let rule = BranchRule {
        voice,
        members: Vec::new(),
        window: b.window.0,
        threshold,
        baseline: b.baseline.0,
        by_hour: b.by_hour,
        by,
        inhibits: Vec::new(),
    };
    Ok((rule, members.into_iter().map(|m| (m, false)).chain(b.inhibits.into_iter().map(|m| (m, true))).collect()))
}

/// Reads every `*.toml` file of `dir` (sorted by name) into one checked pack.
pub fn load_dir(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
    let no_pos = |msg: String| vec![RuleError { file: dir.to_path_buf(), line: 0, column: 0, message: msg }];
    let entries = std::fs::read_dir(dir)
        .map_err(|e| no_pos(format!("cannot read the rules directory: {e}; pass --rules DIR")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(no_pos("no rule files (*.toml) in the rules directory".into()));
    }
    let mut sources = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| no_pos(format!("{}: {e}", path.display())))?;
        sources.push((path, text));
    }
    load_sources(&sources)
}

/// Builds a pack from `(path, text)` pairs, as if they were files of one directory.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Result<RuleSet, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut set = RuleSet::default();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut branch_members = Vec::new();
    let mut place = |path: &Path, text: &str, id: &str, offset: usize, errors: &mut Vec<RuleError>| {
        let here = RuleError::at(path, text, offset, "");
        let at = format!("{}:{}", path.display(), here.line);
        match seen.get(id) {
            Some(first) => {
                errors.push(RuleError::at(path, text, offset, format!("rule id `{id}` is already defined at {first}")));
                false
            }
            None => {
                seen.insert(id.to_string(), at);
                true
            }
        }
    };
    for (path, text) in sources {
        match parse_file(path, text) {
            Ok(parsed) => {
                for (rule, offset) in parsed.rules {
                    if place(path, text, &rule.voice.id, offset, &mut errors) {
                        set.rules.push(rule);
                    }
                }
                for (rule, members, offset) in parsed.branch_rules {
                    if place(path, text, &rule.voice.id, offset, &mut errors) {
                        branch_members.push((path, text, rule, members, offset));
                    }
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    for (path, text, mut rule, members, offset) in branch_members {
        for (name, inhibited) in members {
            match set.find(&name) {
                Some(i) if inhibited => rule.inhibits.push(i),
                Some(i) => rule.members.push(i),
                None => {
                    let hint = suggest(&name, set.rules.iter().map(|r| r.voice.id.as_str()))
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    let verb = if inhibited { "inhibits" } else { "counts" };
                    let msg = format!("branch rule `{}` {verb} unknown rule `{name}`{hint}", rule.voice.id);
                    errors.push(RuleError::at(path, text, offset, msg));
                }
            }
        }
        set.branch_rules.push(rule);
    }
    let mut counted: Vec<Kind> = set
        .rules
        .iter()
        .filter_map(|r| match r.trigger {
            Trigger::Nth { kind, .. } => Some(kind),
            _ => None,
        })
        .collect();
    counted.sort();
    counted.dedup();
    if counted.len() > COUNTED_KINDS {
        errors.push(RuleError {
            file: sources[0].0.clone(),
            line: 0,
            column: 0,
            message: format!("nth rules count {} kinds of event; at most {COUNTED_KINDS} are supported", counted.len()),
        });
    }
    let predicted: Vec<&str> = set
        .rules
        .iter()
        .filter(|r| matches!(r.trigger, Trigger::Predicted { .. }))
        .map(|r| r.voice.id.as_str())
        .collect();
    if predicted.len() > 1 {
        errors.push(RuleError {
            file: sources[0].0.clone(),
            line: 0,
            column: 0,
            message: format!(
                "{} predicted rules ({}); the lane model forecasts one quantile, so a pack has at most one",
                predicted.len(),
                predicted.join(", ")
            ),
        });
    }
    if set.rules.len() > MAX_PARCEL_RULES {
        errors.push(RuleError {
            file: sources[0].0.clone(),
            line: 0,
            column: 0,
            message: format!("{} parcel rules; at most {MAX_PARCEL_RULES} are supported", set.rules.len()),
        });
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

impl fmt::Display for DeadlineField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeadlineField::PromisedBy => "promised_by",
            DeadlineField::ReturnBy => "return_by",
        })
    }
}

#[cfg(test)]
mod tests;
