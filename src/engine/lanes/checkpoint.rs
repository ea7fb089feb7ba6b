//! Saving and restoring the lanes for the engine's checkpoints: the counts,
//! the versions in force and coming as they were published (the counts
//! moved on since), and the legs not counted yet.

use std::sync::Arc;

use super::model::{Lane, Versions, BANDS, NO_QUANTILE};
use super::spread::Spread;
use super::*;
use crate::engine::codec::{CheckpointError, R, W};
use crate::engine::sym::SymMap;

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
                place.facility.save(w);
                w.u(place.state as u64);
                w.u(u64::from(u16::from_le_bytes(place.country)));
                place.service.save(w);
                w.u(u64::from(place.here));
                w.u(u64::from(place.sorts));
                let used: Vec<(usize, u32)> =
                    lane.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i, *c)).collect();
                w.u(used.len() as u64);
                for (i, c) in used {
                    w.u(i as u64);
                    w.u(u64::from(c));
                }
                for ((next, count), bands) in lane.next.iter().zip(&lane.bands) {
                    w.u(if *next == NONE { 0 } else { u64::from(*next) + 1 });
                    w.u(u64::from(*count));
                    bands.iter().for_each(|&c| w.u(u64::from(c)));
                }
            }
            // The versions as they were published: the counts moved on since.
            // A coming forecast equal to the one in force is written as such.
            for coming in [false, true] {
                w.u(m.versions.len() as u64);
                for v in &m.versions {
                    let (f, shared) =
                        if coming { (v.coming.as_ref(), v.in_force.as_ref()) } else { (v.in_force.as_ref(), None) };
                    match f {
                        None => w.u(0),
                        Some(f) if shared.is_some_and(|b| b.same(f)) => w.u(2),
                        Some(f) => {
                            w.u(1);
                            w.u(f.after.0 as u64);
                            f.leg.iter().for_each(|&v| w.u(if v == NO_QUANTILE { 0 } else { u64::from(v) + 1 }));
                            save_spread(w, f.spread.as_deref());
                        }
                    }
                }
            }
        }
        let mut pending: Vec<&Pending> = self.pending.iter().collect();
        pending.sort_unstable_by_key(|p| (p.hash, p.to_at));
        w.u(pending.len() as u64);
        for &Pending { hash, to_at, leg } in pending {
            w.u(hash);
            w.ts(to_at);
            w.u(u64::from(leg.partition));
            w.u(u64::from(leg.from));
            w.u(u64::from(leg.to));
            w.ts(leg.from_at);
        }
    }

    /// Restores what [`Lanes::save`] wrote; a checkpoint made with another
    /// partition count starts the model afresh (its lanes were other samples).
    pub(in crate::engine) fn load(&mut self, r: &mut R<'_>, syms: &SymMap) -> Result<(), CheckpointError> {
        let partitions = r.n(usize::from(u16::MAX), "lane partitions")? as u16;
        self.published_at = r.ts()?;
        self.stats = LaneStats { legs: r.u()?, splits: r.u()?, overflow: r.u()?, publications: r.u()? };
        let mut models = Vec::new();
        for _ in 0..r.n(usize::from(partitions), "lane models")? {
            let mut m = Model::default();
            let count = r.n(MAX_LANES, "lanes")?;
            for i in 0..count {
                let facility = syms.get(Sym::load(r)?);
                let state = r.kind()?;
                let country =
                    u16::try_from(r.u()?).map_err(|_| CheckpointError::Corrupt("lane country".into()))?.to_le_bytes();
                let service = syms.get(Sym::load(r)?);
                let here = r.n(1, "lane here")? == 1;
                let sorts = r.n(usize::from(MAX_SORTS), "lane sorts")? as u8;
                let place = Place { facility, state, country, service, here, sorts };
                let mut lane = Lane::default();
                for _ in 0..r.n(BUCKETS, "lane buckets")? {
                    let i = r.n(BUCKETS - 1, "lane bucket")?;
                    lane.counts[i] = r.u32()?;
                }
                lane.total = lane.counts.iter().sum();
                for (e, bands) in lane.next.iter_mut().zip(lane.bands.iter_mut()) {
                    let next = r.n(count, "next lane")?;
                    *e = (if next == 0 { NONE } else { next as u32 - 1 }, r.u32()?);
                    for c in bands.iter_mut() {
                        *c = r.u32()?;
                    }
                }
                // Saved in the order they were made, each class and network
                // lane before the lanes backing off to it; every saved fine
                // lane is kept, whatever the bound configured now.
                if m.lane(place, usize::MAX) != Some(i as u32) {
                    return Err(CheckpointError::Corrupt("lanes out of order".into()));
                }
                m.lanes[i] = lane;
            }
            let in_force = read_version(r, count, &[])?;
            let coming = read_version(r, count, &in_force)?;
            let at = |version: &[Option<Forecast>], i: usize| version.get(i).cloned().flatten();
            m.set_versions(
                (0..in_force.len().max(coming.len()))
                    .map(|i| Versions { in_force: at(&in_force, i), coming: at(&coming, i) })
                    .collect(),
            );
            models.push(m);
        }
        let mut pending = Legs::default();
        for _ in 0..r.u()? {
            let (hash, to_at) = (r.u()?, r.ts()?);
            let partition = u16::try_from(r.u()?).map_err(|_| CheckpointError::Corrupt("leg partition".into()))?;
            let leg = Leg { partition, from: r.u32()?, to: r.u32()?, from_at: r.ts()? };
            let known = |lane: u32| models.get(usize::from(partition)).is_some_and(|m| (lane as usize) < m.lanes.len());
            if !known(leg.from) || !known(leg.to) {
                return Err(CheckpointError::Corrupt("a leg names an unknown lane".into()));
            }
            pending.push(Pending { to_at, hash, leg });
        }
        if partitions == self.partitions {
            self.models = models;
            self.pending = pending;
        }
        Ok(())
    }
}

/// A version's forecasts; `2` shares the forecast of `before`.
fn read_version(
    r: &mut R<'_>,
    lanes: usize,
    before: &[Option<Forecast>],
) -> Result<Vec<Option<Forecast>>, CheckpointError> {
    (0..r.n(lanes, "forecasts")?)
        .map(|i| match r.u()? {
            0 => Ok(None),
            1 => Ok(Some(read_forecast(r)?)),
            2 => before.get(i).cloned().ok_or_else(|| CheckpointError::Corrupt("shared forecast".into())),
            _ => Err(CheckpointError::Corrupt("forecast".into())),
        })
        .collect()
}

fn read_forecast(r: &mut R<'_>) -> Result<Forecast, CheckpointError> {
    let after = Span(i64::try_from(r.u()?).map_err(|_| CheckpointError::Corrupt("forecast".into()))?);
    let mut leg = [NO_QUANTILE; BUCKETS];
    for v in leg.iter_mut() {
        *v = match r.u()? {
            0 => NO_QUANTILE,
            v => u16::try_from(v - 1)
                .ok()
                .filter(|&m| m != NO_QUANTILE)
                .ok_or_else(|| CheckpointError::Corrupt("forecast minutes".into()))?,
        };
    }
    Ok(Forecast::new(leg, after, read_spread(r)?))
}

fn save_spread(w: &mut W, spread: Option<&Spread>) {
    let Some(s) = spread else { return w.u(0) };
    w.u(1);
    w.u(u64::from(s.thin_from));
    s.leg.iter().for_each(|&c| w.u(u64::from(c)));
    w.u(s.next.len() as u64);
    for (time, bands) in &s.next {
        time.iter().for_each(|&t| w.u(u64::from(t)));
        bands.iter().for_each(|&c| w.u(u64::from(c)));
    }
}

fn read_spread(r: &mut R<'_>) -> Result<Option<Spread>, CheckpointError> {
    if r.n(1, "spread")? == 0 {
        return Ok(None);
    }
    let thin_from = r.n(BUCKETS, "spread tail")? as u8;
    let mut leg = [0u32; BUCKETS];
    for c in leg.iter_mut() {
        *c = r.u32()?;
    }
    let mut next = Vec::new();
    for _ in 0..r.n(NEXT, "spread places")? {
        let mut time = [0u16; BUCKETS];
        for t in time.iter_mut() {
            *t = u16::try_from(r.u()?).map_err(|_| CheckpointError::Corrupt("spread share".into()))?;
        }
        let mut bands = [0u32; BANDS];
        for c in bands.iter_mut() {
            *c = r.u32()?;
        }
        next.push((Arc::new(time), bands));
    }
    Ok(Some(Spread { leg, thin_from, next, fresh: Default::default() }))
}
