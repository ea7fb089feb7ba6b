//! `forewarn run`: one loop that owns the engines, the branch stages and the
//! consumers, so no lock is needed and the order of work is plain.
//!
//! Messages come in runs: what the input has ready, up to `DRAIN`. Per
//! message: skip what a checkpoint already covers (its stream sequence is
//! at or below the partition's position), refuse what breaks the contract
//! or came on the wrong partition (dead letter), otherwise ingest (decoded
//! and prefetched in batches, `intake.rs`). After each run of messages,
//! the alerts the engines made go to the outbox ([`Publisher`], a task of
//! its own on a connection of its own); branch facts wait, in batches, for
//! the next checkpoint. The loop runs on a thread of its own. On a timer, after enough
//! events, or when a backlog was just worked off: a checkpoint round, one
//! changed engine or stage a turn of the loop, the messages flowing between
//! turns; each object stored in the background as soon as the outbox has
//! stored what it covers, and once all are, each partition's watermark mark
//! published. Nothing is acknowledged: the
//! checkpoint's positions are where a restart resumes.
//!
//! Beside it: `intake.rs` takes what comes in (events, branch facts, dead
//! letters), `outgoing.rs` hands what the engines said to the outbox,
//! `consumers.rs` (re)opens the inputs at the processor's positions,
//! `checkpoint.rs` takes and stores the rounds, `restore.rs` starts each
//! partition from its checkpoint, `upkeep.rs` does the timer's work (idle
//! watermarks, gauges, rule reloads).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, object_store::ObjectStore};
use futures::stream::SelectAll;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use checkpoint::{committed, next_turn, Buffers, Commit, Permit};

use super::input::{next_message, Input};
use super::publisher::{PublishStats, Publisher};
use super::pull::{Delivery, PullError};
use super::{lookup, store, Readiness};
use crate::alert::Alert;
use crate::clock::Clock;
use crate::config::{std_duration, Config};
use crate::engine::{BranchStage, Engine, Fact, Judged};
use crate::event::{Kind, Reject, Topic};
use crate::holdout::Draw;
use crate::metrics::METRICS;
use crate::nats::wire::{Outgoing, Refusal};
use crate::nats::{connect, LiveError};
use crate::partition::{self, Owned};
use crate::rules::dir::RulesDir;
use crate::rules::RuleSet;
use crate::time::Ts;

/// Messages taken from one consumer before looking at the others and the timers.
const DRAIN: usize = 512;
/// Inputs this long without a message are quiet (see `worked_off`).
const QUIET: Duration = Duration::from_millis(100);
/// Alerts made in a run of messages, or in one step of a watermark, before
/// they go to the outbox, mid-run or mid-step.
const ALERTS_HELD: usize = 16_384;
/// Branch facts held before they are sent (else at the next checkpoint).
const FACTS_HELD: usize = 8192;

/// What stops the processor and what makes it reload its rules.
pub struct Controls {
    pub stop: watch::Receiver<bool>,
    pub reload: mpsc::Receiver<()>,
    /// What `/readyz` says ([`crate::api`] serves it); the processor keeps it true.
    pub readiness: Readiness,
}

/// What a run did, for the closing log line and the tests.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub events: u64,
    pub skipped: u64,
    pub dead_letters: u64,
    pub alerts: u64,
    pub checkpoints: u64,
    pub checkpoint_failures: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub published: PublishStats,
    /// The last [`ROUNDS_KEPT`] stored checkpoints: from each round's
    /// beginning to its store, and the events applied meanwhile (the
    /// stream's pace during checkpoints).
    pub rounds: std::collections::VecDeque<RoundSpan>,
}

pub const ROUNDS_KEPT: usize = 1024;

/// A checkpoint from its round's beginning to its store.
#[derive(Clone, Copy, Debug)]
pub struct RoundSpan {
    pub began: Instant,
    pub stored: Instant,
    pub events: u64,
}

/// One owned partition.
struct Part {
    engine: Engine,
    /// The last stream sequence applied, per input (scans, contacts).
    pos: [u64; 2],
    last_input: Instant,
    dirty: bool,
    /// The id of the engine's whole object its chain of changes starts
    /// from (stored, or taken in the round under way); none until one is
    /// taken.
    whole: Option<u64>,
    /// The links of changes taken after it.
    links: u32,
}

/// One owned branch partition.
struct Stage {
    stage: BranchStage,
    /// The last facts-stream sequence applied.
    pos: u64,
    /// Each source partition's last watermark mark.
    marks: Vec<Ts>,
    dirty: bool,
}

struct Processor {
    config: Config,
    owned: Owned,
    js: jetstream::Context,
    store: ObjectStore,
    publisher: Publisher,
    parts: BTreeMap<u16, Part>,
    stages: BTreeMap<u16, Stage>,
    inputs: [Input; 3],
    /// `js`'s connection, and the one (counted from the first) the inputs were opened on.
    client: async_nats::Client,
    connection: u64,
    /// The agent's lookups of parcels in the owned partitions.
    lookups: SelectAll<async_nats::Subscriber>,
    rules: RulesDir,
    clock: Clock,
    alerts: Vec<Alert>,
    /// Dead letters and watermark marks, for the outbox with the next alerts.
    outgoing: Vec<Outgoing>,
    /// When what made each alert arrived on the server: its event, or the
    /// clock for alerts of a moving watermark (end-to-end latency).
    arrived: Vec<SystemTime>,
    facts: Vec<Fact>,
    /// Contacts judged since the last publish, for the proactivity metrics,
    /// and the parcels told for the first time (the hold-out measure).
    judged: Vec<Judged>,
    told: Vec<Draw>,
    since_checkpoint: u64,
    /// The last round was begun for its count of events: a backlog is
    /// being worked off, and its tail is stored as soon as the inputs go
    /// quiet, however short (see `worked_off`).
    backlog: bool,
    last_checkpoint: Instant,
    summary: RunSummary,
    readiness: Readiness,
    /// Dead letters since the last log line, by code, with one reason each.
    letters: BTreeMap<&'static str, (u64, String)>,
    letters_logged: Instant,
    /// Whether readiness knows that messages wait for a checkpoint.
    unsaved: bool,
    /// The checkpoint rounds' buffers, reused round after round.
    buffers: Buffers,
}

/// Dead letters are logged as one line per reason code per this interval,
/// not one per letter (a flood of bad input is not a flood of log lines).
const LETTERS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Every series of the processor's closed label sets, at 0 until counted:
/// reject codes, lane levels, each input's dead letters, position and gaps,
/// the kinds of checkpoint objects,
/// event kinds, each rule's states and audiences, contact topics, the owned
/// partitions' watermarks and the inputs' lag. A family without a series
/// shows "no data" on a dashboard, not 0.
fn metrics_at_zero(config: &Config, set: &RuleSet, owned: &Owned) {
    let m = &*METRICS;
    for code in Reject::CODES.iter().chain(Refusal::CODES) {
        m.rejected.with_label_values(&[code]);
    }
    for level in ["all", "fine"] {
        m.lanes.with_label_values(&[level]);
    }
    let streams = &config.streams;
    for stream in [&streams.scans.name, &streams.contacts.name, &streams.facts.name] {
        m.dead_letters.with_label_values(&[stream]);
        m.checkpoint_position.with_label_values(&[stream]);
        m.input_gaps.with_label_values(&[stream]);
    }
    for input in [&streams.scans.name, &streams.contacts.name] {
        m.consumer_pending.with_label_values(&[input]);
    }
    for kind in store::Kind::ALL {
        m.checkpoint_objects.with_label_values(&[kind.label()]);
    }
    for kind in Kind::ALL {
        m.event(*kind);
    }
    for voice in set.rules.iter().map(|r| &r.voice).chain(set.branch_rules.iter().map(|r| &r.voice)) {
        let states: &[&str] = if voice.resolve { &["firing", "resolved"] } else { &["firing"] };
        for (state, audience) in states.iter().flat_map(|s| voice.audience.names().map(move |a| (s, a))) {
            m.alerts.with_label_values(&[voice.id.as_str(), state, audience]);
        }
    }
    for topic in Topic::ALL {
        for first in ["true", "false"] {
            m.contacts_judged.with_label_values(&[topic.as_str(), first]);
        }
    }
    for group in crate::metrics::GROUPS {
        m.parcels_told.with_label_values(&[group]);
        m.contacts_after_telling.with_label_values(&[group]);
    }
    for partition in &owned.list {
        m.watermark_delay.with_label_values(&[&partition.to_string()]);
    }
}

/// Runs until `controls.stop` says so; then checkpoints and returns.
pub async fn run(config: Config, rebuild: bool, mut controls: Controls) -> Result<RunSummary, LiveError> {
    config.validate()?;
    let owned = config.owned()?;
    let mut rules = RulesDir::new(&config.rules);
    let set = rules.load().map_err(LiveError::Rules)?;
    let clock = Clock::parse(&config.watermark.clock).map_err(LiveError::config)?;
    let readiness = controls.readiness.clone();
    readiness.set(Some("starting"));
    metrics_at_zero(&config, &set, &owned);
    let client = connect::connect(&config.nats, &format!("forewarn {}", config.instance)).await?;
    readiness.watch(client.clone());
    let lookups = lookup::subscribe(&client, &owned).await?;
    let js = connect::jetstream(client);
    connect::ensure_streams(&js, &config.streams).await?;
    // The outbox on a connection of its own: its publishes and their
    // acknowledgements do not queue behind the inputs' deliveries.
    let outbox = connect::connect(&config.nats, &format!("forewarn {} outbox", config.instance)).await?;
    let store = connect::bucket(&js, &config.checkpoint.bucket, config.streams.replicas).await?;

    let (parts, stages) = restore::state(&store, &owned, &set, config.engine(owned.list.len()), rebuild).await?;
    let inputs = restore::inputs(&config, &owned);
    tracing::info!(
        instance = %config.instance,
        partitions = %owned,
        of = owned.count,
        restored = parts.values().filter(|p| !p.dirty).count(),
        rules = set.len(),
        "forewarn running"
    );
    let mut processor = Processor {
        publisher: Publisher::start(outbox, Some(readiness.clone())),
        client: js.client(),
        connection: connect::connection(&js.client()),
        rules,
        config,
        owned,
        js,
        store,
        parts,
        stages,
        inputs,
        lookups,
        clock,
        alerts: Vec::new(),
        outgoing: Vec::new(),
        arrived: Vec::new(),
        facts: Vec::new(),
        judged: Vec::new(),
        told: Vec::new(),
        since_checkpoint: 0,
        backlog: false,
        last_checkpoint: Instant::now(),
        summary: RunSummary::default(),
        readiness: readiness.clone(),
        letters: BTreeMap::new(),
        letters_logged: Instant::now(),
        unsaved: false,
        buffers: Buffers::default(),
    };
    for i in 0..3 {
        processor.open(i, &mut controls.stop).await?;
    }
    readiness.set(None);
    // The loop on a thread of its own, the runtime's workers left to the
    // connections, the outbox and the checkpoints' compression: a task the
    // loop woke would otherwise wait in its worker's slot until it yields.
    let runtime = tokio::runtime::Handle::current();
    let (processor, result) = tokio::task::spawn_blocking(move || {
        let result = runtime.block_on(processor.serve(&mut controls));
        (processor, result)
    })
    .await
    .map_err(|e| LiveError::nats("processor thread", e))?;
    result?;
    readiness.set(Some("stopped"));
    Ok(processor.summary)
}

enum Step {
    Stop,
    Tick,
    Reload,
    Committed(Result<Commit, LiveError>),
    Turn(Permit),
    Lookup(async_nats::Message),
    Message(usize, Option<Result<Box<Delivery>, PullError>>),
}

impl Processor {
    async fn serve(&mut self, controls: &mut Controls) -> Result<(), LiveError> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut storing: Option<JoinHandle<Result<Commit, LiveError>>> = None;
        let mut round = None;
        let mut last_rules_look = Instant::now();
        let mut last_gauges = Instant::now() - GAUGES_EVERY;
        let mut batch = Vec::with_capacity(DRAIN);
        loop {
            let step = {
                let [scans, contacts, facts] = &mut self.inputs;
                tokio::select! {
                    _ = controls.stop.changed() => Step::Stop,
                    Some(()) = controls.reload.recv() => Step::Reload,
                    result = committed(&mut storing) => Step::Committed(result),
                    // A round under way takes its next object once its store task can take it.
                    permit = next_turn(&round) => Step::Turn(permit),
                    _ = tick.tick() => Step::Tick,
                    Some(request) = self.lookups.next() => Step::Lookup(request),
                    m = next_message(scans) => Step::Message(0, m.map(|r| r.map(Box::new))),
                    m = next_message(contacts) => Step::Message(1, m.map(|r| r.map(Box::new))),
                    m = next_message(facts) => Step::Message(2, m.map(|r| r.map(Box::new))),
                }
            };
            match step {
                Step::Stop => break,
                Step::Reload => self.reload(),
                Step::Committed(result) => self.commit(result).await?,
                Step::Turn(permit) => {
                    if let Some(ongoing) = round.as_mut() {
                        if self.turn(ongoing, permit).await {
                            storing = round.take().map(checkpoint::Round::end);
                        }
                    }
                }
                Step::Lookup(request) => self.lookup(request).await,
                Step::Tick => {
                    if self.reconnected() {
                        self.reopen_all(&mut controls.stop).await?;
                    }
                    if last_rules_look.elapsed() >= Duration::from_secs(2) {
                        last_rules_look = Instant::now();
                        if self.rules.changed() {
                            self.reload();
                        }
                    }
                    self.follow_clock().await?;
                    if self.letters_logged.elapsed() >= LETTERS_LOG_EVERY {
                        self.log_letters();
                    }
                    if last_gauges.elapsed() >= GAUGES_EVERY {
                        last_gauges = Instant::now();
                        self.gauges().await;
                    }
                }
                Step::Message(i, None) => {
                    tracing::warn!(stream = %self.inputs[i].stream, "consumer ended; recreating it");
                    self.open(i, &mut controls.stop).await?;
                }
                Step::Message(i, Some(Err(e))) => {
                    tracing::warn!(stream = %self.inputs[i].stream, error = %e, "consumer error; recreating it at our position");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    self.open(i, &mut controls.stop).await?;
                }
                Step::Message(_, Some(Ok(_))) if self.reconnected() => self.reopen_all(&mut controls.stop).await?,
                Step::Message(i, Some(Ok(message))) => {
                    // The run of messages ready now, taken together.
                    batch.push(*message);
                    let mut reopen = false;
                    while batch.len() < DRAIN && !self.reconnected() {
                        match self.inputs[i].messages.as_mut().and_then(|m| m.next().now_or_never()) {
                            Some(Some(Ok(message))) => batch.push(message),
                            Some(Some(Err(e))) => {
                                tracing::warn!(stream = %self.inputs[i].stream, error = %e, "consumer error; recreating it at our position");
                                reopen = true;
                                break;
                            }
                            _ => break,
                        }
                    }
                    // A burst of alerts (a deadline crossing fires a day's
                    // deadlines at once) goes out as it comes, the outbox
                    // holding at most its room of them.
                    for run in batch.chunks(intake::BATCH) {
                        self.handle(i, run).await?;
                        if self.alerts.len() >= ALERTS_HELD {
                            self.publish().await?;
                        }
                    }
                    batch.clear();
                    // What the messages made goes out once per run of messages, facts in batches.
                    self.publish().await?;
                    if self.reconnected() {
                        self.reopen_all(&mut controls.stop).await?;
                    } else if reopen {
                        self.open(i, &mut controls.stop).await?;
                    }
                }
            }
            let by_count = self.since_checkpoint >= self.config.checkpoint.events;
            let due = by_count
                || (self.last_checkpoint.elapsed() >= std_duration(self.config.checkpoint.interval) && self.changed())
                || self.worked_off();
            if due && storing.is_none() && round.is_none() {
                self.backlog = by_count;
                round = Some(self.begin_round());
            }
        }
        // Stop pulling, store what was done.
        tracing::info!("stopping: checkpointing");
        for input in &mut self.inputs {
            input.messages = None;
        }
        // A round under way ends first: what it took is no longer marked changed.
        if let Some(ongoing) = round.take() {
            storing = Some(self.finish_round(ongoing).await);
        }
        if let Some(task) = storing.take() {
            let result = task.await.unwrap_or_else(|e| Err(LiveError::nats("checkpoint task", e)));
            self.commit(result).await?;
        }
        let task = self.checkpoint_now().await;
        let result = task.await.unwrap_or_else(|e| Err(LiveError::nats("checkpoint task", e)));
        let failed = result.is_err();
        self.commit(result).await?;
        self.summary.published = self.publisher.settle().await?;
        self.log_letters();
        if failed {
            return Err(LiveError::nats(
                "final checkpoint",
                "not stored; the next start resumes from the previous one",
            ));
        }
        tracing::info!(
            events = self.summary.events,
            alerts = self.summary.alerts,
            dead_letters = self.summary.dead_letters,
            checkpoints = self.summary.checkpoints,
            "stopped"
        );
        Ok(())
    }

    /// Answers an agent's lookup, or where parcels stand, from the engine of
    /// each parcel's partition.
    async fn lookup(&self, request: async_nats::Message) {
        let Some(reply) = request.reply else { return };
        let engine = |id: &str| self.parts.get(&partition::of(id, self.owned.count)).map(|p| &p.engine);
        let answer = if request.subject.starts_with("forewarn.lookup.standing.") {
            lookup::standing(engine, &request.payload)
        } else {
            lookup::answer(engine(&String::from_utf8_lossy(&request.payload)), &request.payload)
        };
        if let Err(e) = self.js.client().publish(reply, answer.into()).await {
            tracing::debug!(error = %e, "lookup answer not sent");
        }
    }

    /// A backlog was just worked off: the inputs quiet, and many events
    /// since the last checkpoint or the tail of a run of rounds begun for
    /// their count. Its checkpoint is not left for the interval, so a
    /// restart soon after reads little again and the branch stages hear the
    /// new watermarks at once. A trickle of events checkpoints on the
    /// interval: its rounds are not begun for their count.
    fn worked_off(&self) -> bool {
        let quiet = self.inputs.iter().all(|i| i.last_message.elapsed() >= QUIET);
        worked_off(quiet, self.backlog, self.since_checkpoint, self.config.checkpoint.events)
    }

    fn changed(&self) -> bool {
        self.since_checkpoint > 0 || self.parts.values().any(|p| p.dirty) || self.stages.values().any(|s| s.dirty)
    }
}

mod checkpoint;
mod consumers;
mod intake;
mod outgoing;
mod restore;
mod upkeep;

use upkeep::GAUGES_EVERY;

/// See [`Processor::worked_off`]: `since` events since the last checkpoint,
/// whose rounds begin at `events`.
fn worked_off(quiet: bool, backlog: bool, since: u64, events: u64) -> bool {
    quiet && ((backlog && since > 0) || since >= events / 4)
}

#[cfg(test)]
mod tests {
    use super::worked_off;

    #[test]
    fn a_backlog_s_tail_is_stored_once_the_inputs_go_quiet_and_a_trickle_waits_for_the_interval() {
        let events = 250_000;
        assert!(worked_off(true, true, 1, events), "the tail after rounds begun for their count");
        assert!(!worked_off(false, true, 1, events), "not while messages still come");
        assert!(!worked_off(true, true, 0, events), "nothing new since the last round");
        assert!(!worked_off(true, false, events / 4 - 1, events), "a trickle: its rounds are the interval's");
        assert!(worked_off(true, false, events / 4, events), "a backlog no count round had begun for");
    }
}
