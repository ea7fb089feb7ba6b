//! Checkpoints: the whole engine state as compact bytes, and back.
//!
//! A checkpoint lets a processor restart where it stopped instead of
//! re-reading its stream. Each component writes its own state in the
//! codec's form (`codec.rs`, `*/checkpoint.rs`); this file puts them in order. Rules are not saved: a checkpoint restores under the current rule
//! pack, with fired rules and counters remapped by rule id and event kind.
//! Timers are not saved either: each parcel's wake-up is, and the wheel is
//! rebuilt from them (stale entries die with the old process).

use super::branch::BranchStage;
use super::codec::{corrupt, Body, CheckpointError, Remap, Snapshot, R, W};
use super::frontier::{Flow, Frontier, RING};
use super::lanes::Lanes;
use super::plan::Plan;
use super::sym::{SymMap, Symbols};
use super::timers::{Entry, Timers};
use super::window::{Tombstones, Window};
use super::{Config, Engine, Stats};
use crate::event::Kind;
use crate::rules::RuleSet;
use crate::time::Ts;

fn put_frontier(w: &mut W, f: &Frontier) {
    w.u(f.flows.len() as u64);
    for flow in &f.flows {
        w.u(flow.seen);
        w.ts(flow.frontier);
        w.ts(flow.newest);
        w.u(flow.len() as u64);
        flow.recent().for_each(|t| w.ts(t));
    }
}

fn get_flows(r: &mut R<'_>) -> Result<Vec<Flow>, CheckpointError> {
    let count = r.n(usize::from(u16::MAX) + 1, "partitions' flows")?;
    let mut flows = Vec::with_capacity(count);
    for _ in 0..count {
        let (seen, frontier, newest) = (r.u()?, r.ts()?, r.ts()?);
        let recent = (0..r.n(RING, "recent scans")?).map(|_| r.ts()).collect::<Result<Vec<_>, _>>()?;
        flows.push(Flow::restored(&recent, seen, frontier, newest));
    }
    Ok(flows)
}

fn put_stats(w: &mut W, s: &Stats) {
    for v in [
        s.events,
        s.duplicates,
        s.beyond_lateness,
        s.closed,
        s.superseded,
        s.parcels_created,
        s.evicted_done,
        s.evicted_idle,
        s.evicted_capacity,
        s.peak_parcels as u64,
        s.wakes,
        s.parked,
        s.symbol_overflow,
        s.held,
    ] {
        w.u(v);
    }
}

fn get_stats(r: &mut R<'_>) -> Result<Stats, CheckpointError> {
    Ok(Stats {
        events: r.u()?,
        duplicates: r.u()?,
        beyond_lateness: r.u()?,
        closed: r.u()?,
        superseded: r.u()?,
        parcels_created: r.u()?,
        evicted_done: r.u()?,
        evicted_idle: r.u()?,
        evicted_capacity: r.u()?,
        peak_parcels: r.n(usize::MAX, "peak")?,
        wakes: r.u()?,
        parked: r.u()?,
        symbol_overflow: r.u()?,
        held: r.u()?,
    })
}

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The whole state.
    Whole,
    /// The window's slots written since the last snapshot (whole or
    /// changes), the rest of the state whole: restored on top of the chain
    /// of snapshots since the last whole one ([`Engine::restore_sharing`]).
    Changes,
    /// The window's slots written since the snapshot before the last, the
    /// rest of the state whole: after a snapshot of changes, it takes that
    /// one's place at the end of its chain.
    Merged,
}

/// The rule ids and counter places a checkpoint was saved under.
struct SavedRules {
    rules: Vec<Option<u8>>,
    counted: Vec<(Kind, usize)>,
}

/// What a checkpoint holds before its window.
struct Head {
    rules: SavedRules,
    /// The saved symbols onto the process's table.
    syms: SymMap,
    watermark: Ts,
    flows: Vec<Flow>,
    max_contact_at: Ts,
    stats: Stats,
}

impl Head {
    fn read(r: &mut R<'_>, set: &RuleSet, syms: &Symbols) -> Result<Head, CheckpointError> {
        Ok(Head {
            rules: SavedRules::read(r, set)?,
            syms: syms.lock().read_map(r)?,
            watermark: r.ts()?,
            flows: get_flows(r)?,
            max_contact_at: r.ts()?,
            stats: get_stats(r)?,
        })
    }
}

impl SavedRules {
    fn read(r: &mut R<'_>, set: &RuleSet) -> Result<SavedRules, CheckpointError> {
        let saved_rules = r.n(r.buf.len(), "rule count")?;
        let mut rules = Vec::with_capacity(saved_rules);
        for _ in 0..saved_rules {
            rules.push(set.find(r.s()?).map(|i| i as u8));
        }
        let mut counted = Vec::new();
        for _ in 0..r.n(Kind::ALL.len(), "counted kinds")? {
            let (kind, place) = (r.kind()?, r.n(255, "counter place")?);
            counted.push((kind, place));
        }
        Ok(SavedRules { rules, counted })
    }

    /// The map from the saved rules and counters onto the current `plan`'s,
    /// with the map of the saved symbols.
    fn remap(self, plan: &Plan, syms: SymMap) -> Remap {
        let mut counts = vec![None; self.counted.iter().map(|(_, p)| p + 1).max().unwrap_or(0)];
        for (kind, place) in self.counted {
            counts[place] = plan.counted[kind as usize];
        }
        Remap { rules: self.rules, counts, syms }
    }
}

impl Engine {
    /// The engine's whole state, compressed.
    pub fn checkpoint(&self) -> Vec<u8> {
        self.snapshot().compress()
    }

    /// The engine's whole state, to compress later ([`Snapshot::compress`]).
    pub fn snapshot(&self) -> Snapshot {
        self.write(Vec::new(), Form::Whole)
    }

    /// A snapshot in `form`, written into `buffer` (its room reused); the
    /// window's changes count from it.
    pub fn snapshot_into(&mut self, buffer: Vec<u8>, form: Form) -> Snapshot {
        debug_assert!(!self.stepping, "a snapshot in the middle of a watermark step");
        let snapshot = self.write(buffer, form);
        self.window.forget_changes(form);
        snapshot
    }

    /// The window's slots written since the last snapshot, and all its
    /// slots: what a snapshot of the changes would hold, against a whole one.
    pub fn changes(&self) -> (usize, usize) {
        self.window.changes()
    }

    /// The window's slots written since the snapshot before the last:
    /// what a [`Form::Merged`] snapshot would hold.
    pub fn merged_changes(&self) -> usize {
        self.window.merged_changes()
    }

    fn write(&self, buffer: Vec<u8>, form: Form) -> Snapshot {
        let last = self.snapshot_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let mut w = W::reusing(buffer, last + last / 8);
        w.u(self.set.rules.len() as u64);
        for r in &self.set.rules {
            w.s(&r.voice.id);
        }
        let counted: Vec<(usize, u8)> =
            self.plan.counted.iter().enumerate().filter_map(|(k, place)| place.map(|p| (k, p))).collect();
        w.u(counted.len() as u64);
        for (kind, place) in counted {
            w.u(kind as u64);
            w.u(u64::from(place));
        }
        self.syms.lock().save(&mut w);
        w.ts(self.watermark);
        put_frontier(&mut w, &self.frontier);
        w.ts(self.max_contact_at);
        put_stats(&mut w, &self.stats);
        match form {
            Form::Whole => self.window.save(&mut w),
            Form::Changes | Form::Merged => self.window.save_changes(&mut w, form == Form::Merged),
        }
        self.tombstones.save(&mut w);
        self.branches.save(&mut w);
        self.lanes.save(&mut w);
        let snapshot = w.snapshot();
        if form == Form::Whole {
            self.snapshot_bytes.store(snapshot.len(), std::sync::atomic::Ordering::Relaxed);
        }
        snapshot
    }

    /// An engine in the state a [`Engine::checkpoint`] saved, under `set`
    /// and `config`, with a table of names of its own.
    pub fn restore(bytes: &[u8], set: RuleSet, config: Config) -> Result<Engine, CheckpointError> {
        let syms = Symbols::new(config.max_symbols);
        Engine::restore_sharing(&[bytes], set, config, syms)
    }

    /// An engine in the state of the last snapshot of `chain`: a whole one,
    /// then the [`Form::Changes`] taken after it, each counted from the one
    /// before (a [`Form::Merged`] one in the place of the link it replaced).
    /// Its places are named in `syms`, the table of the process's engines
    /// ([`Engine::sharing`]); each snapshot's symbols are mapped onto
    /// the table: an engine saved by another process, or beside other
    /// engines, names them in another order.
    pub fn restore_sharing(
        chain: &[&[u8]],
        set: RuleSet,
        config: Config,
        syms: Symbols,
    ) -> Result<Engine, CheckpointError> {
        let (last, before) = chain.split_last().ok_or_else(|| corrupt("no snapshot to restore"))?;
        let body = Body::open(last)?;
        let mut r = body.reader();
        let Head { rules, syms: saved, watermark, flows, max_contact_at, stats } = Head::read(&mut r, &set, &syms)?;
        let plan = Plan::new(&set, &mut syms.lock());
        let remap = rules.remap(&plan, saved);
        let mut frontier = Frontier::new(config.partitions);
        frontier
            .restore(flows)
            .map_err(|saved| corrupt(format!("{saved} partitions' flows saved, {} configured", config.partitions)))?;
        let window = match before.split_first() {
            None => Window::load(&mut r, &remap)?,
            Some((whole, links)) => {
                // The whole snapshot's window and each link's changed slots,
                // each under the rules and names it was saved with; the
                // rest of the state is the last link's.
                let body = Body::open(whole)?;
                let mut w = body.reader();
                let head = Head::read(&mut w, &set, &syms)?;
                let mut window = Window::read(&mut w, &head.rules.remap(&plan, head.syms))?;
                for link in links {
                    let body = Body::open(link)?;
                    let mut l = body.reader();
                    let head = Head::read(&mut l, &set, &syms)?;
                    window.apply_changes(&mut l, &head.rules.remap(&plan, head.syms))?;
                }
                window.apply_changes(&mut r, &remap)?;
                window.indexed()?
            }
        };
        let tombstones = Tombstones::load(&mut r, config.tombstones)?;
        let mut branches = BranchStage::new(&set, config.partitions);
        branches.load(&mut r)?;
        let mut lanes = Lanes::new(&set, config.partitions, config.lateness, config.max_lanes);
        lanes.load(&mut r, &remap.syms)?;
        r.end()?;
        let mut timers = Timers::default();
        for slot in window.live_slots() {
            let p = window.get(slot);
            if p.wake.get() != Ts::MAX {
                timers.insert(Entry { at: p.wake.get(), slot, gen: p.gen });
            }
        }
        Ok(Engine {
            snapshot_bytes: body.len().into(),
            set: std::sync::Arc::new(set),
            plan,
            config,
            window,
            timers,
            due: Vec::new(),
            tombstones,
            lanes,
            syms,
            branches,
            facts: Vec::new(),
            judged: Vec::new(),
            told: Vec::new(),
            branch_stage_inside: true,
            watermark,
            facts_after: watermark,
            stepping: false,
            frontier,
            max_contact_at,
            stats,
        })
    }
}

#[cfg(test)]
mod tests;
