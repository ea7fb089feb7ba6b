//! `forewarn report`: the proof that forewarn speaks first, as text, JSON
//! or an HTML page.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use forewarn::config::Config as Settings;
use forewarn::engine::{Config, Split};

use super::load_rules;

#[derive(Args)]
pub struct ReportArgs {
    /// The events file (JSON Lines; read twice).
    events: PathBuf,
    /// The rules directory.
    #[arg(long, default_value = "rules", env = "FOREWARN_RULES")]
    rules: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML page with the charts.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// The deployment's partition count (as `partitions.count` live):
    /// predictions learn per partition, so a replay forecasts as the live run [default: 16].
    #[arg(long)]
    partitions: Option<u16>,
    /// The configuration file a deployment runs with: the engine's settings
    /// (window, retention, lateness, lanes, partitions) as live, as `replay`
    /// takes them. `--partitions` overrides it.
    #[arg(long, env = "FOREWARN_CONFIG")]
    config: Option<PathBuf>,
    /// The hold-out group's share, as `dispatch.holdout` live (the
    /// configuration's by default): what the messages changed, the group
    /// messaged against the group kept quiet.
    #[arg(long, value_name = "SHARE")]
    holdout: Option<f64>,
}

pub fn report(args: ReportArgs) -> Result<ExitCode> {
    let set = load_rules(&args.rules)?;
    let settings = args.config.as_deref().map(Settings::load).transpose()?;
    // The whole window's bounds: the split engine shares them among its partitions.
    let base = settings.as_ref().map_or_else(Config::default, |s| s.engine(1));
    let config = Config { partitions: args.partitions.unwrap_or(base.partitions), ..base };
    let mut engine = Split::new(set.clone(), config);
    let path = args.events.clone();
    let open = || -> io::Result<Box<dyn Read>> { Ok(Box::new(File::open(&path)?)) };
    let share = args.holdout.or(settings.as_ref().map(|s| s.dispatch.holdout)).unwrap_or(0.0);
    if !forewarn::holdout::valid_share(share) {
        anyhow::bail!("--holdout {share} is not a share between 0 and 0.5 (0.05: 5 % of parcels held out)");
    }
    let report = forewarn::report::run(&mut engine, &set, share, open)
        .with_context(|| format!("cannot report on {}", args.events.display()))?;
    if let Some(path) = &args.html {
        std::fs::write(path, forewarn::report::html::page(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(ExitCode::SUCCESS)
}
