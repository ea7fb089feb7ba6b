//! Backtests: a JSON Lines file run through the engine in event time, as
//! `forewarn replay` does. The same engine runs live; only the driver differs.
//!
//! Input is read in large chunks and decoded in batches; before a batch is
//! applied, the window's buckets for its parcels are prefetched, so the cache
//! misses of a million-parcel window overlap instead of queueing.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::alert::{Alert, AlertState};
use crate::buffer;
use crate::engine::window::{parcel_hash, prefetch_staged};
use crate::engine::{Judged, Split};
use crate::event::{decode, Event, Reject, MAX_EVENT_BYTES};
use crate::time::Span;

mod ahead;

use ahead::{Ahead, Settled};

const CHUNK: usize = 4 << 20;
const BATCH: usize = 32;

/// What a replay did, for `--stats`.
#[derive(Debug, Default)]
pub struct Summary {
    pub lines: u64,
    pub events: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    /// (firing, resolved) by rule.
    pub alerts: BTreeMap<Arc<str>, (u64, u64)>,
    /// The contacts judged: did forewarn speak first?
    pub judged: Vec<Judged>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    pub fn alerts_total(&self) -> u64 {
        self.alerts.values().map(|(f, r)| f + r).sum()
    }

    /// Contacts forewarn spoke before, of those judged, and the median lead time.
    pub fn spoke_first(&self) -> (usize, usize, Option<crate::time::Span>) {
        let mut leads: Vec<i64> = self.judged.iter().filter(|j| j.told_first).map(|j| j.gap.0).collect();
        leads.sort_unstable();
        let median = (!leads.is_empty()).then(|| crate::time::Span(leads[leads.len() / 2]));
        (leads.len(), self.judged.len(), median)
    }
}

#[derive(Serialize)]
struct RejectLine<'a> {
    line: u64,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
    reason: String,
    /// The rejected bytes, as text when they are UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<&'a str>,
    /// The rejected bytes in hex when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    input_hex: Option<String>,
}

/// A decoded line waiting for its batch to be applied.
struct Pending<'a> {
    number: u64,
    line: &'a [u8],
    decoded: Result<Event<'a>, Reject>,
    /// The parcel's partition and hash, for prefetching (0 for rejected lines).
    partition: u16,
    hash: u64,
}

/// Where a replay's output goes.
pub struct Sinks<'a> {
    pub alerts: &'a mut dyn Write,
    pub rejects: Option<&'a mut dyn Write>,
}

/// One replay in progress: the engine, where output goes, and the tallies.
/// [`run`] and [`run_bytes`] drive one; a benchmark drives two side by side
/// over the same [`pieces`], so that both meet the same machine.
pub struct Run<'r, 's> {
    engine: &'r mut Split,
    sinks: &'r mut Sinks<'s>,
    summary: Summary,
    out: Vec<Alert>,
    text: Vec<u8>,
    ahead: Ahead,
    started: Instant,
}

impl<'r, 's> Run<'r, 's> {
    pub fn new(engine: &'r mut Split, sinks: &'r mut Sinks<'s>) -> Self {
        let ahead = Ahead::new(engine.horizon());
        Run {
            engine,
            sinks,
            summary: Summary::default(),
            out: Vec::new(),
            text: Vec::new(),
            ahead,
            started: Instant::now(),
        }
    }

    /// Replays whole lines.
    pub fn chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        let mut step = Step {
            engine: self.engine,
            sinks: self.sinks,
            summary: &mut self.summary,
            out: &mut self.out,
            text: &mut self.text,
            ahead: &mut self.ahead,
        };
        step.process(chunk)?;
        self.engine.take_judged(&mut self.summary.judged, &mut Vec::new());
        Ok(())
    }

    /// The input is complete: nothing late can come, so every deadline up to
    /// its end is judged and every event the engine parked is applied; an
    /// event still held ahead of the flow is let in or refused as the lines
    /// after it say (`replay/ahead.rs`).
    pub fn finish(mut self) -> io::Result<Summary> {
        let mut events = 0;
        let horizon = self.engine.horizon();
        let finished = std::mem::replace(&mut self.ahead, Ahead::new(horizon)).finish(self.engine, |engine, held| {
            events += 1;
            engine.apply(held.partition, &held.event, held.hash, &mut self.out);
        });
        for (held, ahead) in finished.refused {
            refuse_ahead(&mut self.sinks.rejects, &mut self.summary, (held.number, &held.line), ahead)?;
        }
        self.summary.events += events;
        self.engine.advance(finished.end, &mut self.out);
        self.engine.take_judged(&mut self.summary.judged, &mut Vec::new());
        write_alerts(&mut self.out, self.sinks.alerts, &mut self.summary, &mut self.text)?;
        self.summary.elapsed = self.started.elapsed();
        Ok(self.summary)
    }
}

/// Runs `input` through `engine`. `progress` is told the bytes read so far.
pub fn run(
    input: &mut dyn Read,
    engine: &mut Split,
    sinks: &mut Sinks<'_>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Summary> {
    let mut run = Run::new(engine, sinks);
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    let mut read_total = 0u64;
    loop {
        let n = input.read(&mut buf[filled..])?;
        read_total += n as u64;
        filled += n;
        let at_end = n == 0;
        let complete = if at_end { filled } else { memchr::memrchr(b'\n', &buf[..filled]).map_or(0, |i| i + 1) };
        if complete == 0 && !at_end {
            if filled == buf.len() {
                // A line longer than a chunk: far beyond the event limit. Keep its head, skip the rest.
                run.summary.lines += 1;
                let head = buf[..MAX_EVENT_BYTES].to_vec();
                let (rest, kept) = skip_line(input, &mut buf, &mut read_total)?;
                let (line, reject) = (run.summary.lines, Reject::TooLarge { bytes: filled + rest });
                write_reject(&mut run.sinks.rejects, &mut run.summary, line, &head, &reject)?;
                filled = kept;
            }
            continue;
        }
        run.chunk(&buf[..complete])?;
        buf.copy_within(complete..filled, 0);
        filled -= complete;
        progress(read_total);
        if at_end {
            break;
        }
    }
    run.finish()
}

/// Runs input that is already in memory (a mapped file) through `engine`,
/// without copying it. `progress` is told the bytes done so far.
pub fn run_bytes(
    data: &[u8],
    engine: &mut Split,
    sinks: &mut Sinks<'_>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Summary> {
    let mut run = Run::new(engine, sinks);
    let mut done = 0;
    for piece in pieces(data, CHUNK) {
        run.chunk(piece)?;
        done += piece.len() as u64;
        progress(done);
    }
    run.finish()
}

/// `data` in pieces of whole lines, of about `size` bytes each.
pub fn pieces(data: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    std::iter::from_fn(move || {
        (start < data.len()).then(|| {
            let cut = (start + size).min(data.len());
            let end = memchr::memchr(b'\n', &data[cut..]).map_or(data.len(), |i| cut + i + 1);
            let piece = &data[start..end];
            start = end;
            piece
        })
    })
}

/// Discards input up to and including the next newline; returns how many
/// bytes of the line it discarded and how many it kept after the newline.
fn skip_line(input: &mut dyn Read, buf: &mut [u8], read_total: &mut u64) -> io::Result<(usize, usize)> {
    let mut skipped = 0;
    loop {
        let n = input.read(buf)?;
        *read_total += n as u64;
        if n == 0 {
            return Ok((skipped, 0));
        }
        if let Some(i) = memchr::memchr(b'\n', &buf[..n]) {
            buf.copy_within(i + 1..n, 0);
            return Ok((skipped + i, n - i - 1));
        }
        skipped += n;
    }
}

/// What applying a chunk of lines works with.
struct Step<'e, 's, 'w> {
    engine: &'e mut Split,
    sinks: &'e mut Sinks<'w>,
    summary: &'s mut Summary,
    out: &'s mut Vec<Alert>,
    text: &'s mut Vec<u8>,
    ahead: &'s mut Ahead,
}

impl Step<'_, '_, '_> {
    fn process(&mut self, chunk: &[u8]) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let mut lines = lines(chunk).peekable();
        let mut batch: Vec<Pending<'_>> = Vec::with_capacity(BATCH);
        while lines.peek().is_some() {
            batch.clear();
            for line in lines.by_ref() {
                self.summary.lines += 1;
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let decoded = decode(line);
                let (partition, hash) = decoded
                    .as_ref()
                    .map_or((0, 0), |e| (self.engine.partition_of(&e.parcel_id), parcel_hash(&e.parcel_id)));
                self.engine.prefetch(partition, 0, hash);
                batch.push(Pending { number: self.summary.lines, line, decoded, partition, hash });
                if batch.len() == BATCH {
                    break;
                }
            }
            prefetch_staged(&batch, |p, stage| self.engine.prefetch(p.partition, stage, p.hash));
            for Pending { number, line, decoded, partition, hash } in &batch {
                match decoded {
                    Ok(event) => self.event((*number, line), event, (*partition, *hash))?,
                    Err(reject) => write_reject(&mut self.sinks.rejects, self.summary, *number, line, reject)?,
                }
            }
        }
        Ok(())
    }

    /// Applies an event, or holds it if it is dated far ahead of the flow;
    /// lets in the events held that the flow caught up with or followed
    /// (before the watermark moves past them) and refuses those it did not
    /// follow; then moves the watermark.
    fn event(
        &mut self,
        (number, line): (u64, &[u8]),
        event: &Event<'_>,
        (partition, hash): (u16, u64),
    ) -> io::Result<()> {
        self.ahead.saw(event.at);
        match self.ahead.past_horizon(self.engine, event.at) {
            None => {
                self.summary.events += 1;
                self.engine.apply(partition, event, hash, self.out);
                self.ahead.applied(self.engine, event.at);
            }
            Some(ahead) => {
                if let Err(line) = self.ahead.hold((number, line), event, (partition, hash)) {
                    refuse_ahead(&mut self.sinks.rejects, self.summary, (number, line), ahead)?;
                }
            }
        }
        if !self.ahead.is_empty() {
            let mut settled = Settled::default();
            self.ahead.settle(self.engine, &mut settled);
            for held in &settled.let_in {
                self.summary.events += 1;
                self.engine.apply(held.partition, &held.event, held.hash, self.out);
            }
            for held in &settled.let_in {
                self.engine.catch_up(held.partition, self.out);
            }
            for (held, ahead) in settled.refused {
                refuse_ahead(&mut self.sinks.rejects, self.summary, (held.number, &held.line), ahead)?;
            }
        }
        self.engine.catch_up(partition, self.out);
        write_alerts(self.out, self.sinks.alerts, self.summary, self.text)
    }
}

/// Refuses an event the flow did not follow.
fn refuse_ahead(
    sink: &mut Option<&mut dyn Write>,
    summary: &mut Summary,
    (number, line): (u64, &[u8]),
    ahead: Span,
) -> io::Result<()> {
    write_reject(sink, summary, number, line, &Reject::AheadOfFlow { ahead: ahead.in_minutes() })
}

/// Writes and counts the alerts in `out`, leaving it empty.
pub fn write_alerts(
    out: &mut Vec<Alert>,
    sink: &mut dyn Write,
    summary: &mut Summary,
    text: &mut Vec<u8>,
) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    // `text` is left empty by every call: one write of this batch.
    for a in out.drain(..) {
        a.write_json_line(text);
        let counts = summary.alerts.entry(Arc::clone(&a.rule)).or_default();
        match a.state {
            AlertState::Firing => counts.0 += 1,
            AlertState::Resolved => counts.1 += 1,
        }
    }
    buffer::release(out);
    let written = sink.write_all(text);
    text.clear();
    buffer::release(text);
    written
}

fn write_reject(
    sink: &mut Option<&mut dyn Write>,
    summary: &mut Summary,
    line: u64,
    bytes: &[u8],
    reject: &Reject,
) -> io::Result<()> {
    *summary.rejected.entry(reject.code()).or_default() += 1;
    let Some(sink) = sink else { return Ok(()) };
    let text = std::str::from_utf8(bytes).ok();
    let record = RejectLine {
        line,
        code: reject.code(),
        field: reject.field().map(|f| f.as_str()),
        reason: reject.to_string(),
        input: text,
        input_hex: text.is_none().then(|| bytes.iter().map(|b| format!("{b:02x}")).collect()),
    };
    serde_json::to_writer(&mut *sink, &record).map_err(io::Error::from)?;
    sink.write_all(b"\n")
}

/// The lines of `data` (a final newline ends the last line, it does not start another).
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    ends.map(move |end| {
        let line = &body[start..end];
        start = end + 1;
        line
    })
}

/// Decodes every line and nothing more: the baseline a replay is compared
/// with, splitting lines the same way.
pub fn decode_only(data: &[u8]) -> u64 {
    lines(data).filter(|l| !l.is_empty()).filter(|l| decode(l).is_ok()).count() as u64
}

/// The process's peak resident memory, where the OS tells it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// The process's resident memory now (Linux), in bytes.
pub fn resident_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::Config;
    use crate::rules::RuleSet;

    #[test]
    fn a_line_longer_than_a_chunk_is_rejected_and_the_next_lines_flow() {
        let rules = RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap();
        let mut engine = Split::new(rules, Config::default());
        let good = r#"{"v":1,"event_id":"e1","parcel_id":"P1","kind":"damaged","at":"2026-11-20T08:00:00Z"}"#;
        let input = format!("{good}\n{}\n{}\n", "x".repeat(CHUNK + 10), good.replace("P1", "P2").replace("e1", "e2"));
        let (mut alerts, mut rejects) = (Vec::new(), Vec::new());
        let mut sinks = Sinks { alerts: &mut alerts, rejects: Some(&mut rejects) };
        let summary = run(&mut input.as_bytes(), &mut engine, &mut sinks, &mut |_| {}).unwrap();
        assert_eq!((summary.lines, summary.events, summary.rejected_total()), (3, 2, 1));
        assert_eq!(String::from_utf8(alerts).unwrap().lines().count(), 2);
        let reject: serde_json::Value = serde_json::from_slice(&rejects).unwrap();
        assert_eq!((reject["line"].as_u64(), reject["code"].as_str()), (Some(2), Some("too_large")));
        // The whole line's size, not a chunk's (a 10 MB line once said 4 MiB).
        assert_eq!(reject["reason"], format!("event larger than 64 KiB ({} bytes)", CHUNK + 10));
    }

    /// A minute-by-minute flow of departures of distinct parcels from 08:00.
    fn flow(from: i64, n: i64) -> Vec<String> {
        (from..from + n).map(|i| line(&format!("P{i}"), "departed", minute(i))).collect()
    }

    fn minute(i: i64) -> crate::time::Ts {
        crate::time::Ts::parse_rfc3339("2026-11-20T08:00:00Z").unwrap().plus(Span::minutes(i))
    }

    fn line(parcel: &str, kind: &str, at: crate::time::Ts) -> String {
        format!(r#"{{"v":1,"event_id":"{parcel}-{kind}","parcel_id":"{parcel}","kind":"{kind}","at":"{at}"}}"#)
    }

    fn engine() -> Split {
        let rules = RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap();
        Split::new(rules, Config::default())
    }

    /// The replay's alert lines and its rejects' (line, code).
    fn replayed(lines: &[String]) -> (Vec<String>, Vec<(u64, String)>) {
        let input = lines.join("\n") + "\n";
        let (mut alerts, mut rejects) = (Vec::new(), Vec::new());
        let mut sinks = Sinks { alerts: &mut alerts, rejects: Some(&mut rejects) };
        run_bytes(input.as_bytes(), &mut engine(), &mut sinks, &mut |_| {}).unwrap();
        let rejects = String::from_utf8(rejects).unwrap();
        let rejects = rejects
            .lines()
            .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
            .map(|r| (r["line"].as_u64().unwrap(), r["code"].as_str().unwrap().to_string()))
            .collect();
        (String::from_utf8(alerts).unwrap().lines().map(str::to_string).collect(), rejects)
    }

    /// The obvious formulation, right when no line is dated ahead: every
    /// event straight into the engine, then every deadline up to the newest.
    fn straight(lines: &[String]) -> Vec<String> {
        let mut engine = engine();
        let mut out = Vec::new();
        for l in lines {
            engine.ingest(&decode(l.as_bytes()).unwrap(), &mut out);
        }
        engine.advance(engine.newest(), &mut out);
        let mut text = Vec::new();
        out.iter().for_each(|a| a.write_json_line(&mut text));
        String::from_utf8(text).unwrap().lines().map(str::to_string).collect()
    }

    #[test]
    fn scans_dated_hours_and_days_ahead_of_the_flow_are_refused_and_change_no_alert() {
        let clean = flow(0, 300);
        for ahead in [Span::hours(3), Span::hours(14), Span::hours(24 * 5)] {
            let mut dirty = clean.clone();
            // A parcel of the flow scanned again by a scanner whose clock is ahead, and a new one.
            dirty.insert(100, line("P90", "arrived", minute(100).plus(ahead)));
            dirty.insert(200, line("X", "damaged", minute(200).plus(ahead)));
            let (alerts, rejects) = replayed(&dirty);
            // Before, the input's end moved to the outlier: 300 parcels "stalled" at 5 days.
            assert_eq!(alerts, replayed(&clean).0, "{ahead:?}");
            assert_eq!(rejects, [(101, "future_event".to_string()), (201, "future_event".to_string())], "{ahead:?}");
        }
    }

    #[test]
    fn a_morning_after_a_quiet_night_and_a_sparse_tail_are_let_in_as_they_come() {
        // 300 scans, 9 h of nothing, 300 more, then the last parcels hours apart.
        let mut lines = flow(0, 300);
        lines.extend(flow(300 + 9 * 60, 300));
        lines.extend((0..20).map(|i| line(&format!("T{i}"), "delivered", minute(2000 + i * i * 45))));
        let (alerts, rejects) = replayed(&lines);
        assert_eq!(rejects, []);
        assert_eq!(alerts, straight(&lines));
        assert!(alerts.len() > 300, "the night's parcels stalled: {}", alerts.len());
    }

    #[test]
    fn a_scanner_s_batch_dated_days_ahead_reaches_at_most_its_own_parcels() {
        // Up to an eighth of the recent flow: beyond, it is the flow (the frontier's bound).
        let clean = flow(0, 300);
        for n in [5, 20] {
            let mut dirty = clean.clone();
            for i in 0..n {
                dirty.insert(150 + i, line(&format!("B{i}"), "arrived", minute(150).plus(Span::hours(24 * 5))));
            }
            let (alerts, rejects) = replayed(&dirty);
            let others: Vec<&String> = alerts.iter().filter(|a| !a.contains(r#""parcel_id":"B"#)).collect();
            // Once, the batch let in moved the end of the input five days: 49,309 false alerts.
            assert_eq!(others, replayed(&clean).0.iter().collect::<Vec<_>>(), "a batch of {n}");
            assert!(rejects.len() <= n, "{rejects:?}");
        }
    }
}
