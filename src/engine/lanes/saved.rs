//! Saving and restoring the lanes for the engine's checkpoints: the counts,
//! the versions in force and coming as they were published (the counts
//! moved on since), and the legs not counted yet.

use super::model::Lane;
use super::*;
use crate::engine::checkpoint::{CheckpointError, R, W};
use crate::engine::window::saved::{put_sym, sym};

impl Lanes {
    pub(in crate::engine) fn save(&self, w: &mut W) {
        w.u(u64::from(self.partitions));
        w.ts(self.published_at);
        for v in [self.stats.legs, self.stats.splits, self.stats.overflow, self.stats.publications] {
            w.u(v);
        }
        w.u(self.models.len() as u64);
        for m in &self.models {
            w.u(m.places.len() as u64);
            for (place, lane) in m.places.iter().zip(&m.lanes) {
                put_sym(w, place.facility);
                w.u(place.state as u64);
                w.u(u64::from(u16::from_le_bytes(place.country)));
                put_sym(w, place.branch);
                put_sym(w, place.service);
                let used: Vec<(usize, u32)> =
                    lane.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i, *c)).collect();
                w.u(used.len() as u64);
                for (i, c) in used {
                    w.u(i as u64);
                    w.u(u64::from(c));
                }
                for (next, count) in lane.next {
                    w.u(if next == NONE { 0 } else { u64::from(next) + 1 });
                    w.u(u64::from(count));
                }
            }
            // The versions as they were published: the counts moved on since.
            // A coming forecast equal to the one in force is written as such.
            for (version, before) in [(&m.in_force, &[][..]), (&m.coming, &m.in_force[..])] {
                w.u(version.len() as u64);
                for (i, f) in version.iter().enumerate() {
                    let shared = before.get(i).and_then(Option::as_ref);
                    match f {
                        None => w.u(0),
                        Some(f) if shared.is_some_and(|b| Arc::ptr_eq(b, f)) => w.u(2),
                        Some(f) => {
                            w.u(1);
                            w.u(f.after.0 as u64);
                            f.leg.iter().for_each(|&v| w.u(if v == NONE { 0 } else { u64::from(v) + 1 }));
                        }
                    }
                }
            }
        }
        let mut pending: Vec<(&(u64, Ts), &Leg)> = self.pending.iter().collect();
        pending.sort_unstable_by_key(|(k, _)| **k);
        w.u(pending.len() as u64);
        for ((hash, to_at), leg) in pending {
            w.u(*hash);
            w.ts(*to_at);
            w.u(u64::from(leg.partition));
            w.u(u64::from(leg.from));
            w.u(u64::from(leg.to));
            w.ts(leg.from_at);
        }
    }

    /// Restores what [`Lanes::save`] wrote; a checkpoint made with another
    /// partition count starts the model afresh (its lanes were other samples).
    pub(in crate::engine) fn load(&mut self, r: &mut R<'_>) -> Result<(), CheckpointError> {
        let partitions = r.u()?;
        self.published_at = r.ts()?;
        self.stats = LaneStats { legs: r.u()?, splits: r.u()?, overflow: r.u()?, publications: r.u()? };
        let mut models = Vec::new();
        for _ in 0..r.n(usize::from(u16::MAX) + 1, "lane models")? {
            let mut m = Model::default();
            let count = r.n(MAX_LANES, "lanes")?;
            for _ in 0..count {
                let facility = sym(r)?;
                let state = r.kind()?;
                let country =
                    u16::try_from(r.u()?).map_err(|_| CheckpointError::Corrupt("lane country".into()))?.to_le_bytes();
                let place = Place { facility, state, country, branch: sym(r)?, service: sym(r)? };
                let mut lane = Lane::default();
                for _ in 0..r.n(BUCKETS, "lane buckets")? {
                    let i = r.n(BUCKETS - 1, "lane bucket")?;
                    lane.counts[i] = r.u32()?;
                }
                lane.total = lane.counts.iter().sum();
                for e in lane.next.iter_mut() {
                    let next = r.n(count, "next lane")?;
                    *e = (if next == 0 { NONE } else { next as u32 - 1 }, r.u32()?);
                }
                m.lane(place);
                if let Some(last) = m.lanes.last_mut() {
                    *last = lane;
                }
            }
            m.in_force = read_version(r, count, &[])?;
            m.coming = read_version(r, count, &m.in_force)?;
            models.push(m);
        }
        let mut pending = HashMap::new();
        let mut queue = Vec::new();
        for _ in 0..r.u()? {
            let (hash, to_at) = (r.u()?, r.ts()?);
            let partition = u16::try_from(r.u()?).map_err(|_| CheckpointError::Corrupt("leg partition".into()))?;
            let leg = Leg { partition, from: r.u32()?, to: r.u32()?, from_at: r.ts()? };
            let known = |lane: u32| models.get(usize::from(partition)).is_some_and(|m| (lane as usize) < m.lanes.len());
            if !known(leg.from) || !known(leg.to) {
                return Err(CheckpointError::Corrupt("a leg names an unknown lane".into()));
            }
            pending.insert((hash, to_at), leg);
            queue.push((to_at, hash));
        }
        if partitions == u64::from(self.partitions) {
            self.models = models;
            self.pending = pending;
            self.queue = queue;
        }
        Ok(())
    }
}

/// A version's forecasts; `2` shares the forecast of `before`.
fn read_version(
    r: &mut R<'_>,
    lanes: usize,
    before: &[Option<Arc<Forecast>>],
) -> Result<Vec<Option<Arc<Forecast>>>, CheckpointError> {
    (0..r.n(lanes, "forecasts")?)
        .map(|i| match r.u()? {
            0 => Ok(None),
            1 => Ok(Some(Arc::new(read_forecast(r)?))),
            2 => before.get(i).cloned().ok_or_else(|| CheckpointError::Corrupt("shared forecast".into())),
            _ => Err(CheckpointError::Corrupt("forecast".into())),
        })
        .collect()
}

fn read_forecast(r: &mut R<'_>) -> Result<Forecast, CheckpointError> {
    let after = Span(i64::try_from(r.u()?).map_err(|_| CheckpointError::Corrupt("forecast".into()))?);
    let mut leg = Box::new([NONE; BUCKETS]);
    for v in leg.iter_mut() {
        *v = match r.u32()? {
            0 => NONE,
            v => v - 1,
        };
    }
    Ok(Forecast::new(leg, after))
}
