//! Grouping the keys of an update by row, and splitting them among threads.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Positions of `keys` split into `n` buckets such that all keys sharing a bitmap byte (the
/// same `key / 8`) land in one bucket: a thread that owns a bucket owns those rows and their
/// bitmap bytes outright. Positions keep their order within a bucket.
pub(super) fn buckets_by_bitmap_byte(keys: &[u64], n: usize) -> Vec<Vec<u32>> {
    let mut buckets = vec![Vec::with_capacity(keys.len() / n + 1); n];
    for (position, &key) in keys.iter().enumerate() {
        // Fibonacci hashing spreads strided keys evenly.
        let b = ((key >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % n;
        buckets[b].push(position as u32);
    }
    buckets
}

/// Some positions of `keys` grouped by key: the distinct keys in first-seen order and, for
/// each, the positions of its occurrences in order (a compressed sparse row layout).
pub(super) struct KeyGroups {
    pub unique: Vec<u64>,
    starts: Vec<u32>,
    positions: Vec<u32>,
}

impl KeyGroups {
    pub fn of(keys: &[u64], positions: &[u32]) -> Self {
        let mut group_of_key: HashMap<u64, u32, BuildHasherDefault<KeyHasher>> =
            HashMap::with_capacity_and_hasher(positions.len(), Default::default());
        let mut unique = Vec::with_capacity(positions.len());
        let mut group_of = Vec::with_capacity(positions.len());
        for &position in positions {
            let key = keys[position as usize];
            let group = *group_of_key.entry(key).or_insert_with(|| {
                unique.push(key);
                (unique.len() - 1) as u32
            });
            group_of.push(group);
        }
        // Counting sort of positions by group keeps each group's occurrences in order.
        let mut starts = vec![0u32; unique.len() + 1];
        for &g in &group_of {
            starts[g as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut grouped = vec![0u32; positions.len()];
        for (&position, &g) in positions.iter().zip(&group_of) {
            grouped[next[g as usize] as usize] = position;
            next[g as usize] += 1;
        }
        KeyGroups {
            unique,
            starts,
            positions: grouped,
        }
    }

    pub fn members(&self, group: usize) -> &[u32] {
        &self.positions[self.starts[group] as usize..self.starts[group + 1] as usize]
    }
}

/// Keys are row numbers, not attacker-chosen strings: one multiply spreads them well enough
/// and costs far less than SipHash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = (key ^ (key >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_first_seen_order_and_occurrence_order() {
        let keys = [9, 4, 9, 7, 4, 9];
        let groups = KeyGroups::of(&keys, &[0, 1, 2, 3, 4, 5]);
        assert_eq!(groups.unique, vec![9, 4, 7]);
        assert_eq!(groups.members(0), &[0, 2, 5]);
        assert_eq!(groups.members(1), &[1, 4]);
        assert_eq!(groups.members(2), &[3]);
        let some = KeyGroups::of(&keys, &[2, 3, 5]);
        assert_eq!(some.unique, vec![9, 7]);
        assert_eq!(some.members(0), &[2, 5]);
    }

    #[test]
    fn buckets_own_whole_bitmap_bytes() {
        let keys: Vec<u64> = (0..10_000u64).map(|i| (i * 37) % 4096).collect();
        let buckets = buckets_by_bitmap_byte(&keys, 8);
        let mut owner = HashMap::new();
        for (b, positions) in buckets.iter().enumerate() {
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "order kept");
            for &p in positions {
                let byte = keys[p as usize] / 8;
                assert_eq!(*owner.entry(byte).or_insert(b), b, "byte {byte} split");
            }
        }
        assert_eq!(buckets.iter().map(Vec::len).sum::<usize>(), keys.len());
    }
}
