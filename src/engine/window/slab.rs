//! The window's parcels by slot, in chunks that never move. A doubling
//! `Vec` copies every parcel when it grows and frees the old block, which
//! the allocator purges only after a delay: at the peak of a 1 M-parcel
//! replay the old and new blocks of the partitions growing last were both
//! resident, 21 MiB (~22 bytes a parcel) more than with no growth at all.
//! A chunk is allocated once, filled, and kept.

use std::ops::{Index, IndexMut};

use super::Parcel;

/// Parcels a chunk holds: 192 KiB, a small part of a partition's window.
const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;

#[derive(Default)]
pub(super) struct Slab {
    chunks: Vec<Vec<Parcel>>,
}

impl Slab {
    pub fn len(&self) -> usize {
        self.chunks.last().map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }

    /// Adds a parcel in the next slot; returns the slot.
    pub fn push(&mut self, parcel: Parcel) -> u32 {
        let slot = self.len() as u32;
        match self.chunks.last_mut().filter(|last| last.len() < CHUNK) {
            Some(last) => last.push(parcel),
            None => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(parcel);
                self.chunks.push(chunk);
            }
        }
        slot
    }

    pub fn get(&self, slot: usize) -> Option<&Parcel> {
        self.chunks.get(slot >> CHUNK_BITS)?.get(slot & (CHUNK - 1))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Parcel> {
        self.chunks.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Parcel> {
        self.chunks.iter_mut().flatten()
    }
}

impl Index<usize> for Slab {
    type Output = Parcel;

    fn index(&self, slot: usize) -> &Parcel {
        &self.chunks[slot >> CHUNK_BITS][slot & (CHUNK - 1)]
    }
}

impl IndexMut<usize> for Slab {
    fn index_mut(&mut self, slot: usize) -> &mut Parcel {
        &mut self.chunks[slot >> CHUNK_BITS][slot & (CHUNK - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Ts;

    #[test]
    fn slots_past_a_chunk_land_in_the_next_and_stay_where_they_are() {
        let mut slab = Slab::default();
        let ids: Vec<String> = (0..CHUNK + 3).map(|i| format!("P{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(slab.push(Parcel::new(id, 0, Ts::MIN)), i as u32);
        }
        let first_chunk = slab.chunks[0].as_ptr();
        slab.push(Parcel::new("one more", 0, Ts::MIN));
        assert_eq!(slab.chunks[0].as_ptr(), first_chunk, "a full chunk never moves");
        assert_eq!((slab.len(), slab.chunks.len()), (CHUNK + 4, 2));
        let (first, third) = (format!("P{CHUNK}"), format!("P{}", CHUNK + 2));
        assert_eq!((slab[CHUNK].id(), slab.get(CHUNK + 2).map(Parcel::id)), (first.as_str(), Some(third.as_str())));
        assert!(slab.get(CHUNK + 4).is_none());
        slab[3] = Parcel::new("", 0, Ts::MIN);
        assert_eq!(slab.iter().filter(|p| p.is_vacant()).count(), 1);
        assert_eq!(slab.iter_mut().count(), CHUNK + 4);
    }
}
