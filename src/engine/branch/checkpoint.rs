//! Saving and restoring the branch aggregates for the engine's checkpoints.

use super::*;
use crate::engine::codec::{CheckpointError, Snapshot, R, W};

fn put_times(w: &mut W, times: &VecDeque<Ts>) {
    w.u(times.len() as u64);
    times.iter().for_each(|t| w.ts(*t));
}

fn times(r: &mut R<'_>) -> Result<VecDeque<Ts>, CheckpointError> {
    (0..r.u()?).map(|_| r.ts()).collect()
}

impl BranchStage {
    /// The whole stage, compressed, for a stage that runs apart from an engine.
    pub fn checkpoint(&self) -> Vec<u8> {
        self.snapshot().compress()
    }

    /// The stage's state, to compress later ([`Snapshot::compress`]).
    pub fn snapshot(&self) -> Snapshot {
        let mut w = W::default();
        self.save(&mut w);
        w.snapshot()
    }

    /// A stage in the state [`BranchStage::checkpoint`] saved, under `set`.
    pub fn restore(bytes: &[u8], set: &RuleSet) -> Result<BranchStage, CheckpointError> {
        let body = R::open(bytes)?;
        let mut r = R { buf: &body, pos: 0 };
        let mut stage = BranchStage::new(set);
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
                    w.ts(Ts(*slot));
                    w.u(u64::from(*n));
                }
                w.opt_ts(s.first_seen);
                w.opt_ts(s.open);
                w.opt_ts(s.failing_since);
                w.u(s.seen.len() as u64);
                for (branch, at) in &s.seen {
                    w.s(branch);
                    w.ts(*at);
                }
            }
            w.u(a.open.len() as u64);
            a.open.iter().for_each(|b| w.s(b));
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
                    slots.push_back((r.ts()?.0, r.u32()?));
                }
                let (first_seen, open, failing_since) = (r.opt_ts()?, r.opt_ts()?, r.opt_ts()?);
                let mut seen = BTreeMap::new();
                for _ in 0..r.u()? {
                    seen.insert(Arc::from(r.s()?), r.ts()?);
                }
                branches.insert(name, BranchState { hits, intake, slots, first_seen, open, failing_since, seen });
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
        Ok(())
    }
}
