//! Saving and restoring a parcel for the engine's checkpoints.

use super::*;
use crate::engine::codec::{get_event, put_event, CheckpointError, Remap, COMPACT_SINCE, R, W};

impl Parcel {
    pub(in crate::engine) fn save(&self, w: &mut W) {
        w.s(self.id());
        for s in [self.name(), self.phone(), self.email()] {
            w.opt_s(s);
        }
        w.u(u64::from(self.flags));
        w.u(u64::from(self.gen));
        for s in [self.locale, self.tz, self.branch, self.facility, self.service] {
            s.save(w);
        }
        w.u(u64::from(self.country[0]) << 8 | u64::from(self.country[1]));
        w.u(self.state as u64);
        w.u(u64::from(self.sorts));
        w.u(self.fired);
        for t in [
            self.state_since.get(),
            self.state_at.get(),
            self.last_scan_at.get(),
            self.last_event_at.get(),
            self.promised_by.get(),
            self.promise_at.get(),
            self.return_by.get(),
            self.wake.get(),
        ] {
            w.ts(t);
        }
        w.u(self.counts.len() as u64);
        for c in self.counts {
            w.u(u64::from(c));
        }
        let spill = self.seen.spill.as_deref().map_or(&[][..], |s| &s[..]);
        // Fingerprints are never 0: 0 is a free inline place.
        let seen = || self.seen.inline.iter().chain(spill).filter(|fp| **fp != 0);
        w.u(seen().count() as u64);
        seen().for_each(|fp| w.u32_fixed(*fp));
        let blank = Talk::default();
        match self.talk.as_deref().or((self.told_at != Ts48::MAX).then_some(&blank)) {
            None => w.u(0),
            Some(talk) => {
                // 1 was the contact times alone, 2 without the estimate told.
                w.u(3);
                for (t, topic) in talk.times.into_iter().zip(talk.topics) {
                    w.ts(t.get());
                    w.u(topic as u64);
                }
                w.ts(self.told_at.get());
                w.u(u64::from(self.told_by));
                let Told { first, last, on, by } = talk.estimate;
                [first, last, on].into_iter().for_each(|d| w.u(u64::from(d)));
                by.into_iter().for_each(|half| w.u(half));
            }
        }
        w.u(self.opens().count() as u64);
        for o in self.opens() {
            w.u(u64::from(o.rule));
            w.ts(o.at);
        }
        let parked = self.aside.as_ref().map_or(&[][..], |a| &a.parked[..]);
        w.u(parked.len() as u64);
        parked.iter().for_each(|e| put_event(w, &e.event()));
    }

    pub(in crate::engine) fn load(r: &mut R<'_>, remap: &Remap) -> Result<Parcel, CheckpointError> {
        let id = r.s()?;
        let mut p = Parcel::new(id, 0, Ts::MIN);
        let (name, phone, email) = (r.opt_s()?, r.opt_s()?, r.opt_s()?);
        p.set_contact(name, phone, email);
        p.flags = r.u8()?;
        // Generations wrap: a wider one saved by an older version keeps its low bits.
        p.gen = r.u32()? as u8;
        p.locale = remap.syms.get(Sym::load(r)?);
        p.tz = remap.syms.get(Sym::load(r)?);
        p.branch = remap.syms.get(Sym::load(r)?);
        p.facility = remap.syms.get(Sym::load(r)?);
        p.service = remap.syms.get(Sym::load(r)?);
        let country = r.u()?;
        p.country = [(country >> 8) as u8, country as u8];
        p.state = r.kind()?;
        p.sorts = r.u8()?;
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
            *t = Ts48::from(r.ts()?);
        }
        for saved in 0..r.n(COUNTED_KINDS, "counters")? {
            let count = r.u8()?;
            if let Some(Some(place)) = remap.counts.get(saved) {
                p.counts[*place as usize] = count;
            }
        }
        if r.version >= COMPACT_SINCE {
            for _ in 0..r.n(MAX_SEEN, "fingerprints")? {
                p.seen.insert(r.u32_fixed()?);
            }
        } else {
            // Before, each a varint, and 0 ended the list.
            loop {
                match r.u32()? {
                    0 => break,
                    fp => {
                        p.seen.insert(fp);
                    }
                }
            }
        }
        let talk = r.u()?;
        if talk != 0 {
            let mut t = Talk::default();
            for (at, topic) in t.times.iter_mut().zip(t.topics.iter_mut()) {
                *at = r.ts()?.into();
                if talk >= 2 {
                    *topic = Topic::ALL[r.n(Topic::ALL.len() - 1, "topic")?];
                }
            }
            if talk >= 2 {
                p.told_at = r.ts()?.into();
                let by = r.n(255, "rule")?;
                p.told_by = remap.rules.get(by).copied().flatten().unwrap_or(NO_RULE);
            }
            if talk >= 3 {
                let mut day = || r.n(usize::from(u16::MAX), "day").map(|d| d as u16);
                let (first, last, on) = (day()?, day()?, day()?);
                t.estimate = Told { first, last, on, by: [r.u()?, r.u()?] };
            }
            // A parcel told but never contacted, with no estimate, keeps nothing more.
            p.talk = (t != Talk::default()).then(|| Box::new(t));
        }
        for _ in 0..r.n(64, "open episodes")? {
            let (rule, at) = (r.n(255, "rule")?, r.ts()?);
            if let Some(Some(rule)) = remap.rules.get(rule) {
                p.open(Open { rule: *rule, at });
            }
        }
        for _ in 0..r.n(4096, "parked events")? {
            p.park(&get_event(r)?);
        }
        Ok(p)
    }
}
