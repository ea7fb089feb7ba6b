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
use crate::engine::window::parcel_hash;
use crate::engine::{Engine, Judged};
use crate::event::{decode, Event, Reject, MAX_EVENT_BYTES};

const CHUNK: usize = 4 << 20;
const BATCH: usize = 32;
const STAGE_DISTANCE: usize = 8;

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
    /// The parcel's hash, for prefetching (0 for rejected lines).
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
    engine: &'r mut Engine,
    sinks: &'r mut Sinks<'s>,
    summary: Summary,
    out: Vec<Alert>,
    text: Vec<u8>,
    started: Instant,
}

impl<'r, 's> Run<'r, 's> {
    pub fn new(engine: &'r mut Engine, sinks: &'r mut Sinks<'s>) -> Self {
        Run { engine, sinks, summary: Summary::default(), out: Vec::new(), text: Vec::new(), started: Instant::now() }
    }

    /// Replays whole lines.
    pub fn chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        process(chunk, self.engine, self.sinks, &mut self.summary, &mut self.out, &mut self.text)?;
        self.engine.take_judged(&mut self.summary.judged);
        Ok(())
    }

    /// The input is complete: nothing late can come, so every deadline up to
    /// the newest event is judged and every event held aside is applied.
    pub fn finish(mut self) -> io::Result<Summary> {
        self.engine.advance(self.engine.newest(), &mut self.out);
        self.engine.take_judged(&mut self.summary.judged);
        write_alerts(&mut self.out, self.sinks.alerts, &mut self.summary, &mut self.text)?;
        self.summary.elapsed = self.started.elapsed();
        Ok(self.summary)
    }
}

/// Runs `input` through `engine`. `progress` is told the bytes read so far.
pub fn run(
    input: &mut dyn Read,
    engine: &mut Engine,
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
    engine: &mut Engine,
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

fn process(
    chunk: &[u8],
    engine: &mut Engine,
    sinks: &mut Sinks<'_>,
    summary: &mut Summary,
    out: &mut Vec<Alert>,
    text: &mut Vec<u8>,
) -> io::Result<()> {
    if chunk.is_empty() {
        return Ok(());
    }
    let mut lines = lines(chunk).peekable();
    let mut batch: Vec<Pending<'_>> = Vec::with_capacity(BATCH);
    while lines.peek().is_some() {
        batch.clear();
        for line in lines.by_ref() {
            summary.lines += 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let decoded = decode(line);
            let hash = decoded.as_ref().map_or(0, |e| parcel_hash(&e.parcel_id));
            engine.prefetch(0, hash);
            batch.push(Pending { number: summary.lines, line, decoded, hash });
            if batch.len() == BATCH {
                break;
            }
        }
        // Stage 1 runs a few events ahead of stage 2, which needs its result in cache.
        for i in 0..batch.len() + STAGE_DISTANCE {
            if let Some(p) = batch.get(i) {
                engine.prefetch(1, p.hash);
            }
            if let Some(p) = i.checked_sub(STAGE_DISTANCE).and_then(|j| batch.get(j)) {
                engine.prefetch(2, p.hash);
            }
        }
        for Pending { number, line, decoded, hash } in &batch {
            match decoded {
                Ok(event) => {
                    summary.events += 1;
                    engine.ingest_hashed(event, *hash, out);
                    write_alerts(out, sinks.alerts, summary, text)?;
                }
                Err(reject) => write_reject(&mut sinks.rejects, summary, *number, line, reject)?,
            }
        }
    }
    Ok(())
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
    text.clear();
    for a in out.drain(..) {
        a.write_json_line(text);
        let counts = summary.alerts.entry(Arc::clone(&a.rule)).or_default();
        match a.state {
            AlertState::Firing => counts.0 += 1,
            AlertState::Resolved => counts.1 += 1,
        }
    }
    sink.write_all(text)
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
        let mut engine = Engine::new(rules, Config::default());
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
}
