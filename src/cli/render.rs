//! `forewarn render`: the message a rule would send a customer, as the
//! dispatcher renders it, without running the pipeline: with the sample data
//! `forewarn check` renders, or with a real alert line; an SMS with its
//! length, encoding and segments.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, ValueEnum};

use forewarn::dispatch::branches::Directory;
use forewarn::dispatch::deliver::{context, customer_template, expected};
use forewarn::dispatch::notice::Notice;
use forewarn::dispatch::route::zone;
use forewarn::dispatch::segments;
use forewarn::dispatch::template::{samples, Context, Templates};

#[derive(Clone, Copy, ValueEnum)]
pub enum Channel {
    Sms,
    Email,
}

#[derive(Args)]
pub struct RenderArgs {
    /// The rule whose customer message to show; with --alert, the first
    /// alert of that rule in the file.
    #[arg(long)]
    rule: Option<String>,
    /// The language (`fr`, `fr-CA` → `fr`); by default the alert
    /// recipient's, else the pack's default.
    #[arg(long)]
    locale: Option<String>,
    #[arg(long, value_enum, default_value = "sms")]
    channel: Channel,
    /// A file of alert lines (`forewarn replay --out`, or the alerts
    /// stream): render a real one instead of the sample data.
    #[arg(long)]
    alert: Option<PathBuf>,
    /// The rules directory (its templates and branch directory).
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
}

pub fn render(args: RenderArgs) -> Result<ExitCode> {
    let defaults = forewarn::config::Dispatch::default();
    let templates_dir = defaults.templates_dir(&args.rules);
    let templates = Templates::load(&templates_dir, &defaults.default_locale)
        .map_err(|problems| anyhow!("templates at {}: {}", templates_dir.display(), problems.join("; ")))?;
    let notice = args.alert.as_ref().map(|file| find(file, args.rule.as_deref())).transpose()?;
    let recipient = notice.as_ref().and_then(|n| n.recipient.as_ref());
    let tag = args.locale.clone().or_else(|| recipient.and_then(|r| r.locale.clone()));
    let locale = templates.locale(tag.as_deref()).to_string();
    let (ctx, resolved) = match &notice {
        Some(notice) => {
            let directory = Directory::load(&defaults.branches_file(&args.rules)).map_err(anyhow::Error::msg)?;
            let tz = zone(recipient.and_then(|r| r.tz.as_deref()), chrono_tz::UTC);
            (context(notice, tz, &locale, true, &directory, &defaults.links), notice.resolved)
        }
        None => {
            let Some(rule) = &args.rule else { bail!("--rule RULE or --alert FILE: which message to render") };
            // The sample's expected arrival, in the language rendered.
            // Saturday 21 November 2026, 09:00 to 17:00 UTC.
            let at = |seconds| chrono::DateTime::from_timestamp(seconds, 0).unwrap_or_default();
            let expected = Some(expected((at(1_795_251_600), at(1_795_280_400)), chrono_tz::Europe::Paris, &locale));
            (Context { rule: rule.clone(), expected, ..samples().remove(0) }, false)
        }
    };
    let name = customer_template(&ctx.rule, resolved);
    match args.channel {
        Channel::Sms => {
            let text = templates.sms(&locale, &name, &ctx).map_err(|e| anyhow!("{locale}/{name}.sms: {e}"))?;
            let (encoding, parts) = segments::count(&text);
            say!("{text}");
            say!(
                "-- {locale}/{name}.sms: {} characters, {}, {parts} segment(s){}",
                text.chars().count(),
                encoding.as_str(),
                if parts > defaults.sms.max_segments {
                    format!("; cut to {} when sent (sms.max_segments)", defaults.sms.max_segments)
                } else {
                    String::new()
                }
            );
        }
        Channel::Email => {
            let mail = templates.email(&locale, &name, &ctx).map_err(|e| anyhow!("{locale}/{name}.email: {e}"))?;
            say!("Subject: {}\n\n{}", mail.subject, mail.text.trim_end());
            say!("-- {locale}/{name}.email: {} bytes of HTML beside this text", mail.html.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The first alert of `rule` in `file` (the first alert when no rule is given).
fn find(file: &Path, rule: Option<&str>) -> Result<Notice> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let notice = Notice::decode(line.as_bytes()).map_err(|e| anyhow!("{}:{}: {e}", file.display(), number + 1))?;
        if rule.is_none_or(|r| notice.rule == r) {
            return Ok(notice);
        }
    }
    bail!("{}: no alert{}", file.display(), rule.map_or(String::new(), |r| format!(" of rule {r}")))
}
