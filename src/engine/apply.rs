//! Taking an event in: the parcel's fold (its state, counts and recipient),
//! parking what must wait for a deadline's judgment, the event rules it
//! fires and the episodes it ends. `wake.rs` is the other half: time.

use super::*;

impl Engine {
    /// Applies an event, then moves the watermark as the input allows.
    pub fn ingest(&mut self, event: &Event<'_>, out: &mut Vec<Alert>) -> Applied {
        let applied = self.apply(event, parcel_hash(&event.parcel_id), out);
        self.catch_up(out);
        applied
    }

    /// Moves the watermark as the input allows.
    pub fn catch_up(&mut self, out: &mut Vec<Alert>) {
        self.advance(self.input_watermark(), out);
    }

    /// Hints the CPU to fetch what applying an event for the parcel with this
    /// [`parcel_hash`] will read. A batch calls each stage for every event
    /// before the next stage, then applies: stage 0 fetches the table bucket,
    /// 1 the parcel, 2 its id bytes, each needing the previous one in cache.
    pub fn prefetch(&self, stage: u8, hash: u64) {
        self.window.prefetch(stage, hash);
    }

    /// Takes an event (its parcel's [`parcel_hash`] given) into the parcel's
    /// state and fires the rules it triggers, leaving the watermark where it
    /// is ([`Engine::ingest`] moves it too).
    pub fn apply(&mut self, ev: &Event<'_>, hash: u64, out: &mut Vec<Alert>) -> Applied {
        debug_assert!(!self.stepping, "an event in the middle of a watermark step");
        self.stats.events += 1;
        // Scans drive event time; contacts come from another system (the call
        // centre) on another stream, so they neither hold it back nor push it.
        if ev.kind.is_scan() {
            self.frontier.observe(self.partition_of(&ev.parcel_id), ev.at);
        } else {
            self.max_contact_at = self.max_contact_at.max(ev.at);
        }
        if ev.at < self.watermark {
            self.stats.beyond_lateness += 1;
        }
        let slot = match self.window.find(&ev.parcel_id, hash) {
            Some(slot) => slot,
            None => {
                // A closed parcel takes no more events. A label dated after
                // its last one is its tracking number given to a new parcel;
                // one dated before is the closed parcel's label sent again.
                let closed = self.tombstones.ended(hash);
                if closed.is_some_and(|ended| ev.kind != Kind::LabelCreated || ev.at <= ended) {
                    self.stats.closed += 1;
                    return Applied::Closed;
                }
                self.tombstones.forget(hash);
                if self.window.len() >= self.config.max_parcels {
                    self.evict_earliest();
                }
                self.stats.parcels_created += 1;
                let slot = self.window.insert(&ev.parcel_id, hash, ev.at);
                self.stats.peak_parcels = self.stats.peak_parcels.max(self.window.len());
                slot
            }
        };
        let p = self.window.get_mut(slot);
        if !p.seen.insert(event_fingerprint(&ev.event_id)) {
            self.stats.duplicates += 1;
            return Applied::Duplicate;
        }
        // After a pending deadline: held until the watermark judges that deadline,
        // so the judgment sees exactly the events up to it, whatever their arrival
        // order. After an event already held: held too, to keep time order. A
        // contact (its own stream, which may run ahead of the scans) waits for
        // the watermark, so it meets the parcel as the scans up to it left it.
        let contact_ahead = !ev.kind.is_scan() && ev.at > self.watermark;
        if p.parked() < MAX_PARKED
            && ((ev.at > p.wake.get() && self.plan.next_deadline(p, &self.lanes) < ev.at)
                || ev.at > p.first_parked_at()
                || contact_ahead)
        {
            p.park(ev);
            self.stats.parked += 1;
            if contact_ahead {
                self.stats.held += 1;
                self.arm(slot, ev.at);
            }
            return Applied::Parked;
        }
        self.apply_to(slot, ev, out);
        Applied::Applied
    }

    /// Folds an event into the parcel in `slot`, fires the rules it triggers
    /// and ends the episodes it ends.
    pub(super) fn apply_to(&mut self, slot: u32, ev: &Event<'_>, out: &mut Vec<Alert>) {
        let p = self.window.get_mut(slot);
        // A scan older than the parcel's end that comes after it is history
        // and raises nothing when it is a step the end made moot (a failed
        // attempt before the delivery: "we missed you" would now be false),
        // or when it is beyond the lateness. An incident within the lateness
        // (damage, an exception) is still news: judged as if it had come in
        // time. A contact is never history: it comes on its own stream,
        // before or after the scans it preceded, and counts as when it
        // happened either way.
        let superseded = p.is_step_after_end(ev.kind, ev.at)
            || (p.state.is_done()
                && ev.at < p.state_at.get()
                && ev.kind.is_scan()
                && (ev.kind.sets_state() || ev.at < self.watermark));
        let stays_put = p.stays_put(ev.kind, ev.at);
        let inputs = p.deadline_inputs();
        let before = self.lanes.active().then(|| (Place::of(p), p.lane, p.state_at.get()));
        let first_branch = absorb(p, ev, stays_put, &self.plan.counted, &mut self.syms.lock(), &mut self.stats);
        if let Some(judged) = judge::contact_after_telling(p, ev, &self.plan) {
            self.judged.push(judged);
        }
        // A scan only pushes the stall deadline later; an unchanged wake-up stays right.
        let moved = p.wake.get() == Ts::MAX || p.deadline_inputs() != inputs;
        if let (true, Some(b)) = (first_branch && self.branches.wants_intake(), self.syms.lock().get(p.branch).cloned())
        {
            let key = u128::from(parcel_hash(p.id()));
            self.facts.push(Fact { at: self.fact_at(ev.at), rule: None, branch: b, facility: None, key });
        }
        if let Some((from, known, from_at)) = before {
            let p = self.window.get_mut(slot);
            if Place::of(p) != from {
                p.lane = LaneRef::NONE;
            }
            if ev.kind.sets_state() && !stays_put {
                self.learn(slot, ev, (from, known), from_at);
            }
        }
        if superseded {
            self.stats.superseded += 1;
        } else {
            self.fire_event_rules(slot, ev, out);
        }
        if self.resolve_ended(slot, ev.at, out) || moved {
            self.reschedule(slot);
        }
    }

    /// Teaches the lanes the leg a state-setting scan ended (or, out of
    /// order, the leg it splits); `from` was the parcel's place, at `from_at`.
    fn learn(&mut self, slot: u32, ev: &Event<'_>, from: (Place, LaneRef), from_at: Ts) {
        let p = self.window.get_mut(slot);
        let hash = parcel_hash(p.id());
        if ev.at >= from_at {
            if from_at != Ts::MIN {
                self.lanes.observe(p, hash, from, from_at, ev.at);
            }
        } else if ev.at >= self.watermark {
            let facility = ev.facility.as_deref().and_then(|f| self.syms.lock().intern(f));
            let branch = p.branch;
            let place = |before: Place| {
                before.next(facility.unwrap_or(before.facility), ev.kind, ev.country.unwrap_or(before.country), branch)
            };
            self.lanes.insert(p, hash, from_at, ev.at, place);
        }
    }

    fn fire_event_rules(&mut self, slot: u32, ev: &Event<'_>, out: &mut Vec<Alert>) {
        for i in 0..self.plan.on_kind[ev.kind as usize].len() {
            let r = self.plan.on_kind[ev.kind as usize][i];
            let p = self.window.get_mut(slot);
            let bit = 1u64 << r;
            if !self.plan.rules[r as usize].filter.matches(p, ev.reason.as_deref()) {
                continue;
            }
            let fire = match &self.set.rules[r as usize].trigger {
                Trigger::Event { each, .. } => *each || p.fired & bit == 0,
                Trigger::Nth { kind, n } => self.plan.count(p, *kind) == *n,
                Trigger::Contacts { count, within } => {
                    p.fired & bit == 0 && p.contacts_within(*within) >= usize::from(*count)
                }
                // Judged by the scan that set the parcel's state: the leg it begins.
                Trigger::Revised { days } => {
                    let told = p.told_estimate();
                    told.on != 0 && p.state_at.get() == ev.at && {
                        let tz = zone(&self.syms.lock(), p);
                        let arrival = self.lanes.arrival(p, ev.at);
                        arrival.is_some_and(|a| expected::revision(&a, told, ev.at, tz, *days).is_some())
                    }
                }
                _ => false,
            };
            if !fire {
                continue;
            }
            p.fired |= bit;
            let trigger = Triggered {
                facts: TriggerFacts {
                    kind: ev.kind,
                    event_id: ev.event_id.to_string(),
                    reason: ev.reason.as_deref().map(str::to_string),
                },
                state: p.state_when(ev),
                facility: match ev.facility.as_deref() {
                    Some(f) => self.syms.lock().intern(f).unwrap_or(p.facility),
                    None => p.facility,
                },
            };
            self.emit(slot, r, AlertState::Firing, ev.at, &ev.event_id, Some(trigger), out);
        }
    }

    /// Ends the episodes of fired timer rules whose condition stopped holding.
    /// True when any episode ended (its rule may now have an earlier deadline).
    /// A rule that fires once keeps its fired bit: spent, it has no deadline.
    fn resolve_ended(&mut self, slot: u32, at: Ts, out: &mut Vec<Alert>) -> bool {
        let p = self.window.get(slot);
        let spent = self.plan.once_mask & !p.open_rules();
        let mut fired = p.fired & self.plan.timer_mask & !spent;
        let mut ended = false;
        while fired != 0 {
            let r = fired.trailing_zeros() as u8;
            fired &= fired - 1;
            let p = self.window.get_mut(slot);
            if self.plan.deadline(r, p, &self.lanes).is_some_and(|d| d <= self.watermark) {
                continue;
            }
            if self.plan.once_mask & (1u64 << r) == 0 {
                p.fired &= !(1u64 << r);
                ended = true;
            }
            if let Some(open) = p.take_open(r) {
                self.emit(slot, r, AlertState::Resolved, at.max(open.at), &open.at.text(), None, out);
            }
        }
        ended
    }
}

/// Folds an event into the parcel (one that [`Parcel::stays_put`] neither
/// moves it nor counts as a scan); true when it gave the parcel its first branch.
fn absorb(
    p: &mut Parcel,
    ev: &Event<'_>,
    stays_put: bool,
    counted: &[Option<u8>],
    syms: &mut Interner,
    stats: &mut Stats,
) -> bool {
    let mut intern = |s: &Option<std::borrow::Cow<'_, str>>, current: Sym| match s.as_deref() {
        None => current,
        // Most events repeat the parcel's branch and service: no hashing then.
        Some(name) if syms.name(current) == Some(name) => current,
        Some(name) => syms.intern(name).unwrap_or_else(|| {
            stats.symbol_overflow += 1;
            current
        }),
    };
    p.last_event_at = Ts48::from(p.last_event_at.get().max(ev.at));
    if let Some(i) = counted[ev.kind as usize] {
        p.counts[i as usize] = p.counts[i as usize].saturating_add(1);
    }
    if ev.kind.is_scan() && !stays_put && ev.at >= p.last_scan_at.get() {
        p.last_scan_at = Ts48::from(ev.at);
        p.facility = intern(&ev.facility, p.facility);
        if let Some(c) = ev.country {
            p.country = c;
        }
    }
    if ev.kind == Kind::Departed {
        p.sorts = p.sorts.saturating_add(1);
    }
    // An end uploaded after a later step on the way still ends the parcel:
    // the step was another parcel's barcode (see `Parcel::is_step_after_end`).
    let late_end = ev.kind.is_done() && !p.state.is_done();
    if ev.kind.sets_state() && !stays_put && (ev.at >= p.state_at.get() || late_end) {
        if ev.kind != p.state || p.state_since.get() == Ts::MIN {
            p.enter(ev.kind, ev.at);
        }
        p.state_at = Ts48::from(ev.at);
    }
    if let Some(t) = ev.promised_by {
        if ev.at >= p.promise_at.get() {
            p.promised_by = Ts48::from(t);
            p.promise_at = Ts48::from(ev.at);
        }
    }
    if let Some(t) = ev.return_by {
        p.return_by = Ts48::from(t);
    }
    let had_branch = !p.branch.is_none();
    p.branch = intern(&ev.branch, p.branch);
    p.service = intern(&ev.service, p.service);
    if ev.kind == Kind::CustomerContact {
        p.add_contact(ev.at, ev.contact.map_or(Topic::Other, |c| c.topic));
    }
    if ev.recipient.is_some() {
        take_recipient(p, ev, syms);
    }
    !had_branch && !p.branch.is_none()
}
