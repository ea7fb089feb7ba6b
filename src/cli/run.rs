//! `forewarn run`: the processor, the dispatcher or both on NATS until a
//! signal stops them. Flags and environment variables override the
//! configuration file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::sync::{mpsc, watch};

use forewarn::api;
use forewarn::config::dispatch::SmsProvider;
use forewarn::config::{std_duration, Role};
use forewarn::dispatch::outcome::Stats;
use forewarn::live::{self, Controls, Readiness};
use forewarn::nats::LiveError;

use super::{config, logs, runtime, Common};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The rules directory.
    #[arg(long, env = "FOREWARN_RULES")]
    rules: Option<PathBuf>,
    /// Where health (/healthz, /readyz) and metrics (/metrics) are served (host:port).
    #[arg(long, env = "FOREWARN_HTTP")]
    http: Option<String>,
    /// The partitions this instance owns: all, a list such as 0-7 or 0,2,9-11, or K/N (slice K of N).
    #[arg(long, env = "FOREWARN_PARTITIONS")]
    partitions: Option<String>,
    /// This instance's name: its consumers and checkpoints are its own;
    /// dispatchers of one name form a group (one sends, the others stand by).
    #[arg(long, env = "FOREWARN_INSTANCE")]
    instance: Option<String>,
    /// Ignore (and replace) the stored checkpoints: rebuild the state from the streams.
    #[arg(long)]
    rebuild: bool,
    /// What to run: all (detection and dispatch), detect, or dispatch.
    #[arg(long, env = "FOREWARN_ROLE", value_enum)]
    role: Option<Role>,
    #[command(flatten)]
    channels: ChannelArgs,
}

/// Where notifications go; without them, the outbox directory.
#[derive(Args)]
pub struct ChannelArgs {
    /// SMTP server: smtp://host:port, smtp://host:port?tls=required (STARTTLS), smtps://host:port;
    /// credentials from FOREWARN_SMTP_USER and FOREWARN_SMTP_PASSWORD.
    #[arg(long, env = "FOREWARN_SMTP")]
    smtp: Option<String>,
    /// SMS gateway base URL.
    #[arg(long, env = "FOREWARN_SMS_URL")]
    sms_url: Option<String>,
    /// twilio (token in FOREWARN_SMS_TOKEN) or webhook (signed with FOREWARN_SMS_SECRET).
    #[arg(long, env = "FOREWARN_SMS_PROVIDER", value_enum)]
    sms_provider: Option<SmsProvider>,
    /// The branch directory (default: RULES/directory/branches.toml).
    #[arg(long, env = "FOREWARN_BRANCHES")]
    branches: Option<PathBuf>,
    /// Where messages go when no SMTP server or SMS gateway is set.
    #[arg(long, env = "FOREWARN_OUTBOX")]
    outbox: Option<PathBuf>,
}

impl ChannelArgs {
    pub fn apply(self, d: &mut forewarn::config::Dispatch) {
        if let Some(smtp) = self.smtp {
            d.email.smtp = smtp;
        }
        if let Some(url) = self.sms_url {
            d.sms.url = url;
        }
        if let Some(provider) = self.sms_provider {
            d.sms.provider = provider;
        }
        if let Some(branches) = self.branches {
            d.branches = branches;
        }
        if let Some(outbox) = self.outbox {
            d.outbox = outbox;
        }
    }
}

/// What the dispatcher did, in one line: totals, then each channel and reason.
pub fn summary(stats: &Stats) -> String {
    let detail: Vec<String> = stats
        .outcomes
        .iter()
        .map(|((outcome, channel, reason), n)| match *reason {
            "" => format!("{outcome} {channel} {n}"),
            reason => format!("{outcome} {channel} {reason} {n}"),
        })
        .collect();
    format!(
        "{} alerts, {} sent, {} failed, {} skipped ({})",
        stats.alerts,
        stats.total("sent"),
        stats.total("failed"),
        stats.total("skipped"),
        detail.join(", ")
    )
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    logs::init_logs();
    let mut config = config(&args.common)?;
    if let Some(rules) = args.rules {
        config.rules = rules;
    }
    if let Some(http) = args.http {
        config.http = http;
    }
    if let Some(partitions) = args.partitions {
        config.partitions.owned = partitions;
    }
    if let Some(instance) = args.instance {
        config.instance = instance;
    }
    if let Some(role) = args.role {
        config.role = role;
    }
    args.channels.apply(&mut config.dispatch);
    config.validate()?;
    let deadline = std_duration(config.shutdown.deadline);
    let (detect, dispatch) = (config.role.detects(), config.role.dispatches());
    // Templates, directory and channel settings are checked before anything
    // starts, so a mistake there stops the process at once, not later.
    let dispatcher = dispatch.then(|| forewarn::dispatch::Dispatcher::new(&config)).transpose()?;
    runtime()?.block_on(async move {
        if let Some(d) = &dispatcher {
            d.check_channels()?;
        }
        let (stop_tx, stop) = watch::channel(false);
        let (reload_tx, reload) = mpsc::channel(1);
        let (templates_tx, templates) = watch::channel(0u64);
        tokio::spawn(signals(stop_tx.clone(), (reload_tx, templates_tx), deadline));
        // Alone, the dispatcher is ready as long as it runs.
        let readiness = match detect {
            true => Readiness::new("starting", std_duration(config.checkpoint.stale_after)),
            false => Readiness::default(),
        };
        if !config.http.is_empty() {
            api::serve(&config, readiness.clone()).await?;
        }
        let dispatcher = dispatcher.map(|d| {
            let task = tokio::spawn(forewarn::dispatch::run::run(config.clone(), d, stop.clone(), templates));
            tokio::spawn(dispatcher_ended(task, stop_tx.clone(), readiness.clone()))
        });
        if detect {
            let summary = live::run(config, args.rebuild, Controls { stop, reload, readiness }).await?;
            eprintln!(
                "forewarn stopped: {} events, {} alerts, {} dead letters, {} checkpoints",
                summary.events, summary.alerts, summary.dead_letters, summary.checkpoints
            );
        }
        if let Some(dispatcher) = dispatcher {
            let stats = dispatcher.await.context("the dispatcher panicked")??;
            eprintln!("dispatcher stopped: {}, {} still held", summary(&stats), stats.holding);
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The dispatcher's end. Before a stop, no message would leave any more:
/// readiness says so and the whole process stops, with the reason.
async fn dispatcher_ended(
    task: tokio::task::JoinHandle<Result<Stats, LiveError>>,
    stop: watch::Sender<bool>,
    readiness: Readiness,
) -> Result<Stats> {
    let ended = task.await;
    if *stop.borrow() {
        return Ok(ended.context("the dispatcher panicked")??);
    }
    let why = match ended {
        Ok(Ok(_)) => "it returned".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("it panicked: {e}"),
    };
    tracing::error!(reason = %why, "the dispatcher stopped; stopping");
    readiness.set(Some(&format!("the dispatcher stopped: {why}")));
    let _ = stop.send(true);
    bail!("the dispatcher stopped before it was told to: {why}")
}

/// SIGTERM or SIGINT: stop, within the deadline or exit with an error.
/// SIGHUP: reload the rules (the processor) and the templates (the dispatcher).
async fn signals(
    stop: watch::Sender<bool>,
    (rules, templates): (mpsc::Sender<()>, watch::Sender<u64>),
    deadline: Duration,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = rules.try_send(());
                templates.send_modify(|n| *n += 1);
            }
        }
    }
    let _ = stop.send(true);
    tokio::select! {
        _ = tokio::time::sleep(deadline) => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("error: {}", LiveError::ShutdownDeadline(deadline));
    std::process::exit(1);
}
