//! The checkpoint's byte codec: a versioned, LZ4-compressed stream of
//! varints, instants (each the zigzag difference from the instant written
//! before it, the sentinels one byte), fixed-width hashes and
//! length-prefixed strings; the one event form every component saves its
//! held events in; and the map from a saved rule pack onto the current
//! one. Below every part's `checkpoint.rs`, which write their own state
//! with it; `checkpoint.rs` orders them.

use std::borrow::Cow;

use super::sym::SymMap;
use crate::event::{Channels, Contact, ContactChannel, Event, Kind, Recipient, Topic};
use crate::time::Ts;

const MAGIC: &[u8; 4] = b"FWCK";
const VERSION: u32 = 12;
/// The oldest format this forewarn still reads.
const OLDEST: u32 = 10;
/// The first format whose tombstones keep their parcel's end; an older
/// one's are read as ended at the dawn of time (a label then starts a new
/// parcel, as before).
pub(in crate::engine) const TOMBSTONE_ENDS_SINCE: u32 = 11;
/// The first format whose instants are differences from the one before
/// (a parcel's instants are mostly equal or near each other, and near the
/// last parcel's: 1 to 4 bytes instead of 6, the sentinels 1 instead of 9),
/// whose fingerprints and hashes are fixed-width (a varint of a random
/// 32-bit fingerprint takes 5 bytes, of a 64-bit hash 10), and whose
/// tombstones leave out their place in the ring: a parcel takes ~20 %
/// fewer bytes before compression (1 M regional parcels: 159.1 MiB, now
/// 126.8), the snapshot ~25 % less time, its compression ~10 % less.
pub(in crate::engine) const COMPACT_SINCE: u32 = 12;

/// Why a checkpoint cannot be restored. Every variant has the same way out:
/// start without it and rebuild the state by replaying the stream.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a forewarn checkpoint (bad magic); start without it to rebuild the state from the stream")]
    NotACheckpoint,
    #[error(
        "checkpoint format v{0}, this forewarn reads v{OLDEST} to v{VERSION}; start without it to rebuild the state from the stream"
    )]
    Version(u32),
    #[error("corrupt checkpoint ({0}); start without it to rebuild the state from the stream")]
    Corrupt(String),
}

pub(in crate::engine) fn corrupt(what: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt(what.into())
}

/// Writes varints, instants, fixed-width numbers and length-prefixed strings.
#[derive(Default)]
pub(in crate::engine) struct W {
    buf: Vec<u8>,
    /// The last instant written (not a sentinel): the next is written as the difference.
    last: i64,
}

/// An instant's varint: `MIN` and `MAX` 0 and 1, any other the zigzag of
/// its difference from `last`, plus 2.
const INSTANT_MIN: u64 = 0;
const INSTANT_MAX: u64 = 1;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl W {
    /// A writer into `buffer` (emptied), with room for `bytes`: a state
    /// about as large as the last one is written without growing (copying)
    /// its buffer on the way, and a buffer used before is written without
    /// the kernel giving it fresh pages again (half a snapshot's time).
    pub fn reusing(mut buffer: Vec<u8>, bytes: usize) -> W {
        buffer.clear();
        buffer.reserve(bytes);
        W { buf: buffer, last: 0 }
    }

    pub fn u(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub fn ts(&mut self, t: Ts) {
        let v = match t {
            Ts::MIN => INSTANT_MIN,
            Ts::MAX => INSTANT_MAX,
            Ts(t) => {
                let v = zigzag(t.wrapping_sub(self.last)) + 2;
                self.last = t;
                v
            }
        };
        self.u(v);
    }

    /// A 32-bit fingerprint or hash, as it is: random bits take no less.
    pub fn u32_fixed(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A 64-bit hash, as it is.
    pub fn u64_fixed(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn s(&mut self, s: &str) {
        self.u(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    pub fn opt_s(&mut self, s: Option<&str>) {
        match s {
            None => self.u(0),
            Some(s) => {
                self.u(s.len() as u64 + 1);
                self.buf.extend_from_slice(s.as_bytes());
            }
        }
    }

    pub fn opt_ts(&mut self, t: Option<Ts>) {
        self.u(u64::from(t.is_some()));
        if let Some(t) = t {
            self.ts(t);
        }
    }

    /// The state written, not compressed yet.
    pub fn snapshot(self) -> Snapshot {
        Snapshot(self.buf)
    }
}

/// A component's state as the codec wrote it, before compression: taking it
/// is all that must stop the stream; [`Snapshot::compress`] (most of a
/// checkpoint's time) can run elsewhere.
pub struct Snapshot(Vec<u8>);

impl Snapshot {
    /// The checkpoint bytes: versioned and LZ4-compressed.
    pub fn compress(self) -> Vec<u8> {
        let mut out = Vec::new();
        self.compress_into(&mut out);
        out
    }

    /// Appends the checkpoint bytes to `out`, whose room is reused: a
    /// checkpoint round compresses object after object into one buffer.
    pub fn compress_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        // The size first, as `lz4_flex::decompress_size_prepended` reads it.
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        let start = out.len();
        let room = lz4_flex::block::get_maximum_output_size(self.0.len());
        // Exactly: a doubled buffer would hold twice the largest object for the whole round.
        out.reserve_exact(room);
        out.resize(start + room, 0);
        let written = lz4_flex::block::compress_into(&self.0, &mut out[start..])
            .expect("LZ4 always fits in its maximum output size");
        out.truncate(start + written);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The buffer the state was written in, for the next snapshot to reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A checkpoint's state, decompressed, and the format version it was written in.
pub(in crate::engine) struct Body {
    bytes: Vec<u8>,
    version: u32,
}

impl Body {
    /// Checks the magic and version of what [`Snapshot::compress`] wrote and decompresses it.
    pub fn open(bytes: &[u8]) -> Result<Body, CheckpointError> {
        if bytes.len() < 8 || &bytes[..4] != MAGIC {
            return Err(CheckpointError::NotACheckpoint);
        }
        let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if !(OLDEST..=VERSION).contains(&version) {
            return Err(CheckpointError::Version(version));
        }
        let bytes = lz4_flex::decompress_size_prepended(&bytes[8..]).map_err(|e| corrupt(e.to_string()))?;
        Ok(Body { bytes, version })
    }

    pub fn reader(&self) -> R<'_> {
        R::new(&self.bytes, self.version)
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// Reads what [`W`] wrote, refusing anything out of bounds.
pub(in crate::engine) struct R<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
    /// The format it was written in, for the parts whose form changed.
    pub version: u32,
    /// The last instant read (not a sentinel), as [`W`] keeps it.
    last: i64,
}

impl R<'_> {
    /// Fails unless everything was read.
    pub fn end(&self) -> Result<(), CheckpointError> {
        if self.pos != self.buf.len() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(())
    }
}

impl<'a> R<'a> {
    pub fn new(buf: &'a [u8], version: u32) -> R<'a> {
        R { buf, pos: 0, version, last: 0 }
    }

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
        if self.version < COMPACT_SINCE {
            return Ok(Ts(unzigzag(v)));
        }
        Ok(match v {
            INSTANT_MIN => Ts::MIN,
            INSTANT_MAX => Ts::MAX,
            v => {
                self.last = self.last.wrapping_add(unzigzag(v - 2));
                Ts(self.last)
            }
        })
    }

    pub fn u32_fixed(&mut self) -> Result<u32, CheckpointError> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64_fixed(&mut self) -> Result<u64, CheckpointError> {
        self.array().map(u64::from_le_bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CheckpointError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
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
pub(in crate::engine) struct Remap {
    /// Saved rule index → current index.
    pub rules: Vec<Option<u8>>,
    /// Saved counter place → current place.
    pub counts: Vec<Option<u8>>,
    /// Saved symbol → the process's.
    pub syms: SymMap,
}

impl Remap {
    pub fn fired(&self, saved: u64) -> u64 {
        self.rules.iter().enumerate().fold(0, |acc, (old, new)| match new {
            Some(new) if saved & (1 << old) != 0 => acc | 1 << new,
            _ => acc,
        })
    }
}

pub(in crate::engine) fn put_event(w: &mut W, e: &Event<'_>) {
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

pub(in crate::engine) fn get_event(r: &mut R<'_>) -> Result<Event<'static>, CheckpointError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_instants_round_trip() {
        let mut w = W::default();
        let values = [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        let times = [Ts(0), Ts(-1), Ts::MIN, Ts::MAX, Ts(1_795_000_000_123), Ts(-1_795_000_000_123)];
        values.iter().for_each(|v| w.u(*v));
        times.iter().for_each(|t| w.ts(*t));
        w.opt_s(Some("Léa"));
        w.opt_s(None);
        w.u32_fixed(u32::MAX - 1);
        w.u64_fixed(u64::MAX - 1);
        let mut r = R::new(&w.buf, VERSION);
        for v in values {
            assert_eq!(r.u().unwrap(), v);
        }
        for t in times {
            assert_eq!(r.ts().unwrap(), t);
        }
        assert_eq!((r.opt_s().unwrap(), r.opt_s().unwrap()), (Some("Léa"), None));
        assert_eq!((r.u32_fixed().unwrap(), r.u64_fixed().unwrap()), (u32::MAX - 1, u64::MAX - 1));
        assert!(r.u().is_err(), "reading past the end is an error");
    }

    /// A parcel's instants: the sentinels take a byte, an instant near the
    /// one before two or three; each read back as written.
    #[test]
    fn instants_take_the_bytes_of_their_difference() {
        let at = Ts(1_795_000_000_123);
        let mut w = W::default();
        w.ts(at);
        let first = w.buf.len();
        for t in [Ts::MAX, Ts::MIN, at, Ts(at.0 + 1_000), Ts(at.0 - 60_000)] {
            w.ts(t);
        }
        assert_eq!((first, w.buf.len() - first), (6, 1 + 1 + 1 + 2 + 3));
        let mut r = R::new(&w.buf, VERSION);
        for t in [at, Ts::MAX, Ts::MIN, at, Ts(at.0 + 1_000), Ts(at.0 - 60_000)] {
            assert_eq!(r.ts().unwrap(), t);
        }
    }

    /// Before v12, an instant was the zigzag varint of its value.
    #[test]
    fn an_older_format_s_instants_read_as_they_were_written() {
        let times = [Ts(1_795_000_000_123), Ts::MAX, Ts::MIN, Ts(1_795_000_000_123)];
        let mut w = W::default();
        times.iter().for_each(|t| w.u(zigzag(t.0)));
        let mut r = R::new(&w.buf, COMPACT_SINCE - 1);
        for t in times {
            assert_eq!(r.ts().unwrap(), t);
        }
        assert!(r.end().is_ok());
    }
}
