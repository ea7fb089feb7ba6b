//! Saving and restoring the window (parcels, names, tombstones) for the engine's checkpoints.

use super::*;
use crate::engine::checkpoint::{get_event, put_event, CheckpointError, Remap, R, W};

pub(in crate::engine) fn sym(r: &mut R<'_>) -> Result<Sym, CheckpointError> {
    Ok(match r.u32()? {
        0 => Sym::NONE,
        s => Sym(s - 1),
    })
}

pub(in crate::engine) fn put_sym(w: &mut W, s: Sym) {
    w.u(if s.is_none() { 0 } else { u64::from(s.0) + 1 });
}

impl Interner {
    pub(in crate::engine) fn save(&self, w: &mut W) {
        w.u(self.names.len() as u64);
        for n in &self.names {
            w.s(n);
        }
    }

    pub(in crate::engine) fn load(r: &mut R<'_>, limit: usize) -> Result<Interner, CheckpointError> {
        let mut syms = Interner::new(limit.max(1));
        for _ in 0..r.u()? {
            let name = r.s()?;
            // Names were interned in this order, so each gets its old symbol back.
            syms.names.push(Arc::from(name));
            syms.index.insert(Arc::from(name), (syms.names.len() - 1) as u32);
        }
        Ok(syms)
    }
}

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

impl Parcel {
    fn save(&self, w: &mut W) {
        w.s(self.id());
        for s in [self.name(), self.phone(), self.email()] {
            w.opt_s(s);
        }
        w.u(u64::from(self.contact_flags));
        w.u(u64::from(self.gen));
        for s in [self.locale, self.tz, self.branch, self.facility, self.service] {
            put_sym(w, s);
        }
        w.u(u64::from(self.country[0]) << 8 | u64::from(self.country[1]));
        w.u(self.state as u64);
        w.u(self.fired);
        for t in [
            self.state_since,
            self.state_at,
            self.last_scan_at,
            self.last_event_at,
            self.promised_by,
            self.promise_at,
            self.return_by,
            self.wake,
        ] {
            w.ts(t);
        }
        w.u(self.counts.len() as u64);
        for c in self.counts {
            w.u(u64::from(c));
        }
        let spill = self.seen.spill.as_deref().map_or(&[][..], |s| &s[..]);
        // Fingerprints are never 0, so 0 ends the list.
        for fp in self.seen.inline.iter().chain(spill).filter(|fp| **fp != 0) {
            w.u(u64::from(*fp));
        }
        w.u(0);
        match &self.talk {
            None => w.u(0),
            Some(talk) => {
                // 1 was the contact times alone.
                w.u(2);
                for (t, topic) in talk.times.into_iter().zip(talk.topics) {
                    w.ts(t);
                    w.u(topic as u64);
                }
                w.ts(talk.told_at);
                w.u(u64::from(talk.told_by));
            }
        }
        let (open, parked) = self.aside.as_ref().map_or((&[][..], &[][..]), |a| (&a.open[..], &a.parked[..]));
        w.u(open.len() as u64);
        for o in open {
            w.u(u64::from(o.rule));
            w.ts(o.at);
        }
        w.u(parked.len() as u64);
        parked.iter().for_each(|e| put_event(w, e));
    }

    fn load(r: &mut R<'_>, remap: &Remap) -> Result<Parcel, CheckpointError> {
        let id = r.s()?;
        let mut p = Parcel::new(id, 0, Ts::MIN);
        let (name, phone, email) = (r.opt_s()?, r.opt_s()?, r.opt_s()?);
        p.set_contact(name, phone, email);
        p.contact_flags = r.u8()?;
        // Generations wrap: a wider one saved by an older version keeps its low bits.
        p.gen = r.u32()? as u16;
        p.locale = sym(r)?;
        p.tz = sym(r)?;
        p.branch = sym(r)?;
        p.facility = sym(r)?;
        p.service = sym(r)?;
        let country = r.u()?;
        p.country = [(country >> 8) as u8, country as u8];
        p.state = r.kind()?;
        p.fired = remap.fired(r.u()?);
        for t in [
            &mut p.state_since,
            &mut p.state_at,
            &mut p.last_scan_at,
            &mut p.last_event_at,
            &mut p.promised_by,
            &mut p.promise_at,
            &mut p.return_by,
            &mut p.wake,
        ] {
            *t = r.ts()?;
        }
        for saved in 0..r.n(COUNTED_KINDS, "counters")? {
            let count = r.u8()?;
            if let Some(Some(place)) = remap.counts.get(saved) {
                p.counts[*place as usize] = count;
            }
        }
        loop {
            match r.u32()? {
                0 => break,
                fp => {
                    p.seen.insert(fp);
                }
            }
        }
        let talk = r.u()?;
        if talk != 0 {
            let mut t = Talk::default();
            for (at, topic) in t.times.iter_mut().zip(t.topics.iter_mut()) {
                *at = r.ts()?;
                if talk >= 2 {
                    *topic = Topic::ALL[r.n(Topic::ALL.len() - 1, "topic")?];
                }
            }
            if talk >= 2 {
                t.told_at = r.ts()?;
                let by = r.n(255, "rule")?;
                t.told_by = remap.rules.get(by).copied().flatten().unwrap_or(u8::MAX);
            }
            p.talk = Some(Box::new(t));
        }
        for _ in 0..r.n(64, "open episodes")? {
            let (rule, at) = (r.n(255, "rule")?, r.ts()?);
            if let Some(Some(rule)) = remap.rules.get(rule) {
                p.aside().open.push(Open { rule: *rule, at });
            }
        }
        for _ in 0..r.n(4096, "parked events")? {
            let e = get_event(r)?;
            p.aside().parked.push(e);
        }
        Ok(p)
    }
}

impl Window {
    pub(in crate::engine) fn save(&self, w: &mut W) {
        w.u(u64::from(self.next_gen));
        w.u(self.free.len() as u64);
        self.free.iter().for_each(|f| w.u(u64::from(*f)));
        w.u(self.slots.len() as u64);
        for p in &self.slots {
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
        let next_gen = r.u32()? as u16;
        let mut free = Vec::new();
        for _ in 0..r.u()? {
            free.push(r.u32()?);
        }
        let count = r.n(u32::MAX as usize, "slots")?;
        let mut slots = Vec::with_capacity(count);
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
