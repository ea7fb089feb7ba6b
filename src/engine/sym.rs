//! Interned names: the facility, branch, service, locale and zone strings
//! that repeat across parcels are kept once and named by a 4-byte [`Sym`],
//! and their text once in the process whatever the engines naming it; and
//! the prefetch hint the window and the lanes use to overlap cache misses.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_64;

use super::codec::{CheckpointError, R, W};

/// An interned string: an index into an [`Interner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(u32);

impl Sym {
    pub const NONE: Sym = Sym(u32::MAX);

    pub fn is_none(self) -> bool {
        self == Sym::NONE
    }

    pub fn index(self) -> u32 {
        self.0
    }
}

/// Bounded string interning for the values that repeat across parcels.
/// Every partition's engine has its own, and a national network has tens
/// of thousands of branches: the index holds a name's place in `names`
/// (4 bytes), not a second handle on the name with it (20).
pub struct Interner {
    names: Vec<Arc<str>>,
    /// Places in `names`, by the name's hash.
    index: HashTable<u32>,
    limit: usize,
}

fn hash(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

impl Interner {
    pub fn new(limit: usize) -> Interner {
        Interner { names: Vec::new(), index: HashTable::new(), limit }
    }

    /// The symbol of `s`, or `None` when the interner is full.
    pub fn intern(&mut self, s: &str) -> Option<Sym> {
        let h = hash(s);
        if let Some(&i) = self.index.find(h, |&i| &*self.names[i as usize] == s) {
            return Some(Sym(i));
        }
        if self.names.len() >= self.limit {
            return None;
        }
        Some(self.add(s, h))
    }

    /// Adds a name (its hash `h`) known not to be there, its text the process's copy.
    fn add(&mut self, name: &str, h: u64) -> Sym {
        let i = self.names.len() as u32;
        self.names.push(shared(name, h));
        let names = &self.names;
        self.index.insert_unique(h, i, |&j| hash(&names[j as usize]));
        Sym(i)
    }

    pub fn get(&self, sym: Sym) -> Option<&Arc<str>> {
        self.names.get(sym.0 as usize)
    }

    pub fn name(&self, sym: Sym) -> Option<&str> {
        self.get(sym).map(|s| &**s)
    }
}

impl Interner {
    pub(super) fn save(&self, w: &mut W) {
        w.u(self.names.len() as u64);
        for n in &self.names {
            w.s(n);
        }
    }

    pub(super) fn load(r: &mut R<'_>, limit: usize) -> Result<Interner, CheckpointError> {
        let mut syms = Interner::new(limit.max(1));
        for _ in 0..r.u()? {
            let name = r.s()?;
            // Names were interned in this order, so each gets its old symbol back.
            syms.add(name, hash(name));
        }
        Ok(syms)
    }
}

impl Sym {
    pub(super) fn load(r: &mut R<'_>) -> Result<Sym, CheckpointError> {
        Ok(match r.u32()? {
            0 => Sym::NONE,
            s => Sym(s - 1),
        })
    }

    pub(super) fn save(self, w: &mut W) {
        w.u(if self.is_none() { 0 } else { u64::from(self.0) + 1 });
    }
}

/// The text of every name some engine of the process holds. A national
/// network's 30,000 branches are named in each of its 16 partitions: each
/// engine keeps its own symbols (its checkpoint stands alone), but one copy
/// of each text, some 40 bytes a name. Taken only when an engine meets a
/// name new to it, never for a name it knows.
struct Pool {
    names: HashTable<Arc<str>>,
    /// The size after the last sweep: the next sweep comes at twice it.
    swept: usize,
}

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(|| Mutex::new(Pool::default()));

/// The process's copy of `name` (its hash `h`).
fn shared(name: &str, h: u64) -> Arc<str> {
    // The pool is never left half-changed, so a panic elsewhere holding it changes nothing.
    POOL.lock().unwrap_or_else(PoisonError::into_inner).share(name, h)
}

/// Sweeps start past this many names.
const FIRST_SWEEP: usize = 1024;

impl Default for Pool {
    fn default() -> Pool {
        Pool { names: HashTable::new(), swept: FIRST_SWEEP }
    }
}

impl Pool {
    /// The copy of `name` (its hash `h`), made when no engine holds one.
    fn share(&mut self, name: &str, h: u64) -> Arc<str> {
        if let Some(known) = self.names.find(h, |n| &**n == name) {
            return known.clone();
        }
        if self.names.len() >= 2 * self.swept {
            // Names no engine holds any more (engines dropped, rules replaced) go.
            self.names.retain(|n| Arc::strong_count(n) > 1);
            self.swept = self.names.len().max(FIRST_SWEEP);
        }
        let name: Arc<str> = Arc::from(name);
        self.names.insert_unique(h, name.clone(), |n| hash(n));
        name
    }
}

/// A hint to load the cache line holding `p`; it never faults, whatever the address.
#[inline]
pub(super) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is only a hint: it reads nothing and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::codec::Body;

    #[test]
    fn engines_naming_one_place_share_its_text_and_keep_their_own_symbols() {
        let (mut a, mut b) = (Interner::new(8), Interner::new(8));
        let only_a = a.intern("sym-test-only-a").expect("room");
        let place = (a.intern("sym-test-Évry").expect("room"), b.intern("sym-test-Évry").expect("room"));
        assert_eq!((only_a.index(), place.0.index(), place.1.index()), (0, 1, 0), "symbols are each engine's own");
        let (in_a, in_b) = (a.get(place.0).expect("named"), b.get(place.1).expect("named"));
        assert!(Arc::ptr_eq(in_a, in_b), "one copy of the text");
        let mut w = W::default();
        a.save(&mut w);
        let opened = Body::open(&w.snapshot().compress()).expect("opens");
        let restored = Interner::load(&mut opened.reader(), 8).expect("loads");
        assert!(Arc::ptr_eq(restored.get(place.0).expect("named"), in_b), "a restored engine shares it too");
    }

    #[test]
    fn the_pool_forgets_names_no_engine_holds_once_it_doubles() {
        let mut pool = Pool::default();
        let held: Vec<Arc<str>> = (0..10).map(|i| format!("held-{i}")).map(|n| pool.share(&n, hash(&n))).collect();
        let share_and_drop = |pool: &mut Pool, i: usize| {
            let name = format!("gone-{i}");
            drop(pool.share(&name, hash(&name)));
        };
        for i in 0..2 * FIRST_SWEEP - held.len() {
            share_and_drop(&mut pool, i);
        }
        assert_eq!(pool.names.len(), 2 * FIRST_SWEEP, "no sweep before the pool doubles");
        share_and_drop(&mut pool, usize::MAX);
        assert_eq!(pool.names.len(), 11, "the held names and the one made after the sweep");
        assert_eq!(pool.swept, FIRST_SWEEP);
        assert!(Arc::ptr_eq(&pool.share("held-3", hash("held-3")), &held[3]), "a held name is still shared");
    }
}
