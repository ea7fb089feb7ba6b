//! The processor's checkpoints, taken in rounds that leave the stream
//! flowing: a round notes how far each input stream is read, then snapshots
//! one changed engine or stage per turn of the loop (the stream stops for
//! that one only, `forewarn_checkpoint_pause_seconds`) and compresses it
//! beside the stream. When every object is taken, a barrier goes to the
//! outbox; the objects are stored in the background once it is answered
//! (nothing a checkpoint covers can be missing from the streams, and the
//! stream does not wait for the acknowledgements), and only then each
//! partition's watermark is announced to the branch stages and each input's
//! position said (`forewarn_checkpoint_position`): everything read before
//! the round began is in an object taken after it. The positions in the
//! checkpoint are the acknowledgement: a restart resumes right after them.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::super::store::{self, Kind, Saved};
use super::{Processor, RoundSpan, ROUNDS_KEPT};
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

/// A checkpoint being taken, an object a turn.
pub(super) struct Round {
    began: Instant,
    events: u64,
    covered: Vec<(String, u64)>,
    /// Engines (false) and stages (true) still to visit.
    todo: Vec<(bool, u16)>,
    marks: Vec<(u16, Ts)>,
    compressing: Vec<JoinHandle<Saved>>,
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

impl Processor {
    /// Begins a round: what every input has given so far is what it covers.
    pub(super) fn begin_round(&mut self) -> Round {
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        let mut todo: Vec<(bool, u16)> = self.stages.keys().map(|&p| (true, p)).collect();
        todo.extend(self.parts.keys().map(|&p| (false, p)));
        Round {
            began: Instant::now(),
            events: self.summary.events,
            covered: self.inputs.iter().map(|i| (i.stream.clone(), i.last_seq)).collect(),
            todo,
            marks: Vec::new(),
            compressing: Vec::new(),
        }
    }

    /// One turn of a round: the next object taken, or, when all are, the
    /// store begun behind an outbox barrier (the round is then over).
    pub(super) async fn turn(&mut self, ongoing: &mut Option<Round>) -> Option<JoinHandle<Result<Commit, LiveError>>> {
        let round = ongoing.as_mut()?;
        let paused = Instant::now();
        let count = self.owned.count;
        while let Some((is_stage, p)) = round.todo.pop() {
            let taken = if is_stage {
                let Some(stage) = self.stages.get_mut(&p) else { continue };
                std::mem::take(&mut stage.dirty).then(|| {
                    let object = Saved {
                        kind: Kind::Stage,
                        partitions: count,
                        partition: p,
                        positions: vec![stage.pos],
                        marks: stage.marks.clone(),
                        state: Vec::new(),
                    };
                    (object, stage.stage.snapshot())
                })
            } else {
                let Some(part) = self.parts.get_mut(&p) else { continue };
                round.marks.push((p, part.engine.watermark()));
                std::mem::take(&mut part.dirty).then(|| {
                    let object = Saved {
                        kind: Kind::Engine,
                        partitions: count,
                        partition: p,
                        positions: part.pos.to_vec(),
                        marks: Vec::new(),
                        state: Vec::new(),
                    };
                    (object, part.engine.snapshot())
                })
            };
            if let Some((object, snapshot)) = taken {
                round
                    .compressing
                    .push(tokio::task::spawn_blocking(move || Saved { state: snapshot.compress(), ..object }));
                METRICS.checkpoint_pause.observe(paused.elapsed().as_secs_f64());
                return None;
            }
        }
        // Everything the objects cover was handed to the outbox before they
        // were taken; they are stored once the outbox has stored all of it.
        let settled = self.barrier().await;
        METRICS.checkpoint_pause.observe(paused.elapsed().as_secs_f64());
        let Round { began, events, covered, marks, compressing, .. } = ongoing.take()?;
        let store = self.store.clone();
        let client = self.client.clone();
        Some(tokio::spawn(async move {
            settled?.await?;
            let connection = connect::connection(&client);
            let mut objects = Vec::with_capacity(compressing.len());
            for task in compressing {
                objects.push(task.await.map_err(|e| LiveError::nats("checkpoint compression", e))?);
            }
            let bytes: usize = objects.iter().map(|o| o.state.len()).sum();
            // A store cut off by an outage fails at the reconnection, not
            // after its writes' ack timeouts: the next round starts at once.
            let saved = async {
                for object in &objects {
                    store::save(&store, object).await?;
                }
                Ok::<(), LiveError>(())
            };
            tokio::select! {
                result = saved => result?,
                () = connect::replaced(&client, connection) => {
                    return Err(LiveError::nats("checkpoint write", "the connection to NATS was lost"));
                }
            }
            tracing::debug!(
                objects = objects.len(),
                bytes,
                took_ms = began.elapsed().as_millis() as u64,
                "checkpoint stored"
            );
            Ok(Commit { began, events, covered, marks, took: began.elapsed(), bytes })
        }))
    }

    /// A whole round at once (when stopping).
    pub(super) async fn checkpoint_now(&mut self) -> JoinHandle<Result<Commit, LiveError>> {
        let mut round = Some(self.begin_round());
        loop {
            if let Some(task) = self.turn(&mut round).await {
                return task;
            }
        }
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
