//! `forewarn check` and `forewarn test`: a rule pack, its templates and
//! branch directory checked, its rule unit tests run.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use forewarn::cases::run_dir;
use forewarn::dispatch::branches::Directory;
use forewarn::dispatch::template::Templates;
use forewarn::rules::RuleError;

use super::load_rules;

/// Checks the rules, then renders every template with sample data and reads
/// the branch directory.
pub fn check(dir: &Path) -> Result<ExitCode> {
    let set = load_rules(dir)?;
    say!("{}: {} rules ok", dir.display(), set.len());
    let defaults = forewarn::config::Dispatch::default();
    let templates_dir = defaults.templates_dir(dir);
    let templates = Templates::check_pack(&templates_dir, &defaults.default_locale, &set).map_err(|problems| {
        for p in &problems {
            eprintln!("{p}");
        }
        anyhow::anyhow!("{} problem(s) in the templates at {}", problems.len(), templates_dir.display())
    })?;
    say!("{}: templates ok in {}", templates_dir.display(), templates.locales().collect::<Vec<_>>().join(", "));
    let directory = Directory::load(&defaults.branches_file(dir)).map_err(anyhow::Error::msg)?;
    say!("{}: {} branches ok", defaults.branches_file(dir).display(), directory.len());
    Ok(ExitCode::SUCCESS)
}

pub fn test(dir: &Path) -> Result<ExitCode> {
    let set = load_rules(dir)?;
    let results = run_dir(dir, &set).map_err(|errors: Vec<RuleError>| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!("cannot read the rule tests")
    })?;
    let failed = results.iter().filter(|r| !r.failure.is_empty()).count();
    for r in &results {
        if r.failure.is_empty() {
            say!("ok    {}: {}", r.file.display(), r.name);
        } else {
            say!("FAIL  {}: {}", r.file.display(), r.name);
            for line in r.failure.lines() {
                say!("        {line}");
            }
        }
    }
    say!("rules: {} passed, {failed} failed", results.len() - failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
