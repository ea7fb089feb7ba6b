//! Checkpoint objects in the JetStream object store: per owned partition,
//! its engine whole (`engine-P`, with its stream positions) and the chain
//! of the engine's changes taken after it (`changes-P`, `changes-P.2`, …
//! up to [`MAX_LINKS`], each counted from the one before, with later
//! positions; valid on the whole object of the same id only, so a link
//! left from an older chain ends the chain); per owned branch partition,
//! its branch stage, position and the marks it has seen. Objects by
//! partition are what lets partitions move between instances: the new
//! owner reads the partition's objects and resumes after their positions.
//! An object replaced while it is read (storing one purges the chunks of
//! the one before) is read again, the newer one whole.
//!
//! Layout: `FWLV`, version (u32 LE), kind (u8), partition count (u16 LE),
//! partition (u16 LE), the whole object's id (u64 LE; from version 2),
//! positions (count u8, u64 LE each), marks (count u32 LE, then i64 LE
//! each), then the engine's or stage's own checkpoint bytes.

use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectStore};
use tokio::io::AsyncReadExt;

use crate::nats::LiveError;
use crate::time::Ts;

const MAGIC: &[u8; 4] = b"FWLV";
const VERSION: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A partition's engine, whole; positions are (scans, contacts).
    Engine,
    /// A branch partition's stage; the position is the facts stream's.
    Stage,
    /// A partition's engine as the changes since its last object: a link
    /// of the chain after its whole object.
    Changes,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Engine, Kind::Changes, Kind::Stage];

    /// The kind's name in `forewarn_checkpoint_objects_total`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Engine => "engine",
            Kind::Changes => "changes",
            Kind::Stage => "stage",
        }
    }
}

/// A checkpoint object, decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct Saved {
    pub kind: Kind,
    pub partitions: u16,
    pub partition: u16,
    /// A whole engine's id; for changes, the id of the whole engine they
    /// apply to (0 for stages, and in objects of version 1).
    pub whole: u64,
    pub positions: Vec<u64>,
    pub marks: Vec<Ts>,
    pub state: Vec<u8>,
}

/// The longest chain of changes after a whole object: a restart reads
/// the whole object and at most this many links.
pub const MAX_LINKS: u32 = 8;

/// The name of link `link` (from 1) of a partition's chain of changes.
pub fn link_name(partition: u16, link: u32) -> String {
    match link {
        1 => object_name(Kind::Changes, partition),
        _ => format!("{}.{link}", object_name(Kind::Changes, partition)),
    }
}

pub fn object_name(kind: Kind, partition: u16) -> String {
    match kind {
        Kind::Engine => format!("engine-{partition:03}"),
        Kind::Stage => format!("branch-{partition:03}"),
        Kind::Changes => format!("changes-{partition:03}"),
    }
}

impl Saved {
    /// Appends the object to `out`: a state left empty here can be
    /// appended after it, straight into the same buffer.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(match self.kind {
            Kind::Engine => 0,
            Kind::Stage => 1,
            Kind::Changes => 2,
        });
        out.extend_from_slice(&self.partitions.to_le_bytes());
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.extend_from_slice(&self.whole.to_le_bytes());
        out.push(self.positions.len() as u8);
        self.positions.iter().for_each(|p| out.extend_from_slice(&p.to_le_bytes()));
        out.extend_from_slice(&(self.marks.len() as u32).to_le_bytes());
        self.marks.iter().for_each(|m| out.extend_from_slice(&m.0.to_le_bytes()));
        out.extend_from_slice(&self.state);
    }

    pub fn decode(bytes: &[u8]) -> Result<Saved, String> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let part = bytes.get(at..at + n).ok_or("truncated")?;
            at += n;
            Ok(part)
        };
        if take(4)? != MAGIC {
            return Err("not a forewarn checkpoint object".into());
        }
        let version = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "truncated")?);
        if !(1..=VERSION).contains(&version) {
            return Err(format!("checkpoint object format v{version}, this forewarn reads v1 to v{VERSION}"));
        }
        let kind = match take(1)?[0] {
            0 => Kind::Engine,
            1 => Kind::Stage,
            2 => Kind::Changes,
            other => return Err(format!("unknown checkpoint kind {other}")),
        };
        let u16_at = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
        let partitions = u16_at(take(2)?);
        let partition = u16_at(take(2)?);
        let whole = match version {
            1 => 0,
            _ => u64::from_le_bytes(take(8)?.try_into().map_err(|_| "truncated")?),
        };
        let count = take(1)?[0] as usize;
        let mut positions = Vec::with_capacity(count);
        for _ in 0..count {
            positions.push(u64::from_le_bytes(take(8)?.try_into().map_err(|_| "truncated")?));
        }
        let marks_len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "truncated")?) as usize;
        if marks_len > usize::from(u16::MAX) {
            return Err("too many marks".into());
        }
        let mut marks = Vec::with_capacity(marks_len);
        for _ in 0..marks_len {
            marks.push(Ts(i64::from_le_bytes(take(8)?.try_into().map_err(|_| "truncated")?)));
        }
        Ok(Saved { kind, partitions, partition, whole, positions, marks, state: bytes[at..].to_vec() })
    }
}

/// Reads a checkpoint object; `None` when there is none yet.
pub async fn load(
    store: &ObjectStore,
    kind: Kind,
    partition: u16,
    partitions: u16,
) -> Result<Option<Saved>, LiveError> {
    load_named(store, object_name(kind, partition), kind, partition, partitions).await
}

/// Reads the chain of changes stored after the whole object `whole`: its
/// links in order, up to the first missing one or one of another chain.
pub async fn load_chain(store: &ObjectStore, whole: &Saved, partitions: u16) -> Result<Vec<Saved>, LiveError> {
    let mut chain = Vec::new();
    // Objects of version 1 name no whole object: no changes count from them.
    if whole.whole == 0 {
        return Ok(chain);
    }
    for link in 1..=MAX_LINKS {
        let name = link_name(whole.partition, link);
        match load_named(store, name, Kind::Changes, whole.partition, partitions).await? {
            Some(saved) if saved.whole == whole.whole => chain.push(saved),
            _ => break,
        }
    }
    Ok(chain)
}

async fn load_named(
    store: &ObjectStore,
    name: String,
    kind: Kind,
    partition: u16,
    partitions: u16,
) -> Result<Option<Saved>, LiveError> {
    let Some(bytes) = read(store, &name).await? else { return Ok(None) };
    let saved = Saved::decode(&bytes).map_err(|reason| LiveError::Checkpoint { name: name.clone(), reason })?;
    if saved.kind != kind || saved.partition != partition {
        return Err(LiveError::Checkpoint { name, reason: "it holds another partition's state".into() });
    }
    if saved.partitions != partitions {
        return Err(LiveError::Checkpoint {
            name,
            reason: format!(
                "made with {} partitions, the configuration says {partitions}: partitions cannot be re-cut in place",
                saved.partitions
            ),
        });
    }
    Ok(Some(saved))
}

/// No chunk of an object being read for this long: its name is looked up
/// again, as storing a newer object under it purges the chunks being read.
const CHUNK_WAIT: Duration = Duration::from_secs(2);
/// No chunk for this long, the object still the one being read: the read fails.
const READ_STALL: Duration = Duration::from_secs(30);
/// Reads started over on a newer object of the name before giving up.
const READ_STARTS: u32 = 8;

/// The bytes of the object stored under `name` (`None`: none is). A read
/// that the object's replacement cut off (its chunks purged, the server
/// would never send the rest) starts over on the newer object: a
/// checkpoint stored while a restart reads it is read whole, the older or
/// the newer, never waited for without end.
async fn read(store: &ObjectStore, name: &str) -> Result<Option<Vec<u8>>, LiveError> {
    let failed = |e: &dyn std::fmt::Display| LiveError::nats("checkpoint read", format!("{name}: {e}"));
    for _ in 0..READ_STARTS {
        let mut object = match store.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(failed(&e)),
        };
        let nuid = object.info().nuid.clone();
        // Room for the size the object says it has, within reason: a damaged
        // object's meta cannot ask for any amount of memory.
        let mut bytes = Vec::with_capacity(object.info().size.min(1 << 30));
        let mut waited = Duration::ZERO;
        let replaced = loop {
            match tokio::time::timeout(CHUNK_WAIT, object.read_buf(&mut bytes)).await {
                Ok(Ok(0)) => return Ok(Some(bytes)),
                Ok(Ok(_)) => waited = Duration::ZERO,
                Ok(Err(e)) => return Err(failed(&e)),
                Err(_) if store.info(name).await.map_or(true, |info| info.nuid != nuid) => break true,
                Err(_) if waited + CHUNK_WAIT >= READ_STALL => break false,
                Err(_) => waited += CHUNK_WAIT,
            }
        };
        if !replaced {
            return Err(failed(&format_args!("no chunk for {} s", READ_STALL.as_secs())));
        }
        tracing::debug!(name, "checkpoint object replaced while read; reading the newer one");
    }
    Err(failed(&format_args!("replaced while read {READ_STARTS} times in a row")))
}

/// Stores an encoded checkpoint object under `name`; the previous one stays
/// readable until this one is whole.
pub async fn save(store: &ObjectStore, name: &str, bytes: &[u8]) -> Result<(), LiveError> {
    store.put(name, &mut &bytes[..]).await.map_err(|e| LiveError::nats("checkpoint write", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_object_reads_back_and_a_damaged_one_is_refused() {
        let saved = Saved {
            kind: Kind::Changes,
            partitions: 16,
            partition: 3,
            whole: u64::MAX - 9,
            positions: vec![42, 7],
            marks: vec![Ts(1), Ts(-5)],
            state: b"engine bytes".to_vec(),
        };
        let mut bytes = Vec::new();
        saved.encode_into(&mut bytes);
        // Version 1 had no whole object's id (after kind and partitions).
        let mut v1 = bytes.clone();
        v1[4] = 1;
        v1.drain(13..21);
        v1[8] = 0;
        let earlier = Saved { kind: Kind::Engine, whole: 0, ..Saved::decode(&bytes).expect("decodes") };
        assert_eq!(Saved::decode(&bytes), Ok(saved));
        assert_eq!(Saved::decode(&v1), Ok(earlier), "objects of version 1 still read");
        assert_eq!(Saved::decode(&bytes[..10]).unwrap_err(), "truncated");
        let mut future = bytes.clone();
        future[4] = 9;
        assert!(Saved::decode(&future).unwrap_err().contains("format v9, this forewarn reads v1 to v2"));
    }
}
