//! One in-flight parcel: its state, recipient, dedup set, contacts and held
//! events, in three cache lines. The window keeps them; the engine's fold
//! (`apply.rs`) and the rules' plan read and change them.

use xxhash_rust::xxh3::xxh3_64;

use super::expected::Told;
use super::sym::{prefetch, Interner, Sym};
use crate::event::{Channels, Event, Kind, Topic};
use crate::time::{Ts, Ts48};
use held::Held;
use thin::ThinStr;

/// Fingerprints of the events already applied to a parcel, for dedup. The
/// first [`INLINE_SEEN`] live in the parcel itself; more spill to the heap, up
/// to [`MAX_SEEN`] (oldest forgotten first).
pub const INLINE_SEEN: usize = 10;
pub const MAX_SEEN: usize = 256;
pub use crate::rules::COUNTED_KINDS;

/// Zero marks a free inline place, so no length byte pads the struct.
#[derive(Default)]
pub struct Seen {
    inline: [u32; INLINE_SEEN],
    // A boxed Vec costs each parcel one pointer instead of three words; few parcels spill.
    #[allow(clippy::box_collection)]
    spill: Option<Box<Vec<u32>>>,
}

impl Seen {
    /// Records `fp`; false when it was already there.
    pub fn insert(&mut self, fp: u32) -> bool {
        let fp = fp.max(1);
        if self.inline.contains(&fp) || self.spill.as_ref().is_some_and(|s| s.contains(&fp)) {
            return false;
        }
        if let Some(free) = self.inline.iter_mut().find(|x| **x == 0) {
            *free = fp;
        } else {
            let spill = self.spill.get_or_insert_with(Default::default);
            if spill.len() + INLINE_SEEN >= MAX_SEEN {
                spill.remove(0);
            }
            spill.push(fp);
        }
        true
    }
}

/// What a few parcels need and most do not.
#[derive(Default)]
pub struct Aside {
    /// Episodes of resolving rules that are open.
    pub open: Vec<Open>,
    /// Events newer than the parcel's pending wake-up, held until it is judged.
    pub parked: Vec<Held>,
}

impl Parcel {
    pub fn aside(&mut self) -> &mut Aside {
        self.aside.get_or_insert_with(Default::default)
    }

    /// Takes the open episode of rule `r`, if any.
    pub fn take_open(&mut self, r: u8) -> Option<Open> {
        if r != NO_RULE {
            if let Some(i) = self.open_rule.iter().position(|&o| o == r) {
                self.open_rule[i] = NO_RULE;
                return Some(Open { rule: r, at: self.open_at[i].get() });
            }
        }
        let open = &mut self.aside.as_mut()?.open;
        let i = open.iter().position(|o| o.rule == r)?;
        let taken = open.swap_remove(i);
        self.drop_empty_aside();
        Some(taken)
    }

    /// The open episodes, those kept in the parcel first.
    pub fn opens(&self) -> impl Iterator<Item = Open> + '_ {
        let kept = self.open_rule.iter().zip(&self.open_at).filter(|(&rule, _)| rule != NO_RULE);
        kept.map(|(&rule, at)| Open { rule, at: at.get() })
            .chain(self.aside.iter().flat_map(|a| a.open.iter().copied()))
    }

    /// One bit per rule with an open episode.
    pub fn open_rules(&self) -> u64 {
        self.opens().fold(0, |m, o| m | 1u64 << o.rule)
    }

    /// Gives what the parcel keeps by rule (the rules fired, the one that
    /// told the customer, the open episodes) its rule's place in a new pack
    /// (`remap[old]`), and forgets what was of rules the pack no longer has.
    pub fn remap_rules(&mut self, remap: &[Option<u8>]) {
        let mut fired = 0u64;
        for (old, new) in remap.iter().enumerate() {
            if let (true, Some(new)) = (self.fired & (1 << old) != 0, new) {
                fired |= 1 << new;
            }
        }
        self.fired = fired;
        if self.told_by != NO_RULE {
            self.told_by = remap.get(usize::from(self.told_by)).copied().flatten().unwrap_or(NO_RULE);
        }
        for rule in self.open_rule.iter_mut().filter(|r| **r != NO_RULE) {
            *rule = remap[usize::from(*rule)].unwrap_or(NO_RULE);
        }
        if let Some(aside) = self.aside.as_mut() {
            aside.open.retain_mut(|o| match remap[usize::from(o.rule)] {
                Some(new) => {
                    o.rule = new;
                    true
                }
                None => false,
            });
        }
        self.drop_empty_aside();
    }

    /// Holds an event back; held events stay in time order (ties in arrival order).
    pub fn park(&mut self, ev: &Event<'_>) {
        let parked = &mut self.aside().parked;
        let i = parked.partition_point(|e| e.at <= ev.at);
        insert_few(parked, i, Held::new(ev));
    }

    /// Opens an episode of rule `open.rule`: in the parcel if one of its
    /// [`OPEN_KEPT`] places is free (most parcels with any have one or two
    /// open), else set aside.
    pub fn open(&mut self, open: Open) {
        if let Some(i) = self.open_rule.iter().position(|&r| r == NO_RULE) {
            (self.open_rule[i], self.open_at[i]) = (open.rule, open.at.into());
            return;
        }
        let list = &mut self.aside().open;
        insert_few(list, list.len(), open);
    }

    /// The time of the earliest held event (`Ts::MAX` if none).
    pub fn first_parked_at(&self) -> Ts {
        self.aside.as_ref().and_then(|a| a.parked.first()).map_or(Ts::MAX, |e| e.at)
    }

    pub fn first_parked_is_scan(&self) -> bool {
        self.aside.as_ref().and_then(|a| a.parked.first()).is_some_and(|e| e.kind.is_scan())
    }

    /// Takes the earliest held event.
    pub fn pop_parked(&mut self) -> Option<Held> {
        let parked = &mut self.aside.as_mut()?.parked;
        let ev = (!parked.is_empty()).then(|| parked.remove(0));
        self.drop_empty_aside();
        ev
    }

    fn drop_empty_aside(&mut self) {
        if self.aside.as_ref().is_some_and(|a| a.open.is_empty() && a.parked.is_empty()) {
            self.aside = None;
        }
    }

    pub fn parked(&self) -> usize {
        self.aside.as_ref().map_or(0, |a| a.parked.len())
    }
}

/// Inserts into a list most parcels keep one long: the first element takes
/// room for itself alone, not for the four a `Vec` starts with.
fn insert_few<T>(list: &mut Vec<T>, i: usize, item: T) {
    if list.is_empty() {
        list.reserve_exact(1);
    }
    list.insert(i, item);
}

/// No rule: no open episode kept in the parcel, no rule told the customer.
const NO_RULE: u8 = u8::MAX;

/// An episode of a resolving rule that is open, with the instant it fired at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Open {
    pub rule: u8,
    pub at: Ts,
}

/// Open episodes a parcel keeps in itself; more go to its [`Aside`].
pub const OPEN_KEPT: usize = 2;

const HAS_RECIPIENT: u8 = 0x80;
const CHANNELS_GIVEN: u8 = 0x40;
/// Bits 2 to 5 of the flags: the state before the current one (every
/// state-setting [`Kind`] is below 16).
const STATE_BEFORE_SHIFT: u8 = 2;
const STATE_BEFORE: u8 = 0x0f << STATE_BEFORE_SHIFT;

/// One in-flight parcel: everything the rules need, nothing more. Exactly
/// three cache lines, aligned to them, so a parcel costs three fetches.
#[repr(align(64))]
pub struct Parcel {
    /// `parcel_id`, then the recipient's name, phone and email, back to back.
    blob: ThinStr,
    /// End offsets in `blob` of the id, name and phone (the email ends the blob).
    ends: [u16; 3],
    /// Tells this parcel's wake-ups from those of the slot's former parcels
    /// (with the wake-up time: wrapping around is harmless: a stale wake-up
    /// taken for the parcel's own finds it at its own wake-up time).
    pub gen: u8,
    /// The `departed` scans seen (saturating): how many sorts the parcel
    /// went through, which tells the lanes a first hub from a second.
    pub sorts: u8,
    pub locale: Sym,
    pub tz: Sym,
    pub branch: Sym,
    pub facility: Sym,
    pub service: Sym,
    pub country: [u8; 2],
    /// The recipient's [`Channels`] bits, with [`HAS_RECIPIENT`] and
    /// [`CHANNELS_GIVEN`], and the state before `state` ([`STATE_BEFORE`]).
    flags: u8,
    pub state: Kind,
    /// Rules that fired and whose episode is still going on (one bit per rule index).
    pub fired: u64,
    /// The rules of open episodes and when they fired ([`NO_RULE`] when
    /// none): in the room the 6-byte instants left, so that most parcels with
    /// episodes open need no [`Aside`] (on the national shapes a third of
    /// those in flight have two open, `stalled` and `late`, at the peak).
    open_rule: [u8; OPEN_KEPT],
    open_at: [Ts48; OPEN_KEPT],
    /// When the parcel entered its current state.
    pub state_since: Ts48,
    /// When a customer-facing alert about the parcel first fired (`Ts::MAX`:
    /// none yet), and the index of its rule: in the parcel, as half of those
    /// in flight are told and most of them never call.
    told_at: Ts48,
    told_by: u8,
    /// Event time of the event that set the current state.
    pub state_at: Ts48,
    pub last_scan_at: Ts48,
    pub last_event_at: Ts48,
    pub promised_by: Ts48,
    pub promise_at: Ts48,
    pub return_by: Ts48,
    /// The key of this parcel's entry in the timer set, `Ts::MAX` when none.
    pub wake: Ts48,
    /// Events seen of the kinds `nth` rules count (saturating), by [`COUNTED_KINDS`] place.
    pub counts: [u8; COUNTED_KINDS],
    /// The lane of the parcel's place, once a leg into it was learnt.
    pub lane: LaneRef,
    pub seen: Seen,
    /// The customer's contacts and when forewarn first spoke to them; few
    /// parcels have either, so it costs a pointer.
    pub talk: Option<Box<Talk>>,
    /// Open episodes and parked events; few parcels have any, so it costs a pointer.
    pub aside: Option<Box<Aside>>,
}

impl Parcel {
    pub(super) fn new(parcel_id: &str, gen: u8, at: Ts) -> Parcel {
        let len = parcel_id.len() as u16;
        Parcel {
            blob: ThinStr::concat([parcel_id]),
            ends: [len; 3],
            gen,
            locale: Sym::NONE,
            tz: Sym::NONE,
            branch: Sym::NONE,
            facility: Sym::NONE,
            service: Sym::NONE,
            country: [0; 2],
            flags: 0,
            state: Kind::LabelCreated,
            fired: 0,
            open_rule: [NO_RULE; OPEN_KEPT],
            open_at: [Ts48::MIN; OPEN_KEPT],
            state_since: Ts48::MIN,
            told_at: Ts48::MAX,
            told_by: NO_RULE,
            state_at: Ts48::MIN,
            last_scan_at: Ts48::MIN,
            last_event_at: at.into(),
            promised_by: Ts48::MIN,
            promise_at: Ts48::MIN,
            return_by: Ts48::MIN,
            wake: Ts48::MAX,
            counts: [0; COUNTED_KINDS],
            lane: LaneRef::NONE,
            sorts: 0,
            seen: Seen::default(),
            talk: None,
            aside: None,
        }
    }

    /// Hints the CPU to fetch what the parcel keeps apart from its slot
    /// (its id and recipient, what it told, what waits aside), which a
    /// checkpoint reads next.
    pub fn prefetch_apart(&self) {
        prefetch(self.blob.as_ptr());
        if let Some(talk) = &self.talk {
            prefetch(&**talk);
        }
        if let Some(aside) = &self.aside {
            prefetch(&**aside);
        }
    }

    pub fn id(&self) -> &str {
        &self.blob[..self.ends[0] as usize]
    }

    fn part(&self, i: usize) -> Option<&str> {
        let end = self.ends.get(i).map_or(self.blob.len(), |&e| usize::from(e));
        let s = &self.blob[usize::from(self.ends[i - 1])..end];
        (!s.is_empty()).then_some(s)
    }

    pub fn name(&self) -> Option<&str> {
        self.part(1)
    }

    pub fn phone(&self) -> Option<&str> {
        self.part(2)
    }

    pub fn email(&self) -> Option<&str> {
        self.part(3)
    }

    /// The customer's channel choice, `None` when they gave none.
    pub fn channels(&self) -> Option<Channels> {
        (self.flags & CHANNELS_GIVEN != 0)
            .then_some(Channels(self.flags & !(HAS_RECIPIENT | CHANNELS_GIVEN | STATE_BEFORE)))
    }

    pub fn has_recipient(&self) -> bool {
        self.flags & HAS_RECIPIENT != 0
    }

    /// Records the customer's channel choice (`None`: they gave none).
    pub fn set_channels(&mut self, channels: Option<Channels>) {
        self.flags = (self.flags & STATE_BEFORE) | HAS_RECIPIENT | channels.map_or(0, |c| CHANNELS_GIVEN | c.0);
    }

    /// Replaces the recipient's strings; the rest of the recipient is set by the caller.
    pub fn set_contact(&mut self, name: Option<&str>, phone: Option<&str>, email: Option<&str>) {
        // Each part is capped so its end offset fits the u16 index.
        fn cap(s: Option<&str>) -> &str {
            let s = s.unwrap_or("");
            let mut end = s.len().min(4096);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        let (name, phone, email) = (cap(name), cap(phone), cap(email));
        let id = self.id();
        let (name_end, phone_end) = (id.len() + name.len(), id.len() + name.len() + phone.len());
        self.blob = ThinStr::concat([id, name, phone, email]);
        self.ends[1..].copy_from_slice(&[name_end as u16, phone_end as u16]);
        self.flags |= HAS_RECIPIENT;
    }

    /// The state the parcel was in before `state_since`.
    pub fn state_before(&self) -> Kind {
        Kind::ALL[usize::from((self.flags & STATE_BEFORE) >> STATE_BEFORE_SHIFT)]
    }

    /// Whether a state-setting event of `kind` leaves the parcel where it
    /// is, neither setting its state nor counting as a scan of it:
    /// - a label for a parcel already on its way (handed over, not at its
    ///   end): sent again or reprinted, it says who to tell and by when;
    /// - a step on the way for a parcel at its end (delivered, then "out
    ///   for delivery" or "missed you"): the barcode of another parcel, not
    ///   this one back on the road ([`Parcel::is_step_after_end`]).
    pub fn stays_put(&self, kind: Kind, at: Ts) -> bool {
        let on_its_way = self.state_since.get() != Ts::MIN && self.state != Kind::LabelCreated && !self.state.is_done();
        (kind == Kind::LabelCreated && on_its_way) || self.is_step_after_end(kind, at)
    }

    /// Whether an event of `kind` at `at` is a step on the way (not an end,
    /// not a label: a label after the end is the tracking number reused)
    /// dated after the parcel's end. Once, one such scan told a customer
    /// whose parcel was delivered that it was missed, then stalled, then
    /// late. (A step dated before the end is history: see `apply_to`.)
    pub fn is_step_after_end(&self, kind: Kind, at: Ts) -> bool {
        self.state.is_done()
            && at >= self.state_at.get()
            && kind.sets_state()
            && !kind.is_done()
            && kind != Kind::LabelCreated
    }

    /// Enters `state` at `at`, remembering the state it leaves.
    pub fn enter(&mut self, state: Kind, at: Ts) {
        self.flags = (self.flags & !STATE_BEFORE) | ((self.state as u8) << STATE_BEFORE_SHIFT);
        self.state = state;
        self.state_since = Ts48::from(at);
    }

    /// The parcel's state when `ev` happened, as the events up to it left it:
    /// the event's own when it sets one; the one before the current state for
    /// an event older than it (exact when at most one state change came in
    /// before an older event; an older one still is told the state before).
    pub fn state_when(&self, ev: &Event<'_>) -> Kind {
        if ev.kind.sets_state() && !self.stays_put(ev.kind, ev.at) {
            ev.kind
        } else if ev.at >= self.state_since.get() {
            self.state
        } else {
            self.state_before()
        }
    }

    /// Everything but the last scan time that a deadline depends on: when
    /// none of it changed, no deadline moved earlier (a later scan only
    /// pushes an absence deadline later; a prediction follows the place).
    pub fn deadline_inputs(&self) -> (Kind, Ts, Ts, Ts, Sym, Sym, Sym, [u8; 2]) {
        let p = self;
        (
            p.state,
            p.state_since.get(),
            p.promised_by.get(),
            p.return_by.get(),
            p.service,
            p.branch,
            p.facility,
            p.country,
        )
    }

    pub fn is_vacant(&self) -> bool {
        self.blob.is_empty()
    }

    /// Records a contact, keeping the four most recent in time order.
    pub fn add_contact(&mut self, at: Ts, topic: Topic) {
        let talk = self.talk();
        if at > talk.times[0].get() {
            // Insertion into the sorted four, dropping the oldest.
            let mut i = 0;
            while i < 3 && talk.times[i + 1].get() < at {
                talk.times[i] = talk.times[i + 1];
                talk.topics[i] = talk.topics[i + 1];
                i += 1;
            }
            (talk.times[i], talk.topics[i]) = (at.into(), topic);
        }
    }

    /// Contacts within `span` before the most recent one.
    pub fn contacts_within(&self, span: crate::time::Span) -> usize {
        self.talk.as_ref().map_or(0, |t| {
            let newest = t.times[3].get();
            t.times.iter().map(|c| c.get()).filter(|&c| c != Ts::MIN && c > newest.minus(span)).count()
        })
    }

    /// The recorded contacts, oldest first.
    pub fn contacts(&self) -> impl Iterator<Item = (Ts, Topic)> + '_ {
        self.talk.iter().flat_map(|t| t.times.map(Ts48::get).into_iter().zip(t.topics).filter(|&(c, _)| c != Ts::MIN))
    }

    /// When a customer-facing alert first fired, `Ts::MAX` if none has.
    pub fn told_at(&self) -> Ts {
        self.told_at.get()
    }

    /// The index of the rule whose alert spoke first ([`NO_RULE`] if none has).
    pub fn told_by(&self) -> u8 {
        self.told_by
    }

    /// Notes that rule `rule`'s customer-facing alert fired at `at`; true
    /// when it is the first to speak (only the first is noted).
    pub fn tell(&mut self, at: Ts, rule: u8) -> bool {
        let first = self.told_at == Ts48::MAX;
        if first {
            (self.told_at, self.told_by) = (at.into(), rule);
        }
        first
    }

    /// The expected arrival last told to the customer (`on` 0: none).
    pub fn told_estimate(&self) -> Told {
        self.talk.as_ref().map_or_else(Told::default, |t| t.estimate)
    }

    /// Notes the expected arrival told to the customer.
    pub fn tell_estimate(&mut self, told: Told) {
        self.talk().estimate = told;
    }

    fn talk(&mut self) -> &mut Talk {
        self.talk.get_or_insert_with(|| Box::new(Talk::default()))
    }
}

/// A parcel's conversation with its customer, for the rules that count
/// contacts, the proof that forewarn spoke first and the revised estimates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Talk {
    /// The four most recent contacts, oldest first (`Ts::MIN`: none)…
    pub times: [Ts48; 4],
    /// …and their topics (apart, so that no padding follows each).
    pub topics: [Topic; 4],
    /// The expected arrival last told, for the `revised` rules.
    pub estimate: Told,
}

impl Default for Talk {
    fn default() -> Self {
        Talk { times: [Ts48::MIN; 4], topics: [Topic::Other; 4], estimate: Told::default() }
    }
}

/// A parcel's lane, kept in the parcel so that the per-scan path does not
/// look it up: [`LaneRef::NONE`], or the lane of the parcel's place in its
/// partition's model. Not saved: a restored parcel looks its lane up again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneRef {
    partition: u16,
    lane: u16,
}

impl LaneRef {
    pub const NONE: LaneRef = LaneRef { partition: u16::MAX, lane: u16::MAX };

    pub fn new(partition: u16, lane: u16) -> LaneRef {
        LaneRef { partition, lane }
    }

    pub fn get(self) -> Option<(u16, u32)> {
        (self != LaneRef::NONE).then_some((self.partition, u32::from(self.lane)))
    }
}

/// A fingerprint of an event id for the per-parcel dedup set.
pub fn event_fingerprint(event_id: &str) -> u32 {
    let h = xxh3_64(event_id.as_bytes());
    (h ^ (h >> 32)) as u32
}

/// Copies the recipient of `event` into the parcel.
pub fn take_recipient(p: &mut Parcel, event: &Event<'_>, syms: &mut Interner) {
    if let Some(r) = &event.recipient {
        p.set_contact(r.name.as_deref(), r.phone.as_deref(), r.email.as_deref());
        p.locale = r.locale.as_deref().and_then(|l| syms.intern(l)).unwrap_or(Sym::NONE);
        p.tz = r.tz.as_deref().and_then(|t| syms.intern(t)).unwrap_or(Sym::NONE);
        p.set_channels(r.channels);
    }
}

pub(in crate::engine) mod checkpoint;
mod held;
mod thin;

#[cfg(test)]
mod tests;
