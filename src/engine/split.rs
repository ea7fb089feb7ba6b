//! The engine split by partition, as a deployment runs it, in one process:
//! an [`Engine`] per partition, each judging its parcels at its own
//! watermark, and one [`BranchStage`] counting their facts at the slowest
//! partition's. A replay runs this, so that it judges as live does, whatever
//! the split of the partitions among processes: an event is late, a lane
//! learns a leg and a deadline is judged against its own partition's flow,
//! never against a faster partition's.
//!
//! Live, the stage hears each partition's watermark when its checkpoint is
//! stored, long after the facts; here, after every step. Neither matters:
//! an engine dates a fact after the watermark its step began with, so the
//! stage never meets a fact in its past, and counts the facts alone.

use std::ops::AddAssign;

use super::*;

/// How many steps, at most, [`Split::advance`] takes its engines through
/// together, so that their alerts come out about in time order.
const STEPS: i64 = 256;

pub struct Split {
    engines: Vec<Engine>,
    stage: BranchStage,
    facts: Vec<Fact>,
    /// Each engine's watermark, side by side: the slowest is looked for
    /// here, not in sixteen engines' cache lines.
    watermarks: Vec<Ts>,
    /// The slowest partition's watermark: what the stage has counted up to.
    slowest: Ts,
    parcels: usize,
    peak_parcels: usize,
}

impl Split {
    /// One engine per partition of `config`, the window's bounds shared
    /// among them as live shares them among its engines.
    pub fn new(set: RuleSet, config: Config) -> Split {
        let n = usize::from(config.partitions.max(1));
        let share = |total: usize| total.div_ceil(n).max(1);
        let each = Config { max_parcels: share(config.max_parcels), tombstones: share(config.tombstones), ..config };
        let stage = BranchStage::new(&set, config.partitions);
        let syms = Symbols::new(config.max_symbols);
        let engines =
            (0..n).map(|_| Engine::sharing(set.clone(), each.clone(), syms.clone()).without_branch_stage()).collect();
        Split {
            engines,
            stage,
            facts: Vec::new(),
            watermarks: vec![Ts::MIN; n],
            slowest: Ts::MIN,
            parcels: 0,
            peak_parcels: 0,
        }
    }

    /// The partition of a parcel's events.
    pub fn partition_of(&self, parcel_id: &str) -> u16 {
        partition::of(parcel_id, self.engines.len() as u16)
    }

    /// [`Engine::prefetch`] in the parcel's partition.
    pub fn prefetch(&self, partition: u16, stage: u8, hash: u64) {
        self.engines[usize::from(partition)].prefetch(stage, hash);
    }

    /// [`Engine::apply`] in the event's partition (`partition`, from [`Split::partition_of`]).
    pub fn apply(&mut self, partition: u16, ev: &Event<'_>, hash: u64, out: &mut Vec<Alert>) -> Applied {
        let engine = &mut self.engines[usize::from(partition)];
        let before = engine.parcels();
        let applied = engine.apply(ev, hash, out);
        self.parcels = self.parcels + engine.parcels() - before;
        self.peak_parcels = self.peak_parcels.max(self.parcels);
        applied
    }

    /// Moves the partition's watermark as its input allows, and the stage's
    /// as the slowest partition's.
    pub fn catch_up(&mut self, partition: u16, out: &mut Vec<Alert>) {
        let engine = &mut self.engines[usize::from(partition)];
        let before = engine.parcels();
        engine.catch_up(out);
        self.parcels = self.parcels + engine.parcels() - before;
        engine.take_facts(&mut self.facts);
        let watermark = engine.watermark();
        let moved = std::mem::replace(&mut self.watermarks[usize::from(partition)], watermark) != watermark;
        if moved || !self.facts.is_empty() {
            self.count(out);
        }
    }

    /// Takes an event and moves the watermarks, as live takes one from the stream.
    pub fn ingest(&mut self, ev: &Event<'_>, out: &mut Vec<Alert>) -> Applied {
        let partition = self.partition_of(&ev.parcel_id);
        let applied = self.apply(partition, ev, parcel_hash(&ev.parcel_id), out);
        self.catch_up(partition, out);
        applied
    }

    /// Moves every partition's watermark to `to`, the engines together in
    /// steps from the slowest, so that their alerts come out about in time
    /// order.
    pub fn advance(&mut self, to: Ts, out: &mut Vec<Alert>) {
        let started = self.watermarks.iter().copied().filter(|&w| w > Ts::MIN).min().unwrap_or(to);
        let step = Span((to.0.saturating_sub(started.0) / STEPS).max(self.engines[0].config.lateness.0).max(1));
        let mut at = started;
        loop {
            at = if to.0.saturating_sub(at.0) <= step.0 { to } else { at.plus(step) };
            for (engine, watermark) in self.engines.iter_mut().zip(&mut self.watermarks) {
                engine.advance(at, out);
                engine.take_facts(&mut self.facts);
                *watermark = engine.watermark();
            }
            self.count(out);
            if at >= to {
                break;
            }
        }
        self.parcels = self.engines.iter().map(Engine::parcels).sum();
    }

    /// Counts the facts made so far, up to the slowest partition's watermark.
    fn count(&mut self, out: &mut Vec<Alert>) {
        for fact in self.facts.drain(..) {
            self.stage.add(fact);
        }
        buffer::release(&mut self.facts);
        let slowest = self.watermarks.iter().copied().min().unwrap_or(Ts::MIN);
        if slowest > self.slowest {
            self.slowest = slowest;
            self.stage.advance(slowest, out);
        }
    }

    /// How far ahead of the flow a replayed event may be dated.
    pub fn horizon(&self) -> Span {
        self.engines[0].horizon()
    }

    /// The newest scan time the partitions' flows vouch for, outliers aside.
    pub fn vouched(&self) -> Ts {
        self.engines.iter().map(Engine::vouched).max().unwrap_or(Ts::MIN)
    }

    /// The newest time seen, of scans and contacts.
    pub fn newest(&self) -> Ts {
        self.engines.iter().map(Engine::newest).max().unwrap_or(Ts::MIN)
    }

    /// The contacts judged since the last call, and the parcels told for
    /// the first time.
    pub fn take_judged(&mut self, into: &mut Vec<Judged>, told: &mut Vec<crate::holdout::Draw>) {
        for engine in &mut self.engines {
            engine.take_judged(into, told);
        }
    }

    /// The engines' counters together; the peak is the whole window's.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for engine in &self.engines {
            stats += engine.stats();
        }
        stats.peak_parcels = self.peak_parcels;
        stats
    }

    pub fn parcels(&self) -> usize {
        self.parcels
    }

    pub fn timers(&self) -> usize {
        self.engines.iter().map(Engine::timers).sum()
    }

    /// What the lane models learnt, with their lanes of every level and how many are fine.
    pub fn lane_stats(&self) -> (LaneStats, (usize, usize)) {
        let mut stats = LaneStats::default();
        let (mut lanes, mut fine) = (0, 0);
        for engine in &self.engines {
            let (s, (all, f)) = engine.lane_stats();
            stats += s;
            (lanes, fine) = (lanes + all, fine + f);
        }
        (stats, (lanes, fine))
    }
}

impl AddAssign<&Stats> for Stats {
    fn add_assign(&mut self, o: &Stats) {
        self.events += o.events;
        self.duplicates += o.duplicates;
        self.beyond_lateness += o.beyond_lateness;
        self.closed += o.closed;
        self.superseded += o.superseded;
        self.parcels_created += o.parcels_created;
        self.evicted_done += o.evicted_done;
        self.evicted_idle += o.evicted_idle;
        self.evicted_capacity += o.evicted_capacity;
        self.peak_parcels += o.peak_parcels;
        self.wakes += o.wakes;
        self.parked += o.parked;
        self.symbol_overflow += o.symbol_overflow;
        self.held += o.held;
    }
}

impl AddAssign<&LaneStats> for LaneStats {
    fn add_assign(&mut self, o: &LaneStats) {
        self.legs += o.legs;
        self.splits += o.splits;
        self.overflow += o.overflow;
        self.publications += o.publications;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::event::decode;
    use crate::simulate::{self, Network, Shape};

    fn lines(alerts: &[Alert]) -> Vec<String> {
        let mut text = Vec::new();
        alerts.iter().for_each(|a| a.write_json_line(&mut text));
        let mut lines: Vec<String> = String::from_utf8(text).unwrap().lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    /// Live's shape, as `live::processor` runs it: an engine per partition,
    /// the branch stage apart, hearing the facts as they are made but each
    /// partition's watermark only when that partition's checkpoint is
    /// stored, at moments of its own; and, as after a restart that cut its
    /// batches of facts otherwise, hearing again now and then every fact a
    /// partition made since its last mark.
    fn live_shaped(events: &[u8], set: &RuleSet, config: &Config, end: Ts) -> Vec<String> {
        let n = config.partitions;
        let syms = Symbols::new(config.max_symbols);
        let mut engines: Vec<Engine> =
            (0..n).map(|_| Engine::sharing(set.clone(), config.clone(), syms.clone()).without_branch_stage()).collect();
        let mut stage = BranchStage::new(set, n);
        let mut marks = vec![Ts::MIN; usize::from(n)];
        let mut since_mark: Vec<Vec<Fact>> = vec![Vec::new(); usize::from(n)];
        let (mut out, mut facts) = (Vec::new(), Vec::new());
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut copies = 0;
        for line in events.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let ev = decode(line).unwrap();
            let p = usize::from(partition::of(&ev.parcel_id, n));
            engines[p].ingest(&ev, &mut out);
            engines[p].take_facts(&mut facts);
            since_mark[p].extend(facts.iter().cloned());
            facts.drain(..).for_each(|f| stage.add(f));
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng.is_multiple_of(701) {
                copies += since_mark[p].len();
                since_mark[p].iter().cloned().for_each(|f| stage.add(f));
            }
            if rng.is_multiple_of(300) {
                marks[p] = engines[p].watermark();
                since_mark[p].clear();
                stage.advance(marks.iter().copied().min().unwrap(), &mut out);
            }
        }
        assert!(copies > 1000, "the case hears facts twice ({copies})");
        for engine in &mut engines {
            engine.advance(end, &mut out);
            engine.take_facts(&mut facts);
        }
        facts.drain(..).for_each(|f| stage.add(f));
        stage.advance(end, &mut out);
        assert_eq!(stage.late(), 0, "no fact reached the stage in its past");
        lines(&out)
    }

    /// A replay counts the branch episodes (and judges the parcels) exactly as
    /// a deployment whose stage hears the watermarks late: once, a fact made
    /// after a partition's watermark passed its instant was counted at
    /// whatever instant the stage had reached, and live and replay told
    /// branches of different episodes.
    #[test]
    fn a_replay_judges_as_a_deployment_whose_stage_hears_watermarks_late() {
        let set = RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap();
        let start = Ts::parse_rfc3339("2026-11-16T00:00:00Z").unwrap();
        let seed = 11;
        let mut events = Vec::new();
        simulate::write(
            &Network { parcels: 20_000, seed, start, days: 2.0, shape: Shape::default(), reaction: Default::default() },
            &mut events,
            |_| {},
        )
        .unwrap();
        let config = Config::default();
        let mut split = Split::new(set.clone(), config.clone());
        let mut out = Vec::new();
        for line in events.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            split.ingest(&decode(line).unwrap(), &mut out);
        }
        let end = split.newest();
        split.advance(end, &mut out);
        assert_eq!(split.stage.late(), 0, "no fact reached the stage in its past");
        let replayed = lines(&out);
        assert!(replayed.iter().any(|a| a.contains(r#""count":"#)), "seed {seed}: the case has branch episodes");
        let live = live_shaped(&events, &set, &config, end);
        let only_replay: Vec<&String> = replayed.iter().filter(|a| live.binary_search(a).is_err()).collect();
        let only_live: Vec<&String> = live.iter().filter(|a| replayed.binary_search(a).is_err()).collect();
        assert!(
            only_replay.is_empty() && only_live.is_empty(),
            "seed {seed}: {} alerts only in the replay, {} only live; the first: {:?}",
            only_replay.len(),
            only_live.len(),
            only_replay.first().or(only_live.first())
        );
    }
}
