//! The processor's checkpoints: settle the publishes, snapshot what changed
//! (on the processing task, so the snapshot is consistent: the stream stops
//! for this only, `forewarn_checkpoint_pause_seconds`), compress and store
//! it in the background, and only then announce each partition's watermark to the
//! branch stages and say how far each input stream is covered
//! (`forewarn_checkpoint_position`). The positions in the checkpoint are the
//! acknowledgement: a restart resumes right after them.

use std::time::Instant;

use tokio::task::JoinHandle;

use super::super::store::{self, Kind, Saved};
use super::Processor;
use crate::metrics::METRICS;
use crate::nats::{wire, LiveError};
use crate::time::Ts;

/// A stored snapshot, waiting to be announced.
pub(super) struct Commit {
    /// Each input stream and the last of its messages the snapshot covers.
    covered: Vec<(String, u64)>,
    marks: Vec<(u16, Ts)>,
    took: std::time::Duration,
    bytes: usize,
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
    /// Settles the publishes, snapshots what changed, and stores it in the background.
    pub(super) async fn snapshot(&mut self) -> JoinHandle<Result<Commit, LiveError>> {
        let paused = Instant::now();
        self.publisher.settle().await;
        let count = self.owned.count;
        let mut taken = Vec::new();
        let mut marks = Vec::new();
        for (&p, part) in &mut self.parts {
            marks.push((p, part.engine.watermark()));
            if std::mem::take(&mut part.dirty) {
                let object = Saved {
                    kind: Kind::Engine,
                    partitions: count,
                    partition: p,
                    positions: part.pos.to_vec(),
                    marks: Vec::new(),
                    state: Vec::new(),
                };
                taken.push((object, part.engine.snapshot()));
            }
        }
        for (&p, stage) in &mut self.stages {
            if std::mem::take(&mut stage.dirty) {
                let object = Saved {
                    kind: Kind::Stage,
                    partitions: count,
                    partition: p,
                    positions: vec![stage.pos],
                    marks: stage.marks.clone(),
                    state: Vec::new(),
                };
                taken.push((object, stage.stage.snapshot()));
            }
        }
        METRICS.checkpoint_pause.observe(paused.elapsed().as_secs_f64());
        let covered = self.inputs.iter().map(|i| (i.stream.clone(), i.last_seq)).collect();
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        let store = self.store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let compress = move || -> Vec<Saved> {
                taken.into_iter().map(|(object, snapshot)| Saved { state: snapshot.compress(), ..object }).collect()
            };
            let objects = tokio::task::spawn_blocking(compress)
                .await
                .map_err(|e| LiveError::nats("checkpoint compression", e))?;
            let bytes: usize = objects.iter().map(|o| o.state.len()).sum();
            for object in &objects {
                store::save(&store, object).await?;
            }
            tracing::debug!(
                objects = objects.len(),
                bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "checkpoint stored"
            );
            Ok(Commit { covered, marks, took: started.elapsed(), bytes })
        })
    }

    /// After a checkpoint is stored: say what it covers, announce the watermarks.
    pub(super) async fn commit(&mut self, result: Result<Commit, LiveError>) {
        match result {
            Ok(commit) => {
                self.readiness.saved();
                // What came after the snapshot waits for the next one.
                self.unsaved = self.changed();
                if self.unsaved {
                    self.readiness.unsaved();
                }
                self.summary.checkpoints += 1;
                METRICS.checkpoint_seconds.observe(commit.took.as_secs_f64());
                METRICS.checkpoint_bytes.set(commit.bytes as i64);
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                METRICS.checkpoint_last.set(now.as_secs() as i64);
                for (stream, seq) in &commit.covered {
                    METRICS.checkpoint_position.with_label_values(&[stream]).set(*seq as i64);
                }
                for (p, watermark) in commit.marks {
                    if watermark > Ts::MIN {
                        self.publisher.send(wire::mark(p, self.owned.count, watermark)).await;
                    }
                }
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
    }
}
