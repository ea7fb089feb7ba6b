//! The `forewarn` command line: parses flags, builds the pieces from the
//! library and reports. Everything that decides anything lives in the library.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use forewarn::cases::run_dir;
use forewarn::dispatch::branches::Directory;
use forewarn::dispatch::template::Templates;
use forewarn::engine::{Config, Split};
use forewarn::replay::{self, Sinks, Summary};
use forewarn::rules::{RuleError, RuleSet};
use forewarn::simulate::{self, Network};
use forewarn::time::{Span, Ts};

/// mimalloc: tasks allocate on one worker and free on another, where glibc's
/// arenas contend on a lock (measured: a fifth of the dispatcher's CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli {
    pub mod live;
}

/// Tells parcel customers and branches about problems before they call.
#[derive(Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Backtest: run a JSON Lines file of events through the engine in event time.
    Replay(ReplayArgs),
    /// Proof that forewarn speaks first: replay the events and judge every
    /// customer contact against what forewarn had already said.
    Report(ReportArgs),
    /// Check a rule pack; errors name file:line:column.
    Check {
        /// The rules directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Run the rule unit tests in DIR/tests/*.toml.
    Test {
        /// The rules directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Write a realistic synthetic network's events (v1 contract), deterministic per seed;
    /// with --nats, publish them live.
    Simulate(SimulateArgs),
    /// Run the processor on NATS JetStream until SIGTERM or SIGINT (SIGHUP reloads the rules).
    Run(cli::live::RunArgs),
    /// Dead letters: list them, or send them back once the cause is fixed.
    Dlq {
        #[command(subcommand)]
        command: cli::live::DlqCommand,
    },
}

#[derive(Args)]
struct ReportArgs {
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
    /// predictions learn per partition, so a replay forecasts as the live run.
    #[arg(long, default_value_t = Config::default().partitions)]
    partitions: u16,
}

#[derive(Args)]
struct ReplayArgs {
    /// The events file, or - for standard input.
    input: PathBuf,
    /// The rules directory.
    #[arg(long, default_value = "rules", env = "FOREWARN_RULES")]
    rules: PathBuf,
    /// Where alerts go (JSON Lines); standard output by default.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where rejected lines go, with their reasons (JSON Lines).
    #[arg(long)]
    rejects: Option<PathBuf>,
    /// Print throughput, alerts by rule, rejects by reason and memory to standard error.
    #[arg(long)]
    stats: bool,
    /// How far behind the newest event time the watermark runs.
    #[arg(long, default_value = "1h", value_parser = span)]
    lateness: Span,
    /// How far past the newest event time an event may be dated before it
    /// waits for the lines after it to show the flow followed (else it is
    /// refused as future_event: a scanner's clock ahead).
    #[arg(long, default_value = "1h", value_parser = span)]
    horizon: Span,
    /// The most parcels kept in the window.
    #[arg(long, default_value_t = Config::default().max_parcels)]
    max_parcels: usize,
    /// The deployment's partition count (as `partitions.count` live):
    /// predictions learn per partition, so a replay forecasts as the live run.
    #[arg(long, default_value_t = Config::default().partitions)]
    partitions: u16,
    /// Also send the alerts' notifications, as live but with the alerts' own times
    /// as the clock (SMTP, SMS gateway and webhooks as configured; else the outbox).
    #[arg(long)]
    dispatch: bool,
    /// The configuration file for --dispatch (every field is documented in forewarn.toml).
    #[arg(long, env = "FOREWARN_CONFIG", requires = "dispatch")]
    config: Option<PathBuf>,
    #[command(flatten)]
    channels: cli::live::ChannelArgs,
}

#[derive(Args)]
struct SimulateArgs {
    /// How many parcels.
    #[arg(long, default_value_t = 10_000)]
    parcels: u64,
    /// The random seed; the same seed gives the same file.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the events; standard output by default.
    #[arg(long)]
    out: Option<PathBuf>,
    /// When the first label is created (RFC 3339).
    #[arg(long, default_value = "2026-11-16T00:00:00Z", value_parser = instant)]
    start: Ts,
    /// Labels are created over this many days.
    #[arg(long, default_value_t = 1.0)]
    days: f64,
    #[command(flatten)]
    publish: cli::live::PublishArgs,
}

fn span(s: &str) -> Result<Span, String> {
    Span::parse(s)
}

fn instant(s: &str) -> Result<Ts, String> {
    Ts::parse_rfc3339(s).ok_or_else(|| format!("{s:?} is not an RFC 3339 timestamp"))
}

/// A line on standard output; a reader that closed the pipe is an error the
/// command returns (and `main` takes as done), never a panic.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(io::stdout(), $($arg)*)?
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => replay(args),
        Command::Report(args) => report(args),
        Command::Check { dir } => check(&dir),
        Command::Test { dir } => test(&dir),
        Command::Simulate(args) => simulate(args),
        Command::Run(args) => cli::live::run(args),
        Command::Dlq { command } => cli::live::dlq(command),
    };
    match result {
        Ok(code) => code,
        // The reader closed the pipe (`forewarn replay … | head`): it has what it wanted.
        Err(e)
            if e.chain()
                .any(|c| c.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads a rule pack, printing every error.
fn load_rules(dir: &Path) -> Result<RuleSet> {
    RuleSet::load(dir).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{} error(s) in the rules at {}", errors.len(), dir.display())
    })
}

/// A progress bar on a terminal; hidden when standard error is not one.
fn progress(len: Option<u64>, what: &str) -> ProgressBar {
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

fn create(path: &Path) -> Result<BufWriter<File>> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

/// Writes to `out`, keeping a copy when there is one (`replay --dispatch`
/// sends from it once the replay is done).
struct Tee {
    out: Box<dyn Write>,
    copy: Option<Vec<u8>>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(copy) = &mut self.copy {
            copy.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A buffered file at `path`, or standard output when there is none.
fn output(path: Option<&Path>) -> Result<Box<dyn Write>> {
    Ok(match path {
        Some(path) => Box::new(create(path)?),
        None => Box::new(BufWriter::with_capacity(1 << 20, io::stdout().lock())),
    })
}

fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let set = load_rules(&args.rules)?;
    let config = Config {
        lateness: args.lateness,
        horizon: args.horizon,
        max_parcels: args.max_parcels,
        partitions: args.partitions,
        ..Config::default()
    };
    let mut engine = Split::new(set, config);
    let (mut input, len) = open_input(&args.input)?;
    let dispatcher = args
        .dispatch
        .then(|| cli::live::backtest_dispatcher(args.config.as_deref(), &args.rules, args.channels))
        .transpose()?;
    let mut alerts = Tee { out: output(args.out.as_deref())?, copy: dispatcher.as_ref().map(|_| Vec::new()) };
    let mut rejects = args.rejects.as_deref().map(create).transpose()?;
    let bar = progress(len, "replay");
    let mut sinks = Sinks { alerts: &mut alerts, rejects: rejects.as_mut().map(|w| w as &mut dyn Write) };
    let summary = match &mut input {
        Input::Mapped(map) => {
            let mut released = 0;
            let mut progress = |n: u64| {
                bar.set_position(n);
                released = release(map, released, n as usize);
            };
            replay::run_bytes(map, &mut engine, &mut sinks, &mut progress)?
        }
        Input::Stream(read) => replay::run(read, &mut engine, &mut sinks, &mut |n| bar.set_position(n))?,
    };
    bar.finish_and_clear();
    alerts.flush()?;
    if let Some(r) = rejects.as_mut() {
        r.flush()?;
    }
    if let (Some(d), Some(copy)) = (dispatcher, alerts.copy.take()) {
        cli::live::backtest(d, &copy)?;
    }
    if args.stats {
        print_stats(&summary, &engine);
    } else if summary.rejected_total() > 0 {
        let hint = if args.rejects.is_some() { "" } else { "; pass --rejects FILE to keep them" };
        eprintln!("{} line(s) rejected{hint}", summary.rejected_total());
    }
    Ok(ExitCode::SUCCESS)
}

fn report(args: ReportArgs) -> Result<ExitCode> {
    let set = load_rules(&args.rules)?;
    let mut engine = Split::new(set.clone(), Config { partitions: args.partitions, ..Config::default() });
    let path = args.events.clone();
    let open = || -> io::Result<Box<dyn Read>> { Ok(Box::new(File::open(&path)?)) };
    let report = forewarn::report::run(&mut engine, &set, open)
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

/// Where events come from: a regular file is mapped and read in place,
/// anything else (standard input, a pipe) is streamed.
enum Input {
    Mapped(memmap2::Mmap),
    Stream(Box<dyn Read>),
}

fn open_input(path: &Path) -> Result<(Input, Option<u64>)> {
    if path == Path::new("-") {
        return Ok((Input::Stream(Box::new(io::stdin().lock())), None));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok((Input::Stream(Box::new(file)), None));
    }
    // SAFETY: the map is only read; a file rewritten by another process during a
    // replay is unsupported (as for any tool that maps its input).
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    // Only read-ahead depends on it; a refusal changes nothing else.
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok((Input::Mapped(map), Some(meta.len())))
}

/// Gives back the pages of the input already replayed, 8 MiB at a time, so a
/// long replay does not keep its whole input resident. Returns the new mark.
fn release(map: &memmap2::Mmap, released: usize, done: usize) -> usize {
    const STEP: usize = 8 << 20;
    if done - released < STEP {
        return released;
    }
    // SAFETY: the map is read-only and file-backed: dropped pages read back the same
    // bytes from the page cache if touched again, and nothing borrows them any more.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, released, done - released) };
    done
}

fn print_stats(s: &Summary, engine: &Split) {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let st = engine.stats();
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "events        {:>12}   {:.0} events/s over {:.2} s", s.events, s.events as f64 / secs, secs);
    let _ = writeln!(err, "duplicates    {:>12}", st.duplicates);
    let _ = writeln!(err, "parked        {:>12}   (newer than a deadline not judged yet)", st.parked);
    let _ = writeln!(
        err,
        "beyond lateness {:>10}   superseded {}   for closed parcels {}",
        st.beyond_lateness, st.superseded, st.closed
    );
    if st.symbol_overflow > 0 {
        let _ = writeln!(err, "names not interned (symbol table full) {}", st.symbol_overflow);
    }
    let _ = writeln!(err, "rejected      {:>12}", s.rejected_total());
    for (code, n) in &s.rejected {
        let _ = writeln!(err, "  {code:<22}{n:>8}");
    }
    let _ = writeln!(err, "alerts        {:>12}   (firing, resolved)", s.alerts_total());
    for (rule, (f, r)) in &s.alerts {
        let _ = writeln!(err, "  {rule:<22}{f:>8} {r:>8}");
    }
    let (lanes, count) = engine.lane_stats();
    if count > 0 {
        let _ = writeln!(
            err,
            "lanes         {count:>12}   {} legs learnt ({} split by late scans, {} past the lane limit), {} versions",
            lanes.legs, lanes.splits, lanes.overflow, lanes.publications
        );
    }
    let (first, judged, median) = s.spoke_first();
    let _ = writeln!(
        err,
        "contacts      {judged:>12}   on parcels forewarn spoke about: {first} after it spoke ({:.1} %), median lead {}",
        100.0 * first as f64 / judged.max(1) as f64,
        median.map_or("-".to_string(), |m| format!("{:.1} h", m.0 as f64 / 3_600_000.0))
    );
    let _ = writeln!(
        err,
        "window        {:>12} parcels now, {} at peak; {} timers, {} wake-ups; evicted {} done, {} idle, {} for capacity",
        engine.parcels(),
        st.peak_parcels,
        engine.timers(),
        st.wakes,
        st.evicted_done,
        st.evicted_idle,
        st.evicted_capacity
    );
    if let Some(rss) = replay::peak_rss_bytes() {
        let per = rss as f64 / st.peak_parcels.max(1) as f64;
        let _ =
            writeln!(err, "peak memory   {:>9.1} MiB   ({per:.0} bytes per parcel at peak)", rss as f64 / 1048576.0);
    }
}

/// Checks the rules, then renders every template with sample data and reads
/// the branch directory.
fn check(dir: &Path) -> Result<ExitCode> {
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

fn test(dir: &Path) -> Result<ExitCode> {
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

fn simulate(args: SimulateArgs) -> Result<ExitCode> {
    if !args.days.is_finite() || args.days <= 0.0 {
        bail!("--days must be positive");
    }
    let net = Network { parcels: args.parcels, seed: args.seed, start: args.start, days: args.days };
    let bar = progress(Some(args.parcels), "simulate");
    if let Some(url) = args.publish.nats.clone() {
        if args.out.is_some() {
            bail!("--out and --nats: choose one");
        }
        let mut data = Vec::new();
        simulate::write(&net, &mut data, |p| bar.set_position(p))?;
        let total = data.iter().filter(|&&b| b == b'\n').count() as u64;
        bar.set_length(total);
        let sent = cli::live::publish(data, url.clone(), &args.publish, |n| bar.set_position(n))?;
        bar.finish_and_clear();
        eprintln!("{sent} events for {} parcels published to {url}", args.parcels);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = output(args.out.as_deref())?;
    let events = simulate::write(&net, &mut out, |p| bar.set_position(p))?;
    out.flush()?;
    bar.finish_and_clear();
    if let Some(path) = &args.out {
        eprintln!("{events} events for {} parcels written to {}", args.parcels, path.display());
    }
    Ok(ExitCode::SUCCESS)
}
