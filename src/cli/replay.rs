//! `forewarn replay`: a file through the engine in event time, with
//! `--dispatch` the backtest that sends its notifications.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use forewarn::config::Config as Settings;
use forewarn::engine::{Config, Split};
use forewarn::replay::{self, Sinks, Summary};
use forewarn::time::Span;

use super::run::{summary, ChannelArgs};
use super::{create, load_rules, logs, output, progress, runtime, span};

#[derive(Args)]
pub struct ReplayArgs {
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
    /// How far behind the newest event time the watermark runs [default: 1h, or watermark.lateness].
    #[arg(long, value_parser = span)]
    lateness: Option<Span>,
    /// How far past the newest event time an event may be dated before it
    /// waits for the lines after it to show the flow followed (else it is
    /// refused as future_event: a scanner's clock ahead) [default: 1h].
    #[arg(long, value_parser = span)]
    horizon: Option<Span>,
    /// The most parcels kept in the window [default: 4000000, or engine.max_parcels].
    #[arg(long)]
    max_parcels: Option<usize>,
    /// The deployment's partition count (as `partitions.count` live):
    /// predictions learn per partition, so a replay forecasts as the live run [default: 16].
    #[arg(long)]
    partitions: Option<u16>,
    /// Also send the alerts' notifications, as live but with the alerts' own times
    /// as the clock (SMTP, SMS gateway and webhooks as configured; else the outbox).
    #[arg(long)]
    dispatch: bool,
    /// The configuration file a deployment runs with (every field is documented in
    /// forewarn.toml): the engine's settings (window, retention, lateness, partitions)
    /// as live, and the dispatcher's for --dispatch. Flags override it.
    #[arg(long, env = "FOREWARN_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    channels: ChannelArgs,
}

pub fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let set = load_rules(&args.rules)?;
    let settings = args.config.as_deref().map(Settings::load).transpose()?;
    // The whole window's bounds: the split engine shares them among its partitions.
    let base = settings.as_ref().map_or_else(Config::default, |s| s.engine(1));
    let config = Config {
        lateness: args.lateness.unwrap_or(base.lateness),
        horizon: args.horizon.unwrap_or(base.horizon),
        max_parcels: args.max_parcels.unwrap_or(base.max_parcels),
        partitions: args.partitions.unwrap_or(base.partitions),
        ..base
    };
    let mut engine = Split::new(set, config);
    let (mut input, len) = open_input(&args.input)?;
    let dispatcher = args.dispatch.then(|| backtest_dispatcher(settings, &args.rules, args.channels)).transpose()?;
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
        backtest(d, &copy)?;
    }
    if args.stats {
        print_stats(&summary, &engine);
    } else if summary.rejected_total() > 0 {
        let hint = if args.rejects.is_some() { "" } else { "; pass --rejects FILE to keep them" };
        eprintln!("{} line(s) rejected{hint}", summary.rejected_total());
    }
    Ok(ExitCode::SUCCESS)
}

/// `replay --dispatch`, first step: the dispatcher, checked before the
/// replay starts so that a mistake in its settings costs no replay.
pub fn backtest_dispatcher(
    settings: Option<Settings>,
    rules: &std::path::Path,
    channels: ChannelArgs,
) -> Result<forewarn::dispatch::Dispatcher> {
    logs::init_logs();
    let mut config = settings.unwrap_or_default();
    config.rules = rules.to_path_buf();
    channels.apply(&mut config.dispatch);
    let dispatcher = forewarn::dispatch::Dispatcher::new(&config)?;
    runtime()?.block_on(async { dispatcher.check_channels() })?;
    Ok(dispatcher)
}

/// `replay --dispatch`, second step: sends the notifications of the
/// replay's alerts, with the alerts' own times as the clock.
pub fn backtest(d: forewarn::dispatch::Dispatcher, alerts: &[u8]) -> Result<()> {
    let outbox = d.config.outbox.clone();
    let stats = runtime()?.block_on(forewarn::dispatch::backtest::run(d, alerts))?;
    eprintln!("dispatched: {}; outbox {}", summary(&stats), outbox.display());
    Ok(())
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

/// Gives back the pages of the input already replayed, 2 MiB at a time, so a
/// long replay does not keep its whole input resident (nor more of it than
/// a few bytes a parcel at the peak). Returns the new mark.
fn release(map: &memmap2::Mmap, released: usize, done: usize) -> usize {
    const STEP: usize = 2 << 20;
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
    let (lanes, (count, fine)) = engine.lane_stats();
    if count > 0 {
        let _ = writeln!(
            err,
            "lanes         {count:>12}   {fine} fine; {} legs learnt ({} split by late scans, {} by their class alone), {} versions",
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
