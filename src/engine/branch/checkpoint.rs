//! Saving and restoring the branch aggregates for the engine's checkpoints.

use super::*;
use crate::engine::codec::{corrupt, Body, CheckpointError, Snapshot, R, W};

fn put_times(w: &mut W, times: &VecDeque<Ts>) {
    w.u(times.len() as u64);
    times.iter().for_each(|t| w.ts(*t));
}

/// A slot's or an hour's number, written as an instant is.
fn read_number(r: &mut R<'_>) -> Result<Number, CheckpointError> {
    Number::try_from(r.ts()?.0).map_err(|_| corrupt("a slot or hour number out of range"))
}

fn times(r: &mut R<'_>) -> Result<VecDeque<Ts>, CheckpointError> {
    (0..r.u()?).map(|_| r.ts()).collect()
}

fn put_usual(w: &mut W, tag: u64, usual: f64) {
    w.u(tag);
    w.u(usual.to_bits());
}

impl BranchStage {
    /// The whole stage, compressed, for a stage that runs apart from an engine.
    pub fn checkpoint(&self) -> Vec<u8> {
        self.snapshot().compress()
    }

    /// The stage's state, to compress later ([`Snapshot::compress`]).
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_into(Vec::new())
    }

    /// [`BranchStage::snapshot`] written into `buffer`, whose room is reused.
    pub fn snapshot_into(&self, buffer: Vec<u8>) -> Snapshot {
        let mut w = W::reusing(buffer, 0);
        self.save(&mut w);
        w.snapshot()
    }

    /// A stage in the state [`BranchStage::checkpoint`] saved, under `set`
    /// (its places' peers grouped by their partition among `partitions`).
    pub fn restore(bytes: &[u8], set: &RuleSet, partitions: u16) -> Result<BranchStage, CheckpointError> {
        let body = Body::open(bytes)?;
        let mut r = body.reader();
        let mut stage = BranchStage::new(set, partitions);
        stage.load(&mut r)?;
        r.end()?;
        Ok(stage)
    }

    pub(in crate::engine) fn save(&self, w: &mut W) {
        w.ts(self.next_check);
        w.ts(self.done);
        w.u(self.late);
        w.u(self.pending.len() as u64);
        for f in &self.pending {
            w.ts(f.at);
            w.opt_s(f.rule.as_deref());
            w.s(&f.branch);
            w.opt_s(f.facility.as_deref());
            w.u(f.key as u64);
            w.u((f.key >> 64) as u64);
        }
        w.u(self.aggregates.len() as u64);
        for a in &self.aggregates {
            w.s(&a.id);
            w.u(a.branches.len() as u64);
            for (name, s) in &a.branches {
                w.s(name);
                put_times(w, &s.hits);
                put_times(w, &s.intake);
                w.u(s.slots.len() as u64);
                for (slot, n) in &s.slots {
                    w.ts(Ts((*slot).into()));
                    w.u(u64::from(*n));
                }
                w.opt_ts(s.first_seen);
                w.opt_ts(s.open);
                w.opt_ts(s.failing_since);
                match s.opened_against {
                    None => w.u(0),
                    Some(Usual::Own(u)) => put_usual(w, 1, u),
                    Some(Usual::Network(u)) => put_usual(w, 2, u),
                    Some(Usual::Floor) => w.u(3),
                }
                w.u(s.seen.len() as u64);
                for (branch, at) in &s.seen {
                    w.s(branch);
                    w.ts(*at);
                }
            }
            w.u(a.open.len() as u64);
            a.open.iter().for_each(|b| w.s(b));
        }
        // Per group, volumes and hits are sums of the places': rebuilt on load.
        let mut places: Vec<_> = self.volumes.by_place.iter().collect();
        places.sort_unstable_by(|a, b| a.0.cmp(b.0));
        w.u(places.len() as u64);
        for (name, v) in places {
            w.s(name);
            w.u(v.len() as u64);
            for (hour, n) in v {
                w.ts(Ts((*hour).into()));
                w.u(u64::from(*n));
            }
        }
    }

    /// Fills the state of the branch rules that still exist; the others' is read and dropped.
    pub(in crate::engine) fn load(&mut self, r: &mut R<'_>) -> Result<(), CheckpointError> {
        self.next_check = r.ts()?;
        self.done = r.ts()?;
        self.late = r.u()?;
        for _ in 0..r.u()? {
            let at = r.ts()?;
            let rule = r.opt_s()?.map(Arc::from);
            let branch = Arc::from(r.s()?);
            let facility = r.opt_s()?.map(Arc::from);
            let key = u128::from(r.u()?) | u128::from(r.u()?) << 64;
            self.pending.insert(Fact { at, rule, branch, facility, key });
        }
        for _ in 0..r.u()? {
            let id = r.s()?;
            let mut branches = BTreeMap::new();
            for _ in 0..r.u()? {
                let name: Arc<str> = Arc::from(r.s()?);
                let (hits, intake) = (times(r)?, times(r)?);
                let mut slots = VecDeque::new();
                for _ in 0..r.u()? {
                    slots.push_back((read_number(r)?, r.u32()?));
                }
                let (first_seen, open, failing_since) = (r.opt_ts()?, r.opt_ts()?, r.opt_ts()?);
                let opened_against = match r.u()? {
                    0 => None,
                    1 => Some(Usual::Own(f64::from_bits(r.u()?))),
                    2 => Some(Usual::Network(f64::from_bits(r.u()?))),
                    3 => Some(Usual::Floor),
                    tag => return Err(CheckpointError::Corrupt(format!("usual tag {tag}"))),
                };
                let mut seen = BTreeMap::new();
                for _ in 0..r.u()? {
                    seen.insert(Arc::from(r.s()?), r.ts()?);
                }
                branches.insert(
                    name,
                    BranchState { hits, intake, slots, first_seen, open, opened_against, failing_since, seen },
                );
            }
            let mut open = Vec::new();
            for _ in 0..r.u()? {
                open.push(Arc::from(r.s()?));
            }
            if let Some(a) = self.aggregates.iter_mut().find(|a| &*a.id == id) {
                a.branches = branches;
                a.open = open;
            }
        }
        for _ in 0..r.u()? {
            let name: Arc<str> = Arc::from(r.s()?);
            let mut v = Volume::new();
            for _ in 0..r.u()? {
                v.push_back((read_number(r)?, r.u32()?));
            }
            self.volumes.by_place.insert(name, v);
        }
        self.rebuild_groups();
        Ok(())
    }

    /// The per-group sums of what the places hold: volumes, and the hits of
    /// the rules that cold-start.
    fn rebuild_groups(&mut self) {
        let volumes = &mut self.volumes;
        volumes.by_group.clear();
        for (name, v) in &volumes.by_place {
            let group = partition::of(name, volumes.groups);
            let sum = volumes.by_group.entry(group).or_default();
            for &(hour, n) in v {
                add_hour(sum, hour, n);
            }
        }
        for a in self.aggregates.iter_mut().filter(|a| cold_starts(&a.rule)) {
            a.group_hits.clear();
            for (name, s) in &a.branches {
                a.group_hits.entry(volumes.group(name)).or_default().extend(&s.hits);
            }
            for q in a.group_hits.values_mut() {
                q.make_contiguous().sort_unstable();
            }
        }
    }
}
