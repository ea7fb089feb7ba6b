//! The rules directory as the processor watches it: loaded at start, and
//! again on SIGHUP or when its files change (names, sizes, modification
//! times, looked at every few seconds: no watcher thread, nothing missed on
//! network file systems).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::rules::RuleSet;

/// The rules directory's file names, sizes and modification times.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

pub struct RulesDir {
    dir: PathBuf,
    /// What the directory looked like at the last load.
    seen: Option<Fingerprint>,
}

impl RulesDir {
    pub fn new(dir: &Path) -> RulesDir {
        RulesDir { dir: dir.to_path_buf(), seen: None }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Loads the pack; the errors, one `file:line:column` a line.
    pub fn load(&mut self) -> Result<RuleSet, String> {
        self.seen = fingerprint(&self.dir);
        RuleSet::load(&self.dir).map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    }

    /// Whether the files changed since the last load.
    pub fn changed(&self) -> bool {
        fingerprint(&self.dir) != self.seen
    }
}

fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let mut files: Fingerprint = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| e.metadata().ok().map(|m| (e.path(), m.len(), m.modified().ok())))
        .collect();
    files.sort();
    Some(files)
}
