//! Saving and restoring the window (its parcels in their slots, the
//! tombstones) for the engine's checkpoints.

use super::*;
use crate::engine::codec::{CheckpointError, Remap, R, W};

impl Tombstones {
    pub(in crate::engine) fn save(&self, w: &mut W) {
        w.u(self.hashes.len() as u64);
        let kept: Vec<(usize, u64)> = self.hashes.iter().copied().enumerate().filter(|(_, h)| *h != 0).collect();
        w.u(kept.len() as u64);
        for (i, h) in kept {
            w.u(i as u64);
            w.u(h);
        }
    }

    pub(in crate::engine) fn load(r: &mut R<'_>, capacity: usize) -> Result<Tombstones, CheckpointError> {
        let _saved_size = r.u()?;
        let mut t = Tombstones::new(capacity);
        for _ in 0..r.u()? {
            let (_, hash) = (r.u()?, r.u()?);
            // Re-placed by hash: the table may have another size now.
            t.add(hash);
        }
        Ok(t)
    }
}

impl Window {
    pub(in crate::engine) fn save(&self, w: &mut W) {
        w.u(u64::from(self.next_gen));
        w.u(self.free.len() as u64);
        self.free.iter().for_each(|f| w.u(u64::from(*f)));
        w.u(self.slots.len() as u64);
        for p in self.slots.iter() {
            if p.is_vacant() {
                w.u(0);
            } else {
                w.u(1);
                p.save(w);
            }
        }
    }

    /// The window as saved, every parcel in its old slot (alert order depends on slots).
    pub(in crate::engine) fn load(r: &mut R<'_>, remap: &Remap) -> Result<Window, CheckpointError> {
        let next_gen = r.u32()? as u8;
        let mut free = Vec::new();
        for _ in 0..r.u()? {
            free.push(r.u32()?);
        }
        let count = r.n(u32::MAX as usize, "slots")?;
        let mut slots = Slab::default();
        for _ in 0..count {
            slots.push(if r.u()? == 0 { Parcel::new("", 0, Ts::MIN) } else { Parcel::load(r, remap)? });
        }
        let len = slots.iter().filter(|p| !p.is_vacant()).count();
        let size = ((len * 4 / 3) + 1).next_power_of_two().max(1024);
        let mut window = Window { slots, free, table: vec![EMPTY; size], len, next_gen };
        for slot in 0..window.slots.len() {
            if !window.slots[slot].is_vacant() {
                let hash = parcel_hash(window.slots[slot].id());
                window.place(hash >> 32, slot as u32);
            }
        }
        if window.free.iter().any(|&f| !window.slots.get(f as usize).is_some_and(Parcel::is_vacant)) {
            return Err(CheckpointError::Corrupt("a free slot holds a parcel".into()));
        }
        Ok(window)
    }
}
