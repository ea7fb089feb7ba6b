//! `forewarn simulate`: a synthetic network's events to a file, or
//! published live to NATS with `--nats`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use forewarn::config::Config;
use forewarn::live::feed;
use forewarn::nats::connect;
use forewarn::simulate::{self, Network, Reaction, Shape, PRESETS};
use forewarn::time::Ts;

use super::{instant, output, progress, runtime};

#[derive(Args)]
pub struct SimulateArgs {
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
    shape: ShapeArgs,
    /// The hold-out group's share, as `dispatch.holdout`: its customers are
    /// not told, so they do not react (see --response).
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    holdout: f64,
    /// The share of customers told of a problem who then do not call about
    /// it: an assumption, to check the hold-out measure end to end. Every
    /// problem parcel outside the hold-out counts as told. 0: nobody reacts.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    response: f64,
    /// The share of customers told a revised date who then do not call
    /// (those of parcels arriving a day or more after their promise): an
    /// assumption, at least --response.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    revised_response: f64,
    #[command(flatten)]
    publish: PublishArgs,
}

/// The network's shape: a preset, and what to change of it.
#[derive(Args)]
pub struct ShapeArgs {
    /// The network: regional (a few dozen branches in FR, CN, US, DE),
    /// national-cn (30,000 outlets, 150 hubs) or national-eu (5,000 depots,
    /// 60 hubs in FR, DE, ES). The options below change the preset.
    #[arg(long, default_value = "regional", value_parser = PRESETS)]
    shape: String,
    /// Delivery branches over all countries (up to 50,000).
    #[arg(long)]
    branches: Option<u32>,
    /// Sorting hubs over all countries (up to 500).
    #[arg(long)]
    hubs: Option<u32>,
    /// Countries, by code: FR, CN, US, DE, ES.
    #[arg(long, value_delimiter = ',')]
    countries: Option<Vec<String>>,
    /// Share of parcels sent from another country.
    #[arg(long)]
    international: Option<f64>,
    /// Share of parcels addressed to a pickup point.
    #[arg(long)]
    pickup_points: Option<f64>,
    /// Scans bunch at sort waves and delivery rounds in local time.
    #[arg(long)]
    rhythm: Option<bool>,
    /// Labels hours to days before pick-up; some parcels never handed over.
    #[arg(long)]
    pre_shipment: Option<bool>,
    /// Share of parcels whose promise is revised a day later on the way.
    #[arg(long)]
    revisions: Option<f64>,
}

impl ShapeArgs {
    fn shape(&self) -> Result<Shape> {
        let mut shape = Shape::preset(&self.shape).map_err(anyhow::Error::msg)?;
        if let Some(countries) = &self.countries {
            shape.countries = Vec::new();
            for code in countries {
                let known = simulate::country_code(code.trim()).ok_or_else(|| {
                    anyhow::anyhow!("--countries: unknown country {code:?}; known are FR, CN, US, DE, ES")
                })?;
                shape.countries.push(known);
            }
        }
        shape.branches = self.branches.or(shape.branches);
        shape.hubs = self.hubs.or(shape.hubs);
        shape.international = self.international.unwrap_or(shape.international);
        shape.pickup_points = self.pickup_points.unwrap_or(shape.pickup_points);
        shape.rhythm = self.rhythm.unwrap_or(shape.rhythm);
        shape.pre_shipment = self.pre_shipment.unwrap_or(shape.pre_shipment);
        shape.revisions = self.revisions.unwrap_or(shape.revisions);
        shape.check().map_err(anyhow::Error::msg)?;
        Ok(shape)
    }
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

pub fn simulate(args: SimulateArgs) -> Result<ExitCode> {
    if !args.days.is_finite() || args.days <= 0.0 {
        bail!("--days must be positive");
    }
    if !forewarn::holdout::valid_share(args.holdout) {
        bail!("--holdout must be a share between 0 and 0.5");
    }
    for (flag, share) in [("--response", args.response), ("--revised-response", args.revised_response)] {
        if !(0.0..=1.0).contains(&share) {
            bail!("{flag} must be a share between 0 and 1");
        }
    }
    let shape = args.shape.shape()?;
    let reaction = Reaction { holdout: args.holdout, response: args.response, revised: args.revised_response };
    let net = Network { parcels: args.parcels, seed: args.seed, start: args.start, days: args.days, shape, reaction };
    let bar = progress(Some(args.parcels), "simulate");
    if let Some(url) = args.publish.nats.clone() {
        if args.out.is_some() {
            bail!("--out and --nats: choose one");
        }
        let mut data = Vec::new();
        simulate::write(&net, &mut data, |p| bar.set_position(p))?;
        let total = data.iter().filter(|&&b| b == b'\n').count() as u64;
        bar.set_length(total);
        let sent = publish(data, url.clone(), &args.publish, |n| bar.set_position(n))?;
        bar.finish_and_clear();
        eprintln!("{sent} events for {} parcels published to {url}", args.parcels);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = output(args.out.as_deref())?;
    let events = simulate::write(&net, &mut out, |p| bar.set_position(p))?;
    out.flush()?;
    bar.finish_and_clear();
    if let Some(path) = &args.out {
        eprintln!("{events} events for {} parcels ({}) written to {}", args.parcels, net.shape, path.display());
    }
    Ok(ExitCode::SUCCESS)
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
        Ok(feed::publish(js, &data, partitions, pace, &mut progress).await?)
    })
}
