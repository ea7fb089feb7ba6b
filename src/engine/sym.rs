//! Interned names: the facility, branch, service, locale and zone strings
//! that repeat across parcels are kept once and named by a 4-byte [`Sym`];
//! and the prefetch hint the window and the lanes use to overlap cache misses.

use std::sync::Arc;

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
        Some(self.add(Arc::from(s), h))
    }

    /// Adds a name known not to be there.
    fn add(&mut self, name: Arc<str>, h: u64) -> Sym {
        let i = self.names.len() as u32;
        self.names.push(name);
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
            syms.add(Arc::from(name), hash(name));
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
