//! The commands that talk to NATS: `run`, `dlq` and `simulate --nats`.
//! Flags and environment variables override the configuration file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tokio::sync::{mpsc, watch};

use forewarn::config::{std_duration, Config, Role};
use forewarn::live::{self, dlq, feed, Controls};
use forewarn::nats::{connect, LiveError};

/// Settings every NATS command shares.
#[derive(Args)]
pub struct Common {
    /// The configuration file (every field is documented in forewarn.toml).
    #[arg(long, env = "FOREWARN_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "FOREWARN_NATS_URL")]
    nats: Option<String>,
}

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
    /// This instance's name: its consumers and checkpoints are its own.
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
    #[arg(long, env = "FOREWARN_SMS_PROVIDER")]
    sms_provider: Option<String>,
    /// The branch directory (default: RULES/directory/branches.toml).
    #[arg(long, env = "FOREWARN_BRANCHES")]
    branches: Option<PathBuf>,
    /// Where messages go when no SMTP server or SMS gateway is set.
    #[arg(long, env = "FOREWARN_OUTBOX")]
    outbox: Option<PathBuf>,
}

impl ChannelArgs {
    fn apply(self, d: &mut forewarn::config::Dispatch) {
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
fn summary(stats: &forewarn::dispatch::outcome::Stats) -> String {
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

/// `replay --dispatch`, first step: the dispatcher, checked before the
/// replay starts so that a mistake in its settings costs no replay.
pub fn backtest_dispatcher(
    config: Option<&std::path::Path>,
    rules: &std::path::Path,
    channels: ChannelArgs,
) -> Result<forewarn::dispatch::Dispatcher> {
    init_logs();
    let mut config = match config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.rules = rules.to_path_buf();
    channels.apply(&mut config.dispatch);
    Ok(forewarn::dispatch::Dispatcher::new(&config)?)
}

/// `replay --dispatch`, second step: sends the notifications of the
/// replay's alerts, with the alerts' own times as the clock.
pub fn backtest(d: forewarn::dispatch::Dispatcher, alerts: &[u8]) -> Result<()> {
    let outbox = d.config.outbox.clone();
    let stats = runtime()?.block_on(forewarn::dispatch::backtest::run(d, alerts))?;
    eprintln!("dispatched: {}; outbox {}", summary(&stats), outbox.display());
    Ok(())
}

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

/// Publishing the simulated network live.
#[derive(Args)]
pub struct PublishArgs {
    /// Publish to this NATS server instead of writing a file.
    #[arg(long, env = "FOREWARN_NATS_URL")]
    pub nats: Option<String>,
    /// Target events per second (default: as fast as the server takes them).
    #[arg(long, requires = "nats", conflicts_with = "speed")]
    pub rate: Option<f64>,
    /// Play event time this many times faster than real time (288: a day in 5 minutes).
    #[arg(long, requires = "nats")]
    pub speed: Option<f64>,
    /// The deployment's partition count.
    #[arg(long, default_value_t = 16)]
    pub partitions: u16,
}

fn config(common: &Common) -> Result<Config> {
    let mut config = match &common.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(url) = &common.nats {
        config.nats.url = url.clone();
    }
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// Logs on standard error, levels by `RUST_LOG`, as text or as one JSON
/// object a line (`FOREWARN_LOG_FORMAT=json`) for log collectors.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(|| Escaped(Vec::new()));
    let _ = match std::env::var("FOREWARN_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().flatten_event(true).with_current_span(false).try_init(),
        _ => logs.try_init(),
    };
}

/// One log record, written to standard error when done with every control
/// and bidirectional-override character escaped but its final newline: a
/// value that carries CR/LF (an address, a reason, a rule file's text)
/// cannot forge a line, whatever the format.
struct Escaped(Vec<u8>);

impl std::io::Write for Escaped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Escaped {
    fn drop(&mut self) {
        let line = escape_controls(&String::from_utf8_lossy(&self.0));
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }
}

/// `text` with control characters (but a final newline and tabs) and the
/// bidirectional controls written as `\u{…}` escapes.
fn escape_controls(text: &str) -> String {
    let body = text.strip_suffix('\n');
    let mut out = String::with_capacity(text.len() + 1);
    for c in body.unwrap_or(text).chars() {
        if c != '\t' && forewarn::event::is_unprintable(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    if body.is_some() {
        out.push('\n');
    }
    out
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    init_logs();
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
    config.validate().map_err(anyhow::Error::msg)?;
    let deadline = std_duration(config.shutdown.deadline);
    let (detect, dispatch) = (config.role.detects(), config.role.dispatches());
    // Templates, directory and channel settings are checked before anything
    // starts, so a mistake there stops the process at once, not later.
    let dispatcher = dispatch.then(|| forewarn::dispatch::Dispatcher::new(&config)).transpose()?;
    runtime()?.block_on(async move {
        let (stop_tx, stop) = watch::channel(false);
        let (reload_tx, reload) = mpsc::channel(1);
        let (templates_tx, templates) = watch::channel(0u64);
        tokio::spawn(signals(stop_tx, (reload_tx, templates_tx), deadline));
        if !detect && !config.http.is_empty() {
            // Alone, the dispatcher serves health and metrics itself.
            live::health::serve(&config, live::health::Readiness::default()).await?;
        }
        let dispatcher =
            dispatcher.map(|d| tokio::spawn(forewarn::dispatch::run::run(config.clone(), d, stop.clone(), templates)));
        if detect {
            let summary = live::run(config, args.rebuild, Controls { stop, reload }).await?;
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
    eprintln!("error: {}", LiveError::ShutdownDeadline(format!("{deadline:?}")));
    std::process::exit(1);
}

pub fn dlq(command: DlqCommand) -> Result<ExitCode> {
    init_logs();
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

/// Publishes a simulated network's events to NATS.
pub fn publish(data: Vec<u8>, url: String, args: &PublishArgs, mut progress: impl FnMut(u64)) -> Result<u64> {
    let pace = match (args.rate, args.speed) {
        (Some(r), _) if r > 0.0 => feed::Pace::Rate(r),
        (_, Some(s)) if s > 0.0 => feed::Pace::Speed(s),
        (None, None) => feed::Pace::AsFastAsPossible,
        _ => bail!("--rate and --speed must be positive"),
    };
    let nats = forewarn::config::Nats { url, ..Config::default().nats };
    let partitions = args.partitions;
    runtime()?.block_on(async move {
        let client = connect::connect(&nats, "forewarn simulate").await?;
        let js = connect::jetstream(client);
        connect::ensure_streams(&js, &Config::default().streams).await?;
        Ok(feed::publish(js, &data, partitions, pace, &mut progress).await)
    })
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn a_log_line_stays_one_line_whatever_its_values_carry() {
        let forged = "WARN dead letter to=e@x.fr\r\nINFO Bcc: victim@evil.example \u{1b}[2J \u{202e}txt.exe\n";
        let line = escape_controls(forged);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        assert!(line.contains(r"\u{d}\u{a}INFO Bcc"), "{line}");
        assert!(line.contains(r"\u{1b}[2J") && line.contains(r"\u{202e}txt.exe"), "{line}");
        assert_eq!(escape_controls("plain\tline\n"), "plain\tline\n");
    }
}
