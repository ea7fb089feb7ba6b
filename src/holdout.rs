//! The hold-out group: a fixed share of parcels whose customers forewarn
//! does not message, so that a carrier can measure what the messages
//! change (contacts per parcel told, with messages and without) instead of
//! assuming it.
//!
//! A parcel is in the group by a hash of its tracking number alone, so the
//! dispatcher that keeps the messages back, the report that measures them
//! and the simulator's customers agree without sharing anything, and a
//! parcel stays in or out whatever process sees it. The hash is seeded
//! apart from the partitions' (FNV-1a, [`crate::partition`]): the group is
//! not a partition, nor a set of them.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seeds the group's hash away from every other hash of a tracking number.
const SEED: u64 = 0x0068_6f6c_646f_7574;

/// A parcel's draw for the group, from its tracking number: what the
/// engine keeps of a parcel for the live measure (8 bytes, the share
/// applied later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw(u64);

impl Draw {
    pub fn of(parcel_id: &str) -> Draw {
        Draw(xxh3_64_with_seed(parcel_id.as_bytes(), SEED))
    }

    /// Whether the parcel is in a hold-out group of `share` of all parcels
    /// (0: nobody, 1: everybody).
    pub fn held_out(self, share: f64) -> bool {
        // The hash's top 53 bits, as a number uniform in [0, 1).
        share > 0.0 && ((self.0 >> 11) as f64 / (1u64 << 53) as f64) < share
    }
}

/// Whether parcel `parcel_id` is in a hold-out group of `share` of all parcels.
pub fn held_out(parcel_id: &str, share: f64) -> bool {
    Draw::of(parcel_id).held_out(share)
}

/// The hold-out group's share is a fraction below one half: a larger group
/// would keep most customers from their messages.
pub fn valid_share(share: f64) -> bool {
    (0.0..=0.5).contains(&share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_is_the_share_asked_and_does_not_follow_the_partitions() {
        let ids: Vec<String> = (0..100_000).map(|i| format!("FW{i:010}FR")).collect();
        let held: Vec<&String> = ids.iter().filter(|id| held_out(id, 0.05)).collect();
        let share = held.len() as f64 / ids.len() as f64;
        assert!((0.047..0.053).contains(&share), "{share}");
        // Every partition holds about its share of the group.
        let mut by_partition = [0u32; 16];
        for id in &held {
            by_partition[crate::partition::of(id, 16) as usize] += 1;
        }
        let expected = held.len() as f64 / 16.0;
        assert!(by_partition.iter().all(|&n| (f64::from(n) - expected).abs() < expected * 0.2), "{by_partition:?}");
        // The same parcel, the same answer; a larger group holds the smaller.
        assert!(held.iter().all(|id| held_out(id, 0.05) && held_out(id, 0.10)));
        assert!(!ids.iter().any(|id| held_out(id, 0.0)));
    }
}
