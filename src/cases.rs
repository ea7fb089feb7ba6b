//! Rule unit tests, in the spirit of `promtool test rules`: a file of cases,
//! each a list of input events (in the v1 contract) and the alerts expected,
//! or expected absent. `forewarn test` runs them against the real engine.
//!
//! ```toml
//! [[test]]
//! name = "stalled fires 24 h after the last scan"
//! until = "2026-11-22T12:00:00Z"     # advance the watermark to here at the end (default: the newest event)
//! events = [
//!   { kind = "departed", at = "2026-11-20T09:00:00Z" },   # parcel_id "P1", v 1 and event_id by default
//! ]
//! expect = [{ rule = "stalled", at = "2026-11-21T09:00:00Z" }]
//! absent = ["late"]
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::alert::Alert;
use crate::engine::{Config, Engine};
use crate::event::decode;
use crate::rules::file::RuleError;
use crate::rules::RuleSet;
use crate::time::Ts;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    test: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    events: Vec<toml::Table>,
    #[serde(default)]
    expect: Vec<Expected>,
    #[serde(default)]
    absent: Vec<String>,
    /// Compare only these rules' alerts (default: the rules named in `expect`).
    #[serde(default)]
    only: Vec<String>,
    until: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    rule: String,
    at: String,
    #[serde(default = "firing")]
    state: String,
    parcel: Option<String>,
    branch: Option<String>,
    facility: Option<String>,
}

fn firing() -> String {
    "firing".into()
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    /// Empty when the case passed; otherwise the diff or the problem.
    pub failure: String,
}

/// Runs every `tests/*.toml` case under `dir` against the rules of `dir`.
pub fn run_dir(dir: &Path, set: &RuleSet) -> Result<Vec<CaseResult>, Vec<RuleError>> {
    let tests_dir = dir.join("tests");
    let no_pos = |m: String| vec![RuleError { file: tests_dir.clone(), line: 0, column: 0, message: m }];
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .map_err(|e| no_pos(format!("cannot read rule tests: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut results = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| no_pos(format!("{}: {e}", path.display())))?;
        let file: TestFile = toml::from_str(&text).map_err(|e| vec![RuleError::from_toml(&path, &text, &e)])?;
        for case in file.test {
            let failure = run_case(&case, set).unwrap_or_else(|problem| problem);
            results.push(CaseResult { file: path.clone(), name: case.name, failure });
        }
    }
    Ok(results)
}

/// Runs one case: the diff between expected and actual alerts, empty if equal.
fn run_case(case: &Case, set: &RuleSet) -> Result<String, String> {
    for id in case.absent.iter().chain(&case.only).chain(case.expect.iter().map(|e| &e.rule)) {
        if set.find(id).is_none() && !set.branch_rules.iter().any(|b| &b.voice.id == id) {
            return Err(format!("names unknown rule `{id}`"));
        }
    }
    let mut engine = Engine::new(set.clone(), Config::default());
    let mut alerts = Vec::new();
    for (i, table) in case.events.iter().enumerate() {
        let mut value = serde_json::to_value(table).map_err(|e| format!("event {}: {e}", i + 1))?;
        if let Some(o) = value.as_object_mut() {
            o.entry("v").or_insert(1.into());
            o.entry("parcel_id").or_insert("P1".into());
            o.entry("event_id").or_insert(format!("e{}", i + 1).into());
        }
        let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        let event = decode(&bytes).map_err(|r| format!("event {} was rejected: {r}", i + 1))?;
        engine.ingest(&event, &mut alerts);
    }
    // Without `until`, everything is judged up to the newest event, as at the end of a replay.
    let until = match &case.until {
        Some(until) => {
            Ts::parse_rfc3339(until).ok_or_else(|| format!("until: {until:?} is not an RFC 3339 timestamp"))?
        }
        None => engine.newest(),
    };
    engine.advance(until, &mut alerts);
    let compared: BTreeSet<&str> = if case.only.is_empty() {
        case.expect.iter().map(|e| e.rule.as_str()).collect()
    } else {
        case.only.iter().map(String::as_str).collect()
    };
    let mut problems = Vec::new();
    let mut actual: Vec<String> = Vec::new();
    for a in &alerts {
        if case.absent.iter().any(|r| **r == *a.rule) {
            problems.push(format!("+ {}   (expected absent)", line(a)));
        }
        if compared.contains(&*a.rule) {
            actual.push(line(a));
        }
    }
    let mut expected = Vec::new();
    for e in &case.expect {
        let at =
            Ts::parse_rfc3339(&e.at).ok_or_else(|| format!("expect: at {:?} is not an RFC 3339 timestamp", e.at))?;
        let subject = match (&e.facility, &e.branch, &e.parcel) {
            (Some(f), _, _) => format!("facility={f}"),
            (None, Some(b), _) => format!("branch={b}"),
            (None, None, p) => format!("parcel={}", p.as_deref().unwrap_or("P1")),
        };
        expected.push(format!("{} {} at={} {subject}", e.rule, e.state, at));
    }
    actual.sort();
    expected.sort();
    for x in &expected {
        if !actual.contains(x) {
            problems.push(format!("- {x}"));
        }
    }
    for a in &actual {
        if !expected.contains(a) {
            problems.push(format!("+ {a}"));
        }
    }
    Ok(problems.join("\n"))
}

fn line(a: &Alert) -> String {
    let state = a.state.as_str();
    let facility = a.branch_facts.as_ref().and_then(|b| b.facility.as_deref());
    let subject = match (&a.parcel, facility, &a.branch) {
        (Some(p), _, _) => format!("parcel={}", p.parcel_id),
        (None, Some(f), _) => format!("facility={f}"),
        (None, None, b) => format!("branch={}", b.as_deref().unwrap_or("")),
    };
    format!("{} {state} at={} {subject}", a.rule, a.at)
}
