//! The processor's checkpoints, taken in rounds that leave the stream
//! flowing: a round notes how far each input stream is read, then snapshots
//! one changed engine or stage per turn of the loop (the stream stops for
//! that one only, `forewarn_checkpoint_pause_seconds`) and puts a barrier in
//! the outbox behind everything the engines said until then. The round's
//! store task takes the objects one by one: it compresses one beside the
//! stream, waits for its barrier (nothing an object covers can be missing
//! from the streams) and stores it, while the loop takes the next; a turn
//! waits until the task is ready for another object, so a round holds two
//! objects at most, whatever the number of partitions. Each object holds
//! its own positions, so one stored early is as good as one stored last.
//! Once all are stored, each partition's watermark is announced to the
//! branch stages and each input's position said
//! (`forewarn_checkpoint_position`): everything read before the round began
//! is in an object taken after it. The positions in the checkpoint are the
//! acknowledgement: a restart resumes right after them.
//!
//! An engine is taken whole, or as the parcels it wrote since its last
//! object while they are at most half of its window's slots (the rest of
//! its state whole): a round's pauses and bytes follow what changed since
//! the last round, not what is held. The changes are the next link of a
//! chain stored beside the whole object, under its id, and restored on top
//! of it link by link; a chain of [`store::MAX_LINKS`] links ends with a
//! whole object (a restart reads a bounded chain). The last link may be
//! taken again instead, merged with what was written since ([`link`]): a
//! quiet network rewrites one small link a partition each round rather than
//! taking its engines whole every few rounds. An object taken in a
//! round that failed may not be stored, so the next round takes every
//! engine whole again.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::object_store::ObjectStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::super::store::{self, Kind, Saved};
use super::{Part, Processor, RoundSpan, ROUNDS_KEPT};
use crate::engine::{Form, Snapshot};
use crate::live::publisher::PublishStats;
use crate::metrics::METRICS;
use crate::nats::{connect, wire, LiveError};
use crate::time::Ts;

/// A stored checkpoint, waiting to be announced.
pub(super) struct Commit {
    began: Instant,
    /// The run's events when the round began.
    events: u64,
    /// Each input stream and the last of its messages the checkpoint covers.
    covered: Vec<(String, u64)>,
    marks: Vec<(u16, Ts)>,
    took: Duration,
    bytes: usize,
}

/// Resolves once the outbox stored everything said before an object was taken.
type Settled = Pin<Box<dyn Future<Output = Result<PublishStats, LiveError>> + Send>>;

/// An object taken on the loop, on its way to the store: its name, its
/// header (the state left empty), the state, and its barrier.
pub(super) struct Taken {
    name: String,
    object: Saved,
    snapshot: Snapshot,
    settled: Result<Settled, LiveError>,
}

/// A turn's leave to take an object: the store task is ready for it.
/// `None` when the task has ended early (its error ends the round).
pub(super) type Permit = Option<mpsc::OwnedPermit<Taken>>;

/// A checkpoint being taken, an object a turn.
pub(super) struct Round {
    began: Instant,
    events: u64,
    covered: Vec<(String, u64)>,
    /// Engines (false) and stages (true) still to visit.
    todo: Vec<(bool, u16)>,
    marks: Vec<(u16, Ts)>,
    /// To the store task: one object waits there while another is stored.
    taken: mpsc::Sender<Taken>,
    stored: JoinHandle<Result<Stored, LiveError>>,
}

impl Round {
    /// Resolves when the store task can take the next object.
    pub(super) fn permit(&self) -> impl Future<Output = Permit> + 'static {
        let taken = self.taken.clone();
        async move { taken.reserve_owned().await.ok() }
    }

    /// Every object taken: what this returns resolves once they are stored.
    pub(super) fn end(self) -> JoinHandle<Result<Commit, LiveError>> {
        let Round { began, events, covered, marks, taken, stored, .. } = self;
        drop(taken);
        tokio::spawn(async move {
            let Stored { objects, bytes } =
                stored.await.unwrap_or_else(|e| Err(LiveError::nats("checkpoint task", e)))?;
            tracing::debug!(objects, bytes, took_ms = began.elapsed().as_millis() as u64, "checkpoint stored");
            Ok(Commit { began, events, covered, marks, took: began.elapsed(), bytes })
        })
    }
}

/// The buffers of the last round, for the next: a snapshot written in a
/// fresh buffer waits on the loop for the kernel to hand it every page
/// (twice the snapshot's time in `cargo bench --bench checkpoint`; ~5 % of
/// a pause live, where the allocator often still holds freed pages), a
/// buffer written before has them.
#[derive(Clone, Default)]
pub(super) struct Buffers(Arc<Mutex<Kept>>);

#[derive(Default)]
struct Kept {
    /// Snapshots' buffers, two at most (a round holds two objects).
    raw: Vec<Vec<u8>>,
    /// The round's compression buffer.
    packed: Vec<u8>,
}

impl Buffers {
    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn raw(&self) -> Vec<u8> {
        self.kept().raw.pop().unwrap_or_default()
    }

    fn keep_raw(&self, buffer: Vec<u8>) {
        self.kept().raw.push(buffer);
    }

    fn packed(&self) -> Vec<u8> {
        std::mem::take(&mut self.kept().packed)
    }

    fn keep_packed(&self, buffer: Vec<u8>) {
        self.kept().packed = buffer;
    }
}

/// What a round's store task stored.
#[derive(Default)]
struct Stored {
    objects: usize,
    bytes: usize,
}

/// A round's store task: each object compressed (into one buffer, reused),
/// then stored once its barrier is answered.
async fn store_objects(
    store: ObjectStore,
    client: async_nats::Client,
    buffers: Buffers,
    mut taken: mpsc::Receiver<Taken>,
) -> Result<Stored, LiveError> {
    let mut stored = Stored::default();
    let mut buffer = buffers.packed();
    while let Some(Taken { name, object, snapshot, settled }) = taken.recv().await {
        let kind = object.kind;
        let raw = buffers.clone();
        buffer = tokio::task::spawn_blocking(move || {
            buffer.clear();
            object.encode_into(&mut buffer);
            snapshot.compress_into(&mut buffer);
            raw.keep_raw(snapshot.into_buffer());
            buffer
        })
        .await
        .map_err(|e| LiveError::nats("checkpoint compression", e))?;
        settled?.await?;
        // A store cut off by an outage fails at the reconnection, not
        // after its writes' ack timeouts: the next round starts at once.
        let connection = connect::connection(&client);
        tokio::select! {
            result = store::save(&store, &name, &buffer) => result?,
            () = connect::replaced(&client, connection) => {
                return Err(LiveError::nats("checkpoint write", "the connection to NATS was lost"));
            }
        }
        stored.objects += 1;
        stored.bytes += buffer.len();
        METRICS.checkpoint_objects.with_label_values(&[kind.label()]).inc();
    }
    buffers.keep_packed(buffer);
    Ok(stored)
}

/// How a partition's engine is taken, if not whole: as the next link of
/// its chain (the parcels it wrote since its last object, while they are at
/// most half of its slots and the chain is short), or as its last link
/// again, merged with what was written since. Merged when the last link's
/// parcels were all written again (or it wrote none): it holds no more than
/// a new link would, and the chain stays short (a quiet partition, its
/// watermark following the clock, rewrites one link a round); and when the
/// chain is full, while the merged link holds at most 1/(MAX_LINKS + 1) of
/// the slots: past that, a whole object now and short links after it cost
/// less than rewriting it each round. With the id of the whole object the
/// link counts from.
fn link(part: &Part) -> Option<(Form, u64)> {
    let whole = part.whole?;
    let (changed, slots) = part.engine.changes();
    let merged = part.engine.merged_changes();
    let fits = changed * 2 <= slots;
    let form = if part.links > 0 && fits && merged == changed {
        Form::Merged
    } else if part.links < store::MAX_LINKS && fits {
        Form::Changes
    } else if part.links > 0 && merged * (store::MAX_LINKS as usize + 1) <= slots {
        Form::Merged
    } else {
        return None;
    };
    Some((form, whole))
}

pub(super) async fn committed(task: &mut Option<JoinHandle<Result<Commit, LiveError>>>) -> Result<Commit, LiveError> {
    match task.as_mut() {
        Some(handle) => {
            let result = handle.await.unwrap_or_else(|e| Err(LiveError::nats("checkpoint task", e)));
            *task = None;
            result
        }
        None => std::future::pending().await,
    }
}

/// Resolves with the next turn's permit of the round under way, if any.
pub(super) async fn next_turn(round: &Option<Round>) -> Permit {
    match round {
        Some(round) => round.permit().await,
        None => std::future::pending().await,
    }
}

impl Processor {
    /// Begins a round: what every input has given so far is what it covers.
    pub(super) fn begin_round(&mut self) -> Round {
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        let mut todo: Vec<(bool, u16)> = self.stages.keys().map(|&p| (true, p)).collect();
        todo.extend(self.parts.keys().map(|&p| (false, p)));
        let (taken, objects) = mpsc::channel(1);
        Round {
            began: Instant::now(),
            events: self.summary.events,
            covered: self.inputs.iter().map(|i| (i.stream.clone(), i.last_seq)).collect(),
            todo,
            marks: Vec::new(),
            taken,
            stored: tokio::spawn(store_objects(self.store.clone(), self.client.clone(), self.buffers.clone(), objects)),
        }
    }

    /// One turn of a round, once the store task can take an object: the
    /// next changed one taken. True when there is none left to take (or the
    /// store task has ended): the round is over.
    pub(super) async fn turn(&mut self, round: &mut Round, permit: Permit) -> bool {
        let Some(permit) = permit else { return true };
        let paused = Instant::now();
        let count = self.owned.count;
        while let Some((is_stage, p)) = round.todo.pop() {
            let taken = if is_stage {
                let Some(stage) = self.stages.get_mut(&p) else { continue };
                std::mem::take(&mut stage.dirty).then(|| {
                    let name = store::object_name(Kind::Stage, p);
                    let object = Saved {
                        kind: Kind::Stage,
                        partitions: count,
                        partition: p,
                        whole: 0,
                        positions: vec![stage.pos],
                        marks: stage.marks.clone(),
                        state: Vec::new(),
                    };
                    (name, object, stage.stage.snapshot_into(self.buffers.raw()))
                })
            } else {
                let Some(part) = self.parts.get_mut(&p) else { continue };
                round.marks.push((p, part.engine.watermark()));
                std::mem::take(&mut part.dirty).then(|| {
                    let (name, kind, form, whole) = match link(part) {
                        Some((form, whole)) => {
                            if form == Form::Changes {
                                part.links += 1;
                            }
                            (store::link_name(p, part.links), Kind::Changes, form, whole)
                        }
                        None => {
                            part.links = 0;
                            let whole = *part.whole.insert(rand::random::<u64>().max(1));
                            (store::object_name(Kind::Engine, p), Kind::Engine, Form::Whole, whole)
                        }
                    };
                    let object = Saved {
                        kind,
                        partitions: count,
                        partition: p,
                        whole,
                        positions: part.pos.to_vec(),
                        marks: Vec::new(),
                        state: Vec::new(),
                    };
                    (name, object, part.engine.snapshot_into(self.buffers.raw(), form))
                })
            };
            if let Some((name, object, snapshot)) = taken {
                // Everything the object covers was handed to the outbox before it was taken.
                let settled = self.barrier().await.map(|settled| Box::pin(settled) as Settled);
                permit.send(Taken { name, object, snapshot, settled });
                METRICS.checkpoint_pause.observe(paused.elapsed().as_secs_f64());
                return false;
            }
        }
        true
    }

    /// A round taken to its end (when stopping).
    pub(super) async fn finish_round(&mut self, mut round: Round) -> JoinHandle<Result<Commit, LiveError>> {
        loop {
            let permit = round.permit().await;
            if self.turn(&mut round, permit).await {
                return round.end();
            }
        }
    }

    /// A whole round at once (when stopping).
    pub(super) async fn checkpoint_now(&mut self) -> JoinHandle<Result<Commit, LiveError>> {
        let round = self.begin_round();
        self.finish_round(round).await
    }

    /// After a checkpoint is stored: say what it covers, announce the watermarks.
    pub(super) async fn commit(&mut self, result: Result<Commit, LiveError>) -> Result<(), LiveError> {
        match result {
            Ok(commit) => {
                self.readiness.saved();
                // What came after the snapshot waits for the next one.
                self.unsaved = self.changed();
                if self.unsaved {
                    self.readiness.unsaved();
                }
                self.summary.checkpoints += 1;
                let span = RoundSpan {
                    began: commit.began,
                    stored: Instant::now(),
                    events: self.summary.events - commit.events,
                };
                if self.summary.rounds.len() == ROUNDS_KEPT {
                    self.summary.rounds.pop_front();
                }
                self.summary.rounds.push_back(span);
                METRICS.checkpoint_seconds.observe(commit.took.as_secs_f64());
                METRICS.checkpoint_bytes.set(commit.bytes as i64);
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                METRICS.checkpoint_last.set(now.as_secs() as i64);
                for (stream, seq) in &commit.covered {
                    METRICS.checkpoint_position.with_label_values(&[stream]).set(*seq as i64);
                }
                let count = self.owned.count;
                let marks = commit.marks.into_iter().filter(|(_, watermark)| *watermark > Ts::MIN);
                self.outgoing.extend(marks.map(|(p, watermark)| wire::mark(p, count, watermark)));
                self.flush().await?;
            }
            Err(e) => {
                self.readiness.failing(&format!("checkpoint not stored: {e}"));
                self.summary.checkpoint_failures += 1;
                METRICS.checkpoint_failures.inc();
                // The stored checkpoint is the older one: a restart re-reads what this one covered.
                for part in self.parts.values_mut() {
                    part.dirty = true;
                    // The whole object taken may not be stored: changes would have nothing to apply to.
                    part.whole = None;
                }
                for stage in self.stages.values_mut() {
                    stage.dirty = true;
                }
                tracing::error!(error = %e, "checkpoint not stored; retrying at the next one");
            }
        }
        Ok(())
    }
}
