//! Checkpoints: the whole engine state as compact bytes, and back.
//!
//! A checkpoint lets a processor restart where it stopped instead of
//! re-reading its stream. The format is versioned, LZ4-compressed, and made
//! of varints (zigzag for instants), written by each component for its own
//! state. Rules are not saved: a checkpoint restores under the current rule
//! pack, with fired rules and counters remapped by rule id and event kind.
//! Timers are not saved either: each parcel's wake-up is, and the wheel is
//! rebuilt from them (stale entries die with the old process).

use std::borrow::Cow;

use super::branch::BranchStage;
use super::frontier::{Flow, Frontier, RING};
use super::lanes::Lanes;
use super::plan::Plan;
use super::timers::{Entry, Timers};
use super::window::{Interner, Tombstones, Window};
use super::{Config, Engine, Stats};
use crate::event::{Channels, Contact, ContactChannel, Event, Kind, Recipient, Topic};
use crate::rules::RuleSet;
use crate::time::Ts;

const MAGIC: &[u8; 4] = b"FWCK";
const VERSION: u32 = 6;

/// Why a checkpoint cannot be restored. Every variant has the same way out:
/// start without it and rebuild the state by replaying the stream.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a forewarn checkpoint (bad magic); start without it to rebuild the state from the stream")]
    NotACheckpoint,
    #[error(
        "checkpoint format v{0}, this forewarn reads v{VERSION}; start without it to rebuild the state from the stream"
    )]
    Version(u32),
    #[error("corrupt checkpoint ({0}); start without it to rebuild the state from the stream")]
    Corrupt(String),
}

fn corrupt(what: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt(what.into())
}

/// Writes varints, zigzag instants and length-prefixed strings.
#[derive(Default)]
pub(super) struct W(Vec<u8>);

impl W {
    pub fn u(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    pub fn ts(&mut self, t: Ts) {
        self.u(((t.0 << 1) ^ (t.0 >> 63)) as u64);
    }

    pub fn s(&mut self, s: &str) {
        self.u(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    pub fn opt_s(&mut self, s: Option<&str>) {
        match s {
            None => self.u(0),
            Some(s) => {
                self.u(s.len() as u64 + 1);
                self.0.extend_from_slice(s.as_bytes());
            }
        }
    }

    pub fn opt_ts(&mut self, t: Option<Ts>) {
        self.u(u64::from(t.is_some()));
        if let Some(t) = t {
            self.ts(t);
        }
    }

    /// The written state behind the magic and version, compressed.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() / 3 + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&lz4_flex::compress_prepend_size(&self.0));
        out
    }
}

/// Reads what [`W`] wrote, refusing anything out of bounds.
pub(super) struct R<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

impl R<'_> {
    /// Checks the magic and version of what [`W::finish`] wrote and decompresses it.
    pub fn open(bytes: &[u8]) -> Result<Vec<u8>, CheckpointError> {
        if bytes.len() < 8 || &bytes[..4] != MAGIC {
            return Err(CheckpointError::NotACheckpoint);
        }
        let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if version != VERSION {
            return Err(CheckpointError::Version(version));
        }
        lz4_flex::decompress_size_prepended(&bytes[8..]).map_err(|e| corrupt(e.to_string()))
    }

    /// Fails unless everything was read.
    pub fn end(&self) -> Result<(), CheckpointError> {
        if self.pos != self.buf.len() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(())
    }
}

impl<'a> R<'a> {
    pub fn u(&mut self) -> Result<u64, CheckpointError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(|| corrupt("truncated"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(corrupt("varint too long"))
    }

    /// A count or index that must fit in `limit`.
    pub fn n(&mut self, limit: usize, what: &str) -> Result<usize, CheckpointError> {
        let v = self.u()?;
        usize::try_from(v).ok().filter(|&v| v <= limit).ok_or_else(|| corrupt(format!("{what} out of range")))
    }

    pub fn u32(&mut self) -> Result<u32, CheckpointError> {
        u32::try_from(self.u()?).map_err(|_| corrupt("u32 out of range"))
    }

    pub fn u8(&mut self) -> Result<u8, CheckpointError> {
        u8::try_from(self.u()?).map_err(|_| corrupt("byte out of range"))
    }

    pub fn ts(&mut self) -> Result<Ts, CheckpointError> {
        let v = self.u()?;
        Ok(Ts(((v >> 1) as i64) ^ -((v & 1) as i64)))
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], CheckpointError> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len()).ok_or_else(|| corrupt("truncated"))?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    pub fn s(&mut self) -> Result<&'a str, CheckpointError> {
        let len = self.n(self.buf.len(), "string length")?;
        std::str::from_utf8(self.bytes(len)?).map_err(|_| corrupt("string not UTF-8"))
    }

    pub fn opt_s(&mut self) -> Result<Option<&'a str>, CheckpointError> {
        match self.n(self.buf.len() + 1, "string length")? {
            0 => Ok(None),
            n => std::str::from_utf8(self.bytes(n - 1)?).map(Some).map_err(|_| corrupt("string not UTF-8")),
        }
    }

    pub fn opt_ts(&mut self) -> Result<Option<Ts>, CheckpointError> {
        Ok(if self.u()? == 0 { None } else { Some(self.ts()?) })
    }

    pub fn kind(&mut self) -> Result<Kind, CheckpointError> {
        let i = self.n(Kind::ALL.len() - 1, "kind")?;
        Ok(Kind::ALL[i])
    }
}

/// How saved rule positions and counter places map onto the current pack.
pub(super) struct Remap {
    /// Saved rule index → current index.
    pub rules: Vec<Option<u8>>,
    /// Saved counter place → current place.
    pub counts: Vec<Option<u8>>,
}

impl Remap {
    pub fn fired(&self, saved: u64) -> u64 {
        self.rules.iter().enumerate().fold(0, |acc, (old, new)| match new {
            Some(new) if saved & (1 << old) != 0 => acc | 1 << new,
            _ => acc,
        })
    }
}

pub(super) fn put_event(w: &mut W, e: &Event<'_>) {
    w.s(&e.event_id);
    w.s(&e.parcel_id);
    w.u(e.kind as u64);
    w.ts(e.at);
    for s in [&e.facility, &e.branch, &e.service, &e.reason] {
        w.opt_s(s.as_deref());
    }
    w.opt_s(e.country.as_ref().and_then(|c| std::str::from_utf8(c).ok()));
    w.opt_ts(e.promised_by);
    w.opt_ts(e.return_by);
    match &e.recipient {
        None => w.u(0),
        Some(r) => {
            w.u(1);
            for s in [&r.name, &r.phone, &r.email, &r.locale, &r.tz] {
                w.opt_s(s.as_deref());
            }
            w.u(r.channels.map_or(0, |c| u64::from(c.0) + 1));
        }
    }
    match e.contact {
        None => w.u(0),
        Some(c) => {
            w.u(1);
            w.u(c.channel.map_or(0, |ch| ch as u64 + 1));
            w.u(c.topic as u64);
        }
    }
}

pub(super) fn get_event(r: &mut R<'_>) -> Result<Event<'static>, CheckpointError> {
    let owned = |s: Option<&str>| s.map(|s| Cow::Owned(s.to_string()));
    let event_id = Cow::Owned(r.s()?.to_string());
    let parcel_id = Cow::Owned(r.s()?.to_string());
    let kind = r.kind()?;
    let at = r.ts()?;
    let (facility, branch, service, reason) =
        (owned(r.opt_s()?), owned(r.opt_s()?), owned(r.opt_s()?), owned(r.opt_s()?));
    let country = r.opt_s()?.and_then(|c| <[u8; 2]>::try_from(c.as_bytes()).ok());
    let (promised_by, return_by) = (r.opt_ts()?, r.opt_ts()?);
    let recipient = if r.u()? == 0 {
        None
    } else {
        let (name, phone, email, locale, tz) =
            (owned(r.opt_s()?), owned(r.opt_s()?), owned(r.opt_s()?), owned(r.opt_s()?), owned(r.opt_s()?));
        let channels = match r.u()? {
            0 => None,
            c => Some(Channels(u8::try_from(c - 1).map_err(|_| corrupt("channels"))?)),
        };
        Some(Box::new(Recipient { name, phone, email, locale, tz, channels }))
    };
    let contact = if r.u()? == 0 {
        None
    } else {
        let channel = match r.n(ContactChannel::ALL.len(), "contact channel")? {
            0 => None,
            c => Some(ContactChannel::ALL[c - 1]),
        };
        let topic = Topic::ALL[r.n(Topic::ALL.len() - 1, "topic")?];
        Some(Contact { channel, topic })
    };
    Ok(Event {
        event_id,
        parcel_id,
        kind,
        at,
        facility,
        branch,
        country,
        promised_by,
        service,
        recipient,
        reason,
        return_by,
        contact,
    })
}

fn put_frontier(w: &mut W, f: &Frontier) {
    w.u(f.flows.len() as u64);
    for flow in &f.flows {
        w.u(flow.seen);
        w.ts(flow.frontier);
        w.ts(flow.newest);
        w.u(flow.len() as u64);
        flow.recent().for_each(|t| w.ts(t));
    }
}

fn get_flows(r: &mut R<'_>) -> Result<Vec<Flow>, CheckpointError> {
    let count = r.n(usize::from(u16::MAX) + 1, "partitions' flows")?;
    let mut flows = Vec::with_capacity(count);
    for _ in 0..count {
        let (seen, frontier, newest) = (r.u()?, r.ts()?, r.ts()?);
        let recent = (0..r.n(RING, "recent scans")?).map(|_| r.ts()).collect::<Result<Vec<_>, _>>()?;
        flows.push(Flow::restored(&recent, seen, frontier, newest));
    }
    Ok(flows)
}

fn put_stats(w: &mut W, s: &Stats) {
    for v in [
        s.events,
        s.duplicates,
        s.beyond_lateness,
        s.closed,
        s.superseded,
        s.parcels_created,
        s.evicted_done,
        s.evicted_idle,
        s.evicted_capacity,
        s.peak_parcels as u64,
        s.wakes,
        s.parked,
        s.symbol_overflow,
        s.held,
    ] {
        w.u(v);
    }
}

fn get_stats(r: &mut R<'_>) -> Result<Stats, CheckpointError> {
    Ok(Stats {
        events: r.u()?,
        duplicates: r.u()?,
        beyond_lateness: r.u()?,
        closed: r.u()?,
        superseded: r.u()?,
        parcels_created: r.u()?,
        evicted_done: r.u()?,
        evicted_idle: r.u()?,
        evicted_capacity: r.u()?,
        peak_parcels: r.n(usize::MAX, "peak")?,
        wakes: r.u()?,
        parked: r.u()?,
        symbol_overflow: r.u()?,
        held: r.u()?,
    })
}

impl Engine {
    /// The engine's whole state, compressed.
    pub fn checkpoint(&self) -> Vec<u8> {
        let mut w = W::default();
        w.u(self.set.rules.len() as u64);
        for r in &self.set.rules {
            w.s(&r.voice.id);
        }
        let counted: Vec<(usize, u8)> =
            self.plan.counted.iter().enumerate().filter_map(|(k, place)| place.map(|p| (k, p))).collect();
        w.u(counted.len() as u64);
        for (kind, place) in counted {
            w.u(kind as u64);
            w.u(u64::from(place));
        }
        self.syms.save(&mut w);
        w.ts(self.watermark);
        put_frontier(&mut w, &self.frontier);
        w.ts(self.max_contact_at);
        put_stats(&mut w, &self.stats);
        self.window.save(&mut w);
        self.tombstones.save(&mut w);
        self.branches.save(&mut w);
        self.lanes.save(&mut w);
        w.finish()
    }

    /// An engine in the state a [`Engine::checkpoint`] saved, under `set` and `config`.
    pub fn restore(bytes: &[u8], set: RuleSet, config: Config) -> Result<Engine, CheckpointError> {
        let body = R::open(bytes)?;
        let mut r = R { buf: &body, pos: 0 };
        let saved_rules = r.n(body.len(), "rule count")?;
        let mut rules = Vec::with_capacity(saved_rules);
        for _ in 0..saved_rules {
            rules.push(set.find(r.s()?).map(|i| i as u8));
        }
        let mut counted_saved = Vec::new();
        for _ in 0..r.n(Kind::ALL.len(), "counted kinds")? {
            let (kind, place) = (r.kind()?, r.n(255, "counter place")?);
            counted_saved.push((kind, place));
        }
        let mut syms = Interner::load(&mut r, config.max_symbols)?;
        let plan = Plan::new(&set, &mut syms);
        let mut counts = vec![None; counted_saved.iter().map(|(_, p)| p + 1).max().unwrap_or(0)];
        for (kind, place) in counted_saved {
            counts[place] = plan.counted[kind as usize];
        }
        let remap = Remap { rules, counts };
        let watermark = r.ts()?;
        let mut frontier = Frontier::new(config.partitions);
        let flows = get_flows(&mut r)?;
        frontier
            .restore(flows)
            .map_err(|saved| corrupt(format!("{saved} partitions' flows saved, {} configured", config.partitions)))?;
        let max_contact_at = r.ts()?;
        let stats = get_stats(&mut r)?;
        let window = Window::load(&mut r, &remap)?;
        let tombstones = Tombstones::load(&mut r, config.tombstones)?;
        let mut branches = BranchStage::new(&set);
        branches.load(&mut r)?;
        let mut lanes = Lanes::new(&set, config.partitions, config.lateness);
        lanes.load(&mut r)?;
        r.end()?;
        let mut timers = Timers::default();
        for slot in window.live_slots() {
            let p = window.get(slot);
            if p.wake != Ts::MAX {
                timers.insert(Entry { at: p.wake, slot, gen: p.gen });
            }
        }
        Ok(Engine {
            set: std::sync::Arc::new(set),
            plan,
            config,
            window,
            timers,
            due: Vec::new(),
            tombstones,
            lanes,
            syms,
            branches,
            facts: Vec::new(),
            judged: Vec::new(),
            branch_stage_inside: true,
            watermark,
            facts_after: watermark,
            frontier,
            max_contact_at,
            stats,
        })
    }
}

#[cfg(test)]
mod tests;
