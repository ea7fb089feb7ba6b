//! The in-memory window of in-flight parcels, laid out for a million of them.
//!
//! Parcels live in a slab (chunks that never move, `slab.rs`; slots
//! reused) found through an open-addressing table of 8-byte entries (32-bit
//! hash tag + slot). The
//! parcel id and the recipient's strings share one allocation; repeated
//! strings (facility, branch, service, locale, time zone) are interned.
//! Every slot written is marked (a bit a slot) until the window is next
//! saved, so that a checkpoint can save only what changed since the last
//! one, or since the one before (the last one's slots kept aside).
//! Measured alternatives (moka: ~335 B/entry and wall-clock expiry only;
//! `HashMap<String, Parcel>`: twice the buckets of a 200-byte value) miss the
//! 400 B/parcel budget or the per-event time budget; see the README.

use xxhash_rust::xxh3::xxh3_64;

use super::parcel::Parcel;
use super::sym::prefetch;
use crate::time::Ts;
use slab::Slab;

/// Hashes a parcel id; the same function keys the table and the tombstones.
pub fn parcel_hash(parcel_id: &str) -> u64 {
    xxh3_64(parcel_id.as_bytes())
}

const EMPTY: u64 = u64::MAX;

/// How many events of a batch stage 1 of [`Window::prefetch`] runs ahead of
/// stage 2, which needs its result in cache.
const STAGE_DISTANCE: usize = 8;

/// Runs stages 1 and 2 of [`Window::prefetch`] over a batch whose stage 0
/// was hinted as it was decoded; `stage` hints one item's stage.
pub fn prefetch_staged<T>(batch: &[T], mut stage: impl FnMut(&T, u8)) {
    for i in 0..batch.len() + STAGE_DISTANCE {
        if let Some(item) = batch.get(i) {
            stage(item, 1);
        }
        if let Some(item) = i.checked_sub(STAGE_DISTANCE).and_then(|j| batch.get(j)) {
            stage(item, 2);
        }
    }
}

/// The parcels, with lookup by id in one probe of an 8-byte-entry table.
pub struct Window {
    slots: Slab,
    free: Vec<u32>,
    table: Vec<u64>,
    len: usize,
    next_gen: u8,
    changed: Changed,
    /// The slots the last snapshot of changes saved (none after a whole one).
    last: Changed,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: Slab::default(),
            free: Vec::new(),
            table: vec![EMPTY; 1024],
            len: 0,
            next_gen: 0,
            changed: Changed::default(),
            last: Changed::default(),
        }
    }
}

/// Slots, a bit each: those written since the window was last saved, what
/// a checkpoint of the window's changes holds (`checkpoint.rs`).
#[derive(Default)]
struct Changed {
    bits: Vec<u64>,
}

impl Changed {
    #[inline]
    fn mark(&mut self, slot: u32) {
        let word = slot as usize / 64;
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << (slot % 64);
    }

    /// How many slots changed (counted once a checkpoint, not per write).
    fn count(&self) -> usize {
        self.bits.iter().map(|bits| bits.count_ones() as usize).sum()
    }

    /// How many slots are in this set or `other`.
    fn count_with(&self, other: &Changed) -> usize {
        self.words_with(other).map(|bits| bits.count_ones() as usize).sum()
    }

    /// The words of this set and `other` together.
    fn words_with<'a>(&'a self, other: &'a Changed) -> impl Iterator<Item = u64> + Clone + 'a {
        let word = |bits: &Vec<u64>, i: usize| bits.get(i).copied().unwrap_or(0);
        (0..self.bits.len().max(other.bits.len())).map(move |i| word(&self.bits, i) | word(&other.bits, i))
    }

    /// Adds `other`'s slots to this set.
    fn add(&mut self, other: &Changed) {
        if self.bits.len() < other.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        self.bits.iter_mut().zip(&other.bits).for_each(|(bits, more)| *bits |= more);
    }

    fn clear(&mut self) {
        self.bits.fill(0);
    }
}

/// The slots whose bits are set in `words`, in order.
fn slots_of(words: impl Iterator<Item = u64> + Clone) -> impl Iterator<Item = u32> + Clone {
    words.enumerate().flat_map(|(word, bits)| {
        let mut rest = bits;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                word as u32 * 64 + bit
            })
        })
    })
}

impl Window {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn home(&self, hash: u64) -> usize {
        // The top bits of the hash pick the bucket; the tag holds bits 32..64.
        ((hash >> 32) as usize * self.table.len()) >> 32
    }

    /// Hints the CPU to fetch, for the parcel with this hash: the table bucket
    /// (stage 0), the parcel (stage 1, needs the bucket), its id bytes (stage
    /// 2, needs the parcel). A batch runs each stage for all its events before
    /// the next, so the cache misses of different parcels overlap.
    #[inline]
    pub fn prefetch(&self, stage: u8, hash: u64) {
        let home = self.home(hash);
        if stage == 0 {
            prefetch(&self.table[home]);
            return;
        }
        // The first entry with the right tag, if it sits at home or next to it.
        let tag = hash >> 32;
        let Some(slot) = [home, (home + 1) & (self.table.len() - 1)]
            .into_iter()
            .map(|i| self.table[i])
            .find(|&e| e != EMPTY && e >> 32 == tag)
            .map(|e| e as u32 as usize)
        else {
            return;
        };
        if stage == 1 {
            self.prefetch_slot(slot as u32);
        } else {
            prefetch(self.slots[slot].id().as_ptr());
        }
    }

    /// Hints the CPU to fetch the parcel in `slot`.
    #[inline]
    pub fn prefetch_slot(&self, slot: u32) {
        if let Some(parcel) = self.slots.get(slot as usize) {
            let base = (parcel as *const Parcel).cast::<u8>();
            for offset in (0..std::mem::size_of::<Parcel>()).step_by(64) {
                prefetch(base.wrapping_add(offset));
            }
        }
    }

    /// The slot of `parcel_id`, if it is in the window.
    pub fn find(&self, parcel_id: &str, hash: u64) -> Option<u32> {
        let tag = hash >> 32;
        let mask = self.table.len() - 1;
        let mut i = self.home(hash);
        loop {
            let e = self.table[i];
            if e == EMPTY {
                return None;
            }
            let slot = e as u32;
            if e >> 32 == tag && self.slots[slot as usize].id() == parcel_id {
                return Some(slot);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds a parcel known not to be present; returns its slot.
    pub fn insert(&mut self, parcel_id: &str, hash: u64, at: Ts) -> u32 {
        if (self.len + 1) * 4 > self.table.len() * 3 {
            self.grow();
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let parcel = Parcel::new(parcel_id, self.next_gen, at);
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = parcel;
                s
            }
            None => self.slots.push(parcel),
        };
        self.changed.mark(slot);
        self.place(hash >> 32, slot);
        self.len += 1;
        slot
    }

    fn place(&mut self, tag: u64, slot: u32) {
        let mask = self.table.len() - 1;
        let mut i = ((tag as usize) * self.table.len()) >> 32;
        while self.table[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.table[i] = tag << 32 | u64::from(slot);
    }

    fn grow(&mut self) {
        let doubled = vec![EMPTY; self.table.len() * 2];
        let old = std::mem::replace(&mut self.table, doubled);
        for e in old.into_iter().filter(|&e| e != EMPTY) {
            self.place(e >> 32, e as u32);
        }
    }

    /// Removes the parcel in `slot` (found under `hash`), freeing the slot.
    pub fn remove(&mut self, slot: u32, hash: u64) {
        let mask = self.table.len() - 1;
        let mut i = self.home(hash);
        while self.table[i] as u32 != slot || self.table[i] == EMPTY {
            i = (i + 1) & mask;
        }
        // Backward-shift deletion keeps every entry reachable from its home bucket.
        let mut hole = i;
        let mut j = (i + 1) & mask;
        while self.table[j] != EMPTY {
            let home = ((self.table[j] >> 32) as usize * self.table.len()) >> 32;
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.table[hole] = self.table[j];
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.table[hole] = EMPTY;
        self.slots[slot as usize] = Parcel::new("", 0, Ts::MIN);
        self.changed.mark(slot);
        self.free.push(slot);
        self.len -= 1;
    }

    pub fn get(&self, slot: u32) -> &Parcel {
        &self.slots[slot as usize]
    }

    pub fn get_mut(&mut self, slot: u32) -> &mut Parcel {
        self.changed.mark(slot);
        &mut self.slots[slot as usize]
    }

    /// Every live parcel, in slot order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Parcel> {
        let changed = &mut self.changed;
        self.slots.iter_mut().enumerate().filter(|(_, p)| !p.is_vacant()).map(move |(slot, p)| {
            changed.mark(slot as u32);
            p
        })
    }

    /// The slots written since the window was last saved, and all of them.
    pub fn changes(&self) -> (usize, usize) {
        (self.changed.count(), self.slots.len())
    }

    /// The slots written since the snapshot before the last one: those
    /// the last snapshot of changes saved and those written since.
    pub fn merged_changes(&self) -> usize {
        self.changed.count_with(&self.last)
    }

    /// The slots of every live parcel.
    pub fn live_slots(&self) -> Vec<u32> {
        (0..self.slots.len() as u32).filter(|&s| !self.slots[s as usize].is_vacant()).collect()
    }
}

/// Recently evicted parcels and the time of each one's last event, so a late
/// duplicate — a re-sent label too — does not bring one back as a ghost.
/// Direct-mapped and fixed in size: a newer eviction may overwrite an older
/// one (the ghost is then possible, never a wrongly ignored parcel).
pub struct Tombstones {
    graves: Vec<Grave>,
}

#[derive(Clone, Copy)]
struct Grave {
    hash: u64,
    ended: Ts,
}

const NO_GRAVE: Grave = Grave { hash: 0, ended: Ts::MIN };

impl Tombstones {
    pub fn new(capacity: usize) -> Tombstones {
        Tombstones { graves: vec![NO_GRAVE; capacity.max(1).next_power_of_two()] }
    }

    fn index(&self, hash: u64) -> usize {
        hash as usize & (self.graves.len() - 1)
    }

    /// Keeps the parcel of `hash`, whose last event was at `ended`, as closed.
    pub fn add(&mut self, hash: u64, ended: Ts) {
        let i = self.index(hash);
        self.graves[i] = Grave { hash, ended };
    }

    pub fn contains(&self, hash: u64) -> bool {
        self.ended(hash).is_some()
    }

    /// When the closed parcel of `hash` had its last event (`Ts::MIN` when
    /// a checkpoint of an older format did not say), if it is kept.
    pub fn ended(&self, hash: u64) -> Option<Ts> {
        let grave = self.graves[self.index(hash)];
        (hash != 0 && grave.hash == hash).then_some(grave.ended)
    }

    pub fn forget(&mut self, hash: u64) {
        let i = self.index(hash);
        if self.graves[i].hash == hash {
            self.graves[i] = NO_GRAVE;
        }
    }
}

pub(in crate::engine) mod checkpoint;
mod slab;

#[cfg(test)]
mod tests;
