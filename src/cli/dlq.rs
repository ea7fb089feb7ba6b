//! `forewarn dlq`: the dead letters listed, or sent back to their
//! subjects once their cause is fixed.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;

use forewarn::live::dlq;
use forewarn::nats::connect;

use super::{config, logs, runtime, Common};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List the dead letters: sequence, original subject, reason.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Send dead letters back to their original subjects and remove them.
    Replay {
        #[command(flatten)]
        common: Common,
        /// Only these dead-letter sequences.
        #[arg(long = "seq")]
        sequences: Vec<u64>,
        /// Only letters with this reason code (e.g. invalid_json, misrouted).
        #[arg(long)]
        code: Option<String>,
        /// All of them.
        #[arg(long, conflicts_with_all = ["sequences", "code"])]
        all: bool,
    },
}

pub fn dlq(command: DlqCommand) -> Result<ExitCode> {
    logs::init_logs();
    let common = match &command {
        DlqCommand::List { common } | DlqCommand::Replay { common, .. } => common,
    };
    let config = config(common)?;
    runtime()?.block_on(async move {
        let client = connect::connect(&config.nats, "forewarn dlq").await?;
        let js = connect::jetstream(client);
        let stream = &config.streams.dead_letters.name;
        let letters = dlq::list(&js, stream).await?;
        match command {
            DlqCommand::List { .. } => {
                for l in &letters {
                    println!("{}\t{}\t{}\t{}", l.sequence, l.subject, l.code, l.reason);
                }
                eprintln!("{} dead letter(s) in {stream}", letters.len());
            }
            DlqCommand::Replay { sequences, code, all, .. } => {
                if !all && sequences.is_empty() && code.is_none() {
                    bail!("say which letters: --seq N (repeatable), --code CODE, or --all");
                }
                let chosen: Vec<_> = letters
                    .into_iter()
                    .filter(|l| all || sequences.contains(&l.sequence) || code.as_deref() == Some(l.code.as_str()))
                    .collect();
                let done = dlq::replay(&js, stream, &chosen).await?;
                eprintln!("{done} dead letter(s) sent back to their subjects");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
