//! Judging in event time: the watermark's advance, each parcel's wake-up
//! (its due deadlines judged, its parked events let in, one deadline at a
//! time), and when and how a parcel leaves the window.

use super::*;

impl Engine {
    /// Moves the watermark forward (never back) and fires every timer it
    /// passes. At each epoch boundary on the way, the lane model publishes
    /// a new version and the one before comes into force: what comes before
    /// the boundary is judged first, whatever the steps the watermark takes.
    pub fn advance(&mut self, watermark: Ts, out: &mut Vec<Alert>) {
        self.advance_within(watermark, out, usize::MAX);
    }

    /// [`Engine::advance`] in bounded pieces: stops between two batches of
    /// wake-ups (of at most `room` parcels) once `out` holds `room` alerts
    /// or more, and returns false; the next call with the same watermark
    /// goes on where it stopped. A deadline crossing can fire a day's
    /// deadlines in one step (~46,000 alerts in one engine's step at 1 M
    /// parcels); a caller that empties `out` between the calls holds a
    /// bounded number of them. Until the step ends (true) the engine takes
    /// nothing else, no event and no snapshot: a step taken in pieces fires
    /// what it would in one, in the same order, and its facts are dated
    /// after the watermark it began from (`facts_after`, which equals the
    /// watermark between steps).
    pub fn advance_within(&mut self, watermark: Ts, out: &mut Vec<Alert>, room: usize) -> bool {
        let wm = self.watermark.max(watermark);
        self.stepping = true;
        while let Some(boundary) = self.lanes.boundary_within(self.watermark, wm) {
            if boundary > self.watermark && !self.judge_until(boundary.minus(Span(1)), out, room) {
                return false;
            }
            self.lanes.publish(boundary);
        }
        if !self.judge_until(wm, out, room) {
            return false;
        }
        self.stepping = false;
        self.lanes.settle(wm);
        self.facts_after = wm;
        if self.branch_stage_inside {
            for fact in self.facts.drain(..) {
                self.branches.add(fact);
            }
            self.branches.advance(wm, out);
        }
        true
    }

    /// Sets the watermark to `wm` and wakes every parcel due by then; false
    /// when it stopped with `out` holding `room` alerts, some maybe still due.
    fn judge_until(&mut self, wm: Ts, out: &mut Vec<Alert>, room: usize) -> bool {
        self.watermark = wm;
        let mut due = std::mem::take(&mut self.due);
        // A judgment may arm a wake-up that is already due (an event it let in
        // made a new deadline): keep draining until none is.
        loop {
            self.timers.drain_due(wm, &mut due, WAKE_BATCH.min(room).max(1));
            if due.is_empty() {
                break;
            }
            // Wake-ups touch parcels all over the window: fetch a few ahead.
            for e in due.iter().take(PREFETCH_AHEAD) {
                self.window.prefetch_slot(e.slot);
            }
            for (i, &Entry { at: wake, slot, gen }) in due.iter().enumerate() {
                if let Some(ahead) = due.get(i + PREFETCH_AHEAD) {
                    self.window.prefetch_slot(ahead.slot);
                }
                let p = self.window.get_mut(slot);
                if p.is_vacant() || p.gen != gen || p.wake.get() != wake {
                    continue;
                }
                self.stats.wakes += 1;
                p.wake = Ts48::MAX;
                self.wake(slot, wm, out);
            }
            due.clear();
            if out.len() >= room {
                self.due = due;
                return false;
            }
        }
        self.due = due;
        true
    }

    /// A parcel's wake-up at watermark `wm`: judges its due deadlines and lets
    /// in its parked events, in time order: a deadline is judged on the events
    /// before it, an event applies once every deadline before it is judged
    /// (and, for a contact, once the watermark passed it).
    fn wake(&mut self, slot: u32, wm: Ts, out: &mut Vec<Alert>) {
        let mut released = false;
        let pending = loop {
            let before = self.window.get(slot).first_parked_at();
            // Each rule's deadline is computed once: fired if due, else the next wake-up.
            let mut pending = Ts::MAX;
            let state = self.window.get(slot).state as usize;
            for i in 0..self.plan.timers_in[state].len() {
                let r = self.plan.timers_in[state][i];
                let p = self.window.get_mut(slot);
                let bit = 1u64 << r;
                if p.fired & bit != 0 {
                    continue;
                }
                let Some(deadline) = self.plan.deadline(r, p, &self.lanes) else { continue };
                if deadline > wm || deadline >= before {
                    pending = pending.min(deadline);
                    continue;
                }
                p.fired |= bit;
                if self.set.rules[r as usize].voice.resolve {
                    p.open(Open { rule: r, at: deadline });
                }
                self.emit(slot, r, AlertState::Firing, deadline, &deadline.text(), None, out);
            }
            let mut progressed = false;
            loop {
                let p = self.window.get(slot);
                let at = p.first_parked_at();
                let contact_waits = at > wm && !p.first_parked_is_scan();
                // Past the parcel's departure, it is gone by then: the event dies with it.
                let next = self.plan.next_deadline(p, &self.lanes);
                let leaves = self.leaves_at(slot, next);
                let gone = leaves <= wm && leaves < at;
                if at == Ts::MAX || contact_waits || gone || next < at {
                    break;
                }
                let Some(held) = self.window.get_mut(slot).pop_parked() else { break };
                self.apply_to(slot, &held.event(), out);
                progressed = true;
            }
            if !progressed {
                break pending;
            }
            released = true;
        };
        let p = self.window.get(slot);
        // A parcel leaves once its time is up and no deadline of it is still
        // to come: a departure never drops a due alert, so what fires does
        // not depend on how far each watermark step goes.
        let done = p.state.is_done() && p.state_at.get().plus(self.config.retention) <= wm;
        let idle = p.last_event_at.get().plus(self.config.max_idle) <= wm;
        let leaving = (done || idle) && pending == Ts::MAX;
        if leaving {
            self.stats.closed += p.parked() as u64;
        }
        if leaving && done {
            self.evict(slot, Eviction::Done);
        } else if leaving {
            self.evict(slot, Eviction::Idle);
        } else if !released && p.parked() == 0 {
            // Nothing changed since the deadlines were computed above.
            self.arm(slot, self.leaves_at(slot, pending).min(pending));
        } else {
            self.reschedule(slot);
        }
    }

    /// Sets the parcel's wake-up to its earliest pending deadline (or its departure from the window).
    pub(super) fn reschedule(&mut self, slot: u32) {
        let p = self.window.get(slot);
        let deadline = self.plan.next_deadline(p, &self.lanes);
        let next = self.leaves_at(slot, deadline).min(deadline).min(p.first_parked_at());
        self.arm(slot, next);
    }

    /// When the parcel leaves the window if nothing more happens: when it
    /// has been done or idle long enough, but not before `deadline`, its
    /// next one still to come (a departure never drops a due alert).
    pub(super) fn leaves_at(&self, slot: u32, deadline: Ts) -> Ts {
        let p = self.window.get(slot);
        let departure = if p.state.is_done() {
            p.state_at.get().plus(self.config.retention)
        } else {
            p.last_event_at.get().plus(self.config.max_idle)
        };
        match deadline {
            Ts::MAX => departure,
            next => departure.max(next),
        }
    }

    /// Wakes the parcel at `next` unless it already wakes earlier.
    pub(super) fn arm(&mut self, slot: u32, next: Ts) {
        let p = self.window.get_mut(slot);
        // A later deadline keeps the earlier wake-up: it will re-evaluate and
        // come back. The timer is keyed by the instant as the parcel keeps it.
        let next = Ts48::from(next);
        if next.get() < p.wake.get() {
            p.wake = next;
            self.timers.insert(Entry { at: next.get(), slot, gen: p.gen });
        }
    }

    pub(super) fn evict(&mut self, slot: u32, why: Eviction) {
        let p = self.window.get(slot);
        let hash = parcel_hash(p.id());
        self.tombstones.add(hash, p.last_event_at.get());
        self.window.remove(slot, hash);
        match why {
            Eviction::Done => self.stats.evicted_done += 1,
            Eviction::Idle => self.stats.evicted_idle += 1,
            Eviction::Capacity => self.stats.evicted_capacity += 1,
        }
    }

    /// Makes room: the parcel whose next wake-up is earliest leaves.
    pub(super) fn evict_earliest(&mut self) {
        let window = &self.window;
        let live = |e: &Entry| {
            let p = window.get(e.slot);
            !p.is_vacant() && p.gen == e.gen && p.wake.get() == e.at
        };
        if let Some(e) = self.timers.take_earliest(live) {
            self.evict(e.slot, Eviction::Capacity);
        }
    }
}
