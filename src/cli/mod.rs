//! What the commands share: reading a rule pack, progress bars, output
//! files, the runtime and logs of the commands on NATS, and the settings
//! those commands have in common.

pub mod dlq;
pub mod logs;
pub mod render;
pub mod replay;
pub mod report;
pub mod rules;
pub mod run;
pub mod simulate;

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use forewarn::config::Config;
use forewarn::rules::RuleSet;
use forewarn::time::{Span, Ts};

/// Settings every NATS command shares.
#[derive(Args)]
pub struct Common {
    /// The configuration file (every field is documented in forewarn.toml).
    #[arg(long, env = "FOREWARN_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "FOREWARN_NATS_URL")]
    pub nats: Option<String>,
}

/// The configuration file's settings (or the defaults), with `--nats` over them.
pub fn config(common: &Common) -> Result<Config> {
    let mut config = match &common.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(url) = &common.nats {
        config.nats.url = url.clone();
    }
    Ok(config)
}

/// The runtime of the commands on NATS: two workers, as the machines we size for.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// A duration flag such as `1h` or `90s`.
pub fn span(s: &str) -> Result<Span, String> {
    Span::parse(s)
}

/// An instant flag in RFC 3339.
pub fn instant(s: &str) -> Result<Ts, String> {
    Ts::parse_rfc3339(s).ok_or_else(|| format!("{s:?} is not an RFC 3339 timestamp"))
}

/// Loads a rule pack, printing every error.
pub fn load_rules(dir: &Path) -> Result<RuleSet> {
    RuleSet::load(dir).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{} error(s) in the rules at {}", errors.len(), dir.display())
    })
}

/// A progress bar on a terminal; hidden when standard error is not one.
pub fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = format!("{what} {{bar:40}} {{percent}}% {{binary_bytes_per_sec}} eta {{eta}}");
    if let Ok(style) = ProgressStyle::with_template(if len.is_some() { &template } else { "{spinner} {msg}" }) {
        bar.set_style(style);
    }
    bar
}

/// A buffered new file at `path`.
pub fn create(path: &Path) -> Result<BufWriter<File>> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

/// A buffered file at `path`, or standard output when there is none.
pub fn output(path: Option<&Path>) -> Result<Box<dyn Write>> {
    Ok(match path {
        Some(path) => Box::new(create(path)?),
        None => Box::new(BufWriter::with_capacity(1 << 20, io::stdout().lock())),
    })
}
