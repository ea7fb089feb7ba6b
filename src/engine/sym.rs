//! Interned names: the facility, branch, service, locale and zone strings
//! that repeat across parcels are kept once in the process and named by a
//! 4-byte [`Sym`], whatever the engines naming them; and the prefetch hint
//! the window and the lanes use to overlap cache misses.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
/// The index holds a name's place in `names` (4 bytes), not a second
/// handle on the name with it (20).
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
        if let Some(i) = self.find(s, h) {
            return Some(i);
        }
        if self.names.len() >= self.limit {
            return None;
        }
        Some(self.add(s, h))
    }

    fn find(&self, s: &str, h: u64) -> Option<Sym> {
        self.index.find(h, |&i| &*self.names[i as usize] == s).map(|&i| Sym(i))
    }

    /// Adds a name (its hash `h`) known not to be there.
    fn add(&mut self, name: &str, h: u64) -> Sym {
        let i = self.names.len() as u32;
        self.names.push(Arc::from(name));
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

/// The names of every engine of a process, in one table: a national
/// network names its 30,000 branches in each of its 16 partitions, and a
/// table of each engine's own held each name 16 times (22 MB of heap at
/// 1 M parcels on national-cn, and a cache miss where the one table hits). The engines of a process all run on one
/// thread, so the lock is never waited for. A checkpoint still stands
/// alone: an engine saves the table with its state and a restore maps the
/// saved symbols onto the process's (`Interner::read_map`).
#[derive(Clone)]
pub struct Symbols(Arc<Mutex<Interner>>);

impl Symbols {
    /// A table of at most `limit` names.
    pub fn new(limit: usize) -> Symbols {
        Symbols(Arc::new(Mutex::new(Interner::new(limit.max(1)))))
    }

    /// The table. The lock is released at the end of the statement using it
    /// or with the guard; an engine never holds it across a call that takes it.
    pub fn lock(&self) -> MutexGuard<'_, Interner> {
        // The table is never left half-changed, so a panic elsewhere holding it changes nothing.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Saved symbols onto the process's: `None` when they are the same.
#[derive(Clone, Debug, Default)]
pub(super) struct SymMap(Option<Vec<Sym>>);

impl SymMap {
    /// The process's symbol of a saved one (an unknown one has no name).
    pub fn get(&self, saved: Sym) -> Sym {
        match &self.0 {
            Some(map) if !saved.is_none() => map.get(saved.0 as usize).copied().unwrap_or(Sym::NONE),
            _ => saved,
        }
    }
}

impl Interner {
    pub(super) fn save(&self, w: &mut W) {
        w.u(self.names.len() as u64);
        for n in &self.names {
            w.s(n);
        }
    }

    /// Reads the names a checkpoint was saved with into this table and
    /// returns the map of their saved symbols onto it. A saved name is kept
    /// even past the limit, as it was: the state restored names it.
    pub(super) fn read_map(&mut self, r: &mut R<'_>) -> Result<SymMap, CheckpointError> {
        let mut map = Vec::new();
        let mut same = true;
        for saved in 0..r.u()? {
            let name = r.s()?;
            let h = hash(name);
            let sym = self.find(name, h).unwrap_or_else(|| self.add(name, h));
            same &= u64::from(sym.0) == saved;
            map.push(sym);
        }
        Ok(SymMap((!same).then_some(map)))
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

    fn saved(syms: &Interner) -> Vec<u8> {
        let mut w = W::default();
        syms.save(&mut w);
        w.snapshot().compress()
    }

    #[test]
    fn a_table_read_into_another_maps_each_saved_symbol_onto_the_same_name() {
        let mut a = Interner::new(8);
        let names = ["sym-test-Évry", "sym-test-Lyon", "sym-test-Wuhan"];
        let syms: Vec<Sym> = names.iter().map(|n| a.intern(n).expect("room")).collect();
        let bytes = saved(&a);

        // Into an empty table, or one that holds them in the same order: as saved.
        for mut into in [Interner::new(8), a] {
            let map = into.read_map(&mut Body::open(&bytes).expect("opens").reader()).expect("reads");
            assert!(map.0.is_none(), "the same symbols, nothing to map");
            assert_eq!(into.name(map.get(syms[1])), Some(names[1]));
        }

        // Into a table that named other places first (another process's history).
        let mut other = Interner::new(2);
        let lyon = other.intern(names[1]).expect("room");
        other.intern("sym-test-Brest").expect("room");
        let map = other.read_map(&mut Body::open(&bytes).expect("opens").reader()).expect("reads");
        assert_eq!(map.get(syms[1]), lyon, "a name the table knows keeps its symbol");
        for (sym, name) in syms.iter().zip(names) {
            assert_eq!(other.name(map.get(*sym)), Some(name), "every saved symbol names what it named");
        }
        assert_eq!(other.names.len(), 4, "the saved names kept past the limit of 2");
        assert_eq!(map.get(Sym::NONE), Sym::NONE);
        assert_eq!(other.intern("sym-test-new"), None, "but no new name past it");
    }
}
