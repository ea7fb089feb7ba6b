//! Saving and restoring the window (its parcels in their slots, the
//! tombstones) for the engine's checkpoints.

use super::*;
use crate::engine::codec::{CheckpointError, Remap, COMPACT_SINCE, R, TOMBSTONE_ENDS_SINCE, W};
use crate::engine::Form;

impl Tombstones {
    pub(in crate::engine) fn save(&self, w: &mut W) {
        w.u(self.graves.len() as u64);
        let kept = || self.graves.iter().filter(|g| g.hash != 0);
        w.u(kept().count() as u64);
        for g in kept() {
            w.u64_fixed(g.hash);
            w.ts(g.ended);
        }
    }

    pub(in crate::engine) fn load(r: &mut R<'_>, capacity: usize) -> Result<Tombstones, CheckpointError> {
        let _saved_size = r.u()?;
        let mut t = Tombstones::new(capacity);
        for _ in 0..r.u()? {
            let hash = if r.version >= COMPACT_SINCE {
                r.u64_fixed()?
            } else {
                // Before, each with its place in the ring.
                let _place = r.u()?;
                r.u()?
            };
            let ended = if r.version >= TOMBSTONE_ENDS_SINCE { r.ts()? } else { Ts::MIN };
            // Re-placed by hash: the table may have another size now.
            t.add(hash, ended);
        }
        Ok(t)
    }
}

fn save_slot(w: &mut W, p: &Parcel) {
    if p.is_vacant() {
        w.u(0);
    } else {
        w.u(1);
        p.save(w);
    }
}

fn load_slot(r: &mut R<'_>, remap: &Remap) -> Result<Parcel, CheckpointError> {
    if r.u()? == 0 {
        Ok(Parcel::new("", 0, Ts::MIN))
    } else {
        Parcel::load(r, remap)
    }
}

/// How many slots ahead saving fetches what a parcel keeps apart (its id
/// and recipient, one allocation each, scattered over the heap): a cache
/// miss a parcel that was most of a snapshot's time live (15.5 ms a
/// partition of 62,000 parcels without, 9.7 ms with).
const AHEAD: usize = 16;

impl Window {
    /// Saves the parcels in `slots` (in order), fetching each one's text ahead.
    fn save_slots(&self, w: &mut W, slots: impl Iterator<Item = u32> + Clone, numbered: bool) {
        let mut ahead = slots.clone().skip(AHEAD);
        for slot in slots {
            if let Some(p) = ahead.next().and_then(|s| self.slots.get(s as usize)) {
                p.prefetch_apart();
            }
            if numbered {
                w.u(u64::from(slot));
            }
            save_slot(w, &self.slots[slot as usize]);
        }
    }

    fn save_head(&self, w: &mut W) {
        w.u(u64::from(self.next_gen));
        w.u(self.free.len() as u64);
        self.free.iter().for_each(|f| w.u(u64::from(*f)));
        w.u(self.slots.len() as u64);
    }

    /// Saves every slot; the changes count from here ([`Window::save_changes`]).
    pub(in crate::engine) fn save(&self, w: &mut W) {
        self.save_head(w);
        self.save_slots(w, 0..self.slots.len() as u32, false);
    }

    /// Saves the slots written since the last [`Window::forget_changes`]:
    /// on the window saved then, [`Window::apply_changes`] gives this one.
    /// Merged, the slots written since the one before: on the window saved
    /// then, they give this one (the last snapshot of changes, replaced).
    pub(in crate::engine) fn save_changes(&self, w: &mut W, merged: bool) {
        self.save_head(w);
        let none = Changed::default();
        let with = if merged { &self.last } else { &none };
        w.u(self.changed.count_with(with) as u64);
        self.save_slots(w, slots_of(self.changed.words_with(with)), true);
    }

    /// The window was saved in `form`: its changes count from now, and
    /// merged changes from the snapshot before.
    pub(in crate::engine) fn forget_changes(&mut self, form: Form) {
        match form {
            Form::Whole => self.last.clear(),
            Form::Changes => std::mem::swap(&mut self.last, &mut self.changed),
            Form::Merged => self.last.add(&self.changed),
        }
        self.changed.clear();
    }

    /// The window as saved, every parcel in its old slot (alert order depends on slots).
    pub(in crate::engine) fn load(r: &mut R<'_>, remap: &Remap) -> Result<Window, CheckpointError> {
        Window::read(r, remap)?.indexed()
    }

    /// The saved slots, not indexed yet.
    pub(in crate::engine) fn read(r: &mut R<'_>, remap: &Remap) -> Result<Window, CheckpointError> {
        let mut window = Window::default();
        window.read_head(r)?;
        for _ in 0..r.n(u32::MAX as usize, "slots")? {
            window.slots.push(load_slot(r, remap)?);
        }
        Ok(window)
    }

    fn read_head(&mut self, r: &mut R<'_>) -> Result<(), CheckpointError> {
        self.next_gen = r.u32()? as u8;
        self.free.clear();
        for _ in 0..r.u()? {
            self.free.push(r.u32()?);
        }
        Ok(())
    }

    /// The slots [`Window::save_changes`] saved, written over those of the
    /// whole window they were counted from.
    pub(in crate::engine) fn apply_changes(&mut self, r: &mut R<'_>, remap: &Remap) -> Result<(), CheckpointError> {
        self.read_head(r)?;
        let count = r.n(u32::MAX as usize, "slots")?;
        if count < self.slots.len() {
            return Err(CheckpointError::Corrupt("changes to fewer slots than their whole window".into()));
        }
        while self.slots.len() < count {
            self.slots.push(Parcel::new("", 0, Ts::MIN));
        }
        for _ in 0..r.n(count, "changed slots")? {
            let slot = r.n(count.saturating_sub(1), "changed slot")?;
            self.slots[slot] = load_slot(r, remap)?;
        }
        Ok(())
    }

    /// The read window with its index built.
    pub(in crate::engine) fn indexed(mut self) -> Result<Window, CheckpointError> {
        self.len = self.slots.iter().filter(|p| !p.is_vacant()).count();
        let size = ((self.len * 4 / 3) + 1).next_power_of_two().max(1024);
        self.table = vec![EMPTY; size];
        for slot in 0..self.slots.len() {
            if !self.slots[slot].is_vacant() {
                let hash = parcel_hash(self.slots[slot].id());
                self.place(hash >> 32, slot as u32);
            }
        }
        if self.free.iter().any(|&f| !self.slots.get(f as usize).is_some_and(Parcel::is_vacant)) {
            return Err(CheckpointError::Corrupt("a free slot holds a parcel".into()));
        }
        Ok(self)
    }
}
