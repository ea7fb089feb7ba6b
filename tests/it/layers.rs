//! The code's one dependency direction: each module of `src/` imports only
//! modules of the layers below its own (`lib.rs` draws them). Test code
//! (`tests.rs`, `#[cfg(test)]` modules) may reach across; the CLI sits on top.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::repo;

/// From the bottom: a module may import the layers before its own.
const LAYERS: &[&[&str]] = &[
    &["time", "buffer"],
    &["partition", "holdout", "event", "clock"],
    &["rules"],
    &["alert"],
    &["engine"],
    &["metrics", "config"],
    &["nats", "replay", "cases", "simulate"],
    &["report", "dispatch"],
    &["live"],
    &["api"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every `crate::<module>` a file's non-test code names, with its line.
fn imports(text: &str) -> Vec<(String, usize)> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for (i, _) in line.match_indices("crate::") {
            let name: String = line[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            found.push((name, n + 1));
        }
    }
    found
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("src reads") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let src = repo("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut modules = 0;
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src").to_string_lossy().replace('\\', "/");
        let top = rel.split('/').next().unwrap_or_default().trim_end_matches(".rs").to_string();
        if ["main", "cli", "lib"].contains(&top.as_str()) || rel.ends_with("tests.rs") || rel.contains("/tests/") {
            continue;
        }
        let Some(own) = layer(&top) else { panic!("src/{rel}: module {top} has no layer here; add it to LAYERS") };
        modules += 1;
        for (name, line) in imports(&fs::read_to_string(&path).expect("a source file")) {
            let Some(theirs) = layer(&name) else { panic!("src/{rel}:{line}: crate::{name} has no layer") };
            if name != top && theirs >= own {
                wrong.entry(format!("{top} -> {name}")).or_default().push(format!("src/{rel}:{line}"));
            }
        }
    }
    assert!(modules > 50, "the sources were read: {modules} files");
    assert!(wrong.is_empty(), "imports against the direction: {wrong:#?}");
}
