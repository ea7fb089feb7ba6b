//! What comes in: a scan or contact to its partition's engine, a branch
//! fact or watermark mark to the owned branch stages, and anything that
//! cannot be used to the dead letters, with its reason (logged once per
//! reason code per interval, not once per letter).

use std::time::{Instant, SystemTime};

use super::{Processor, ALERTS_HELD};
use crate::engine::window::{parcel_hash, prefetch_staged};
use crate::event::{decode, Event, Reject};
use crate::live::input::Which;
use crate::live::pull::Delivery;
use crate::metrics::METRICS;
use crate::nats::wire::{self, Refusal};
use crate::nats::LiveError;
use crate::partition;
use crate::time::Ts;

/// Events decoded together before the first of them is applied.
pub(super) const BATCH: usize = 32;

/// A scan or contact admitted to its partition's engine, its parcel's
/// memory hinted to the CPU.
struct Ready<'m> {
    partition: u16,
    /// When it reached the server.
    arrived: SystemTime,
    event: Event<'m>,
    hash: u64,
}

impl Processor {
    /// A run of at most [`BATCH`] messages of input `i`, in order: each
    /// skipped when this consumer gave it before, else to its engine or
    /// stages. Scans and contacts are decoded together and their parcels
    /// prefetched before any of them is applied, so the cache misses of a
    /// large window overlap (as in replay) instead of queueing one event
    /// after another. Waits on the outbox only when an event's step of the
    /// watermark fires more than [`ALERTS_HELD`] alerts.
    pub(super) async fn handle(&mut self, i: usize, run: &[Delivery]) -> Result<(), LiveError> {
        let now = Instant::now();
        let mut ready = Vec::with_capacity(run.len());
        for delivery in run {
            if !self.take(i, delivery.seq, now) {
                continue;
            }
            match self.inputs[i].which {
                Which::Scans => ready.extend(self.admit(0, delivery, now)),
                Which::Contacts => ready.extend(self.admit(1, delivery, now)),
                Which::Facts => self.fact(delivery.seq, &delivery.message),
            }
        }
        let parts = &self.parts;
        prefetch_staged(&ready, |r, stage| parts[&r.partition].engine.prefetch(stage, r.hash));
        for r in ready {
            let (p, arrived) = (r.partition, r.arrived);
            if !self.apply(r) {
                self.finish_step(p, None, arrived).await?;
            }
        }
        Ok(())
    }

    /// Whether input `i` gives the message at stream sequence `seq` for the
    /// first time (`now`: when its batch was taken).
    fn take(&mut self, i: usize, seq: u64, now: Instant) -> bool {
        let input = &mut self.inputs[i];
        if seq <= input.last_seq {
            // A redelivery of what this consumer already gave us.
            self.summary.skipped += 1;
            METRICS.redeliveries.inc();
            return false;
        }
        input.last_seq = seq;
        if !self.unsaved {
            self.unsaved = true;
            self.readiness.unsaved();
        }
        input.last_message = now;
        input.caught_up = false;
        true
    }

    /// A scan or contact (its batch taken `now`), ready for its partition's
    /// engine; or to the dead letters. Its partition's position moves past
    /// it either way.
    fn admit<'m>(&mut self, which: usize, delivery: &'m Delivery, now: Instant) -> Option<Ready<'m>> {
        let Delivery { message, seq, published: arrived } = delivery;
        let (seq, arrived) = (*seq, *arrived);
        let subject = message.subject.as_str();
        let partition = subject.split_once('.').and_then(|(_, p)| p.parse::<u16>().ok());
        let Some(p) = partition.filter(|p| self.owned.contains(*p)) else {
            let why = Refusal::Subject(subject.to_string());
            self.dead_letter(which, seq, message, why);
            return None;
        };
        let part = self.parts.get_mut(&p)?;
        if seq <= part.pos[which] {
            self.summary.skipped += 1;
            METRICS.redeliveries.inc();
            return None;
        }
        part.pos[which] = seq;
        part.last_input = now;
        part.dirty = true;
        self.since_checkpoint += 1;
        let refusal = match decode(&message.payload) {
            Err(reject) => Refusal::Contract(reject),
            Ok(event) => {
                let expected = partition::of(&event.parcel_id, self.owned.count);
                // Nothing happened after it reached the server: a scanner's clock is wrong.
                let ahead = event.at.since(Ts::from(arrived));
                if expected != p {
                    Refusal::Misrouted { subject: subject.to_string(), expected }
                } else if ahead > self.config.watermark.max_skew {
                    Refusal::Contract(Reject::Future { ahead: ahead.in_minutes() })
                } else {
                    let hash = parcel_hash(&event.parcel_id);
                    part.engine.prefetch(0, hash);
                    return Some(Ready { partition: p, arrived, event, hash });
                }
            }
        };
        self.dead_letter(which, seq, message, refusal);
        None
    }

    /// An admitted event into its engine, then the watermark moved as far as
    /// the input allows; false when that step is not over
    /// ([`Processor::finish_step`]).
    fn apply(&mut self, ready: Ready<'_>) -> bool {
        let Some(part) = self.parts.get_mut(&ready.partition) else { return true };
        self.summary.events += 1;
        METRICS.event(ready.event.kind).inc();
        part.engine.apply(&ready.event, ready.hash, &mut self.alerts);
        self.step(ready.partition, None, ready.arrived)
    }

    /// Moves partition `p`'s watermark to `to` (as far as its input allows
    /// when `None`) and takes what its engine said, until [`ALERTS_HELD`]
    /// alerts are held: false then, the step not over. `arrived`: when what
    /// moved the watermark reached the server.
    pub(super) fn step(&mut self, p: u16, to: Option<Ts>, arrived: SystemTime) -> bool {
        let Some(part) = self.parts.get_mut(&p) else { return true };
        let to = to.unwrap_or_else(|| part.engine.input_watermark());
        let done = part.engine.advance_within(to, &mut self.alerts, ALERTS_HELD);
        self.arrived.resize(self.alerts.len(), arrived);
        part.engine.take_facts(&mut self.facts);
        part.engine.take_judged(&mut self.judged, &mut self.told);
        done
    }

    /// The rest of a step [`Processor::step`] left unfinished. A step that
    /// crosses a day's deadlines fires tens of thousands of alerts at once:
    /// they go to the outbox [`ALERTS_HELD`] at a time while the step goes
    /// on, so what is held does not grow with the burst. Each event's step
    /// stays synchronous; only one left unfinished waits on the outbox.
    pub(super) async fn finish_step(&mut self, p: u16, to: Option<Ts>, arrived: SystemTime) -> Result<(), LiveError> {
        loop {
            self.publish().await?;
            if self.step(p, to, arrived) {
                return Ok(());
            }
        }
    }

    fn dead_letter(&mut self, which: usize, seq: u64, message: &async_nats::Message, why: Refusal) {
        self.summary.dead_letters += 1;
        METRICS.rejected.with_label_values(&[why.code()]).inc();
        METRICS.dead_letters.with_label_values(&[&self.inputs[which].stream]).inc();
        let seen =
            self.letters.entry(why.code()).or_insert_with(|| (0, wire::bounded(&why.reason(), wire::MAX_REASON_CHARS)));
        seen.0 += 1;
        tracing::debug!(seq, code = why.code(), "dead letter");
        let stream = &self.inputs[which].stream;
        self.outgoing.push(wire::dead_letter(&message.subject, stream, seq, message.payload.clone(), &why));
    }

    /// One line per reason code for the dead letters since the last.
    pub(super) fn log_letters(&mut self) {
        let seconds = self.letters_logged.elapsed().as_secs();
        for (code, (count, example)) in std::mem::take(&mut self.letters) {
            tracing::warn!(code, count, seconds, example = %example, "dead letters (kept in the dead-letter stream; `forewarn dlq list` shows them)");
        }
        self.letters_logged = Instant::now();
    }

    /// A branch fact or a watermark mark, for the owned branch stages.
    pub(super) fn fact(&mut self, seq: u64, message: &async_nats::Message) {
        let subject = message.subject.as_str();
        let count = self.owned.count;
        let result = if let Some(bp) = subject.strip_prefix("forewarn.facts.") {
            match (bp.parse::<u16>().ok().and_then(|bp| self.stages.get_mut(&bp)), wire::parse_facts(&message.payload))
            {
                (Some(stage), Ok(facts)) if seq > stage.pos => {
                    let late = stage.stage.late();
                    for fact in facts {
                        stage.stage.add(fact);
                    }
                    METRICS.facts_late.inc_by(stage.stage.late() - late);
                    stage.pos = seq;
                    stage.dirty = true;
                    Ok(())
                }
                (Some(_), Ok(_)) => Ok(()),
                (None, _) => Err(format!("{subject}: not a branch partition of this instance")),
                (_, Err(e)) => Err(e),
            }
        } else if let Some(p) = subject.strip_prefix("forewarn.marks.") {
            match (p.parse::<u16>().ok().filter(|&p| p < count), wire::parse_mark(&message.payload, count)) {
                (Some(p), Ok(watermark)) => {
                    for stage in self.stages.values_mut().filter(|s| seq > s.pos) {
                        let mark = &mut stage.marks[usize::from(p)];
                        *mark = (*mark).max(watermark);
                        stage.pos = seq;
                        stage.dirty = true;
                    }
                    Ok(())
                }
                (None, _) => Err(format!("{subject}: not a partition of this deployment")),
                (_, Err(e)) => Err(e),
            }
        } else {
            Err(format!("{subject}: not a facts subject"))
        };
        if let Err(reason) = result {
            self.dead_letter(2, seq, message, Refusal::BranchInput(reason));
        }
        for stage in self.stages.values_mut() {
            let watermark = stage.marks.iter().copied().min().unwrap_or(Ts::MIN);
            if watermark > Ts::MIN {
                stage.stage.advance(watermark, &mut self.alerts);
                self.arrived.resize(self.alerts.len(), SystemTime::now());
            }
        }
    }
}
