//! Grouping the keys of an update by row.

use super::prefetch_ptr;
use crate::error::{Error, Result};

/// `keys` grouped by key: the distinct keys in first-seen order and, for each, the positions
/// of its occurrences in order (a compressed sparse row layout).
pub struct KeyGroups {
    /// The distinct keys, in first-seen order.
    pub unique: Vec<u64>,
    starts: Vec<u32>,
    positions: Vec<u32>,
}

const EMPTY: u32 = u32::MAX;
const PREFETCH_DISTANCE: usize = 16;

#[derive(Clone, Copy)]
struct Slot {
    key: u64,
    group: u32,
}

impl KeyGroups {
    /// Fails for more keys than a u32 counts (positions are stored as u32).
    pub fn of(keys: &[u64]) -> Result<Self> {
        if u32::try_from(keys.len()).is_err() {
            return Err(Error::invalid(format!(
                "an update of {} keys is too large (at most {})",
                keys.len(),
                u32::MAX
            )));
        }
        // Open addressing at load factor <= 1/2: keys are row numbers, not attacker-chosen, so
        // one multiply spreads them, and a flat probe costs far less than a general map.
        let slots_len = (keys.len() * 2).next_power_of_two().max(16);
        let shift = 64 - slots_len.trailing_zeros();
        let home = |key: u64| (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize;
        let mut slots = vec![
            Slot {
                key: 0,
                group: EMPTY
            };
            slots_len
        ];
        let mut unique = Vec::with_capacity(keys.len());
        let mut group_of = Vec::with_capacity(keys.len());
        for (position, &key) in keys.iter().enumerate() {
            // The table outgrows the caches: start loading later keys' slots now.
            if let Some(&ahead) = keys.get(position + PREFETCH_DISTANCE) {
                prefetch_ptr((&raw const slots[home(ahead)]).cast());
            }
            let mut slot = home(key);
            let group = loop {
                let entry = &mut slots[slot];
                if entry.group == EMPTY {
                    *entry = Slot {
                        key,
                        group: unique.len() as u32,
                    };
                    unique.push(key);
                    break entry.group;
                }
                if entry.key == key {
                    break entry.group;
                }
                slot = (slot + 1) & (slots_len - 1);
            };
            group_of.push(group);
        }
        if unique.len() == keys.len() {
            // No repeated key (the common case: clients push summed gradients).
            return Ok(KeyGroups {
                unique,
                starts: (0..=keys.len() as u32).collect(),
                positions: (0..keys.len() as u32).collect(),
            });
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
        let mut positions = vec![0u32; keys.len()];
        for (position, &g) in group_of.iter().enumerate() {
            positions[next[g as usize] as usize] = position as u32;
            next[g as usize] += 1;
        }
        Ok(KeyGroups {
            unique,
            starts,
            positions,
        })
    }

    pub fn members(&self, group: usize) -> &[u32] {
        &self.positions[self.starts[group] as usize..self.starts[group + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_first_seen_order_and_occurrence_order() {
        let keys = [9, 4, 9, 7, 4, 9];
        let groups = KeyGroups::of(&keys).unwrap();
        assert_eq!(groups.unique, vec![9, 4, 7]);
        assert_eq!(groups.members(0), &[0, 2, 5]);
        assert_eq!(groups.members(1), &[1, 4]);
        assert_eq!(groups.members(2), &[3]);
    }

    #[test]
    fn distinct_keys_are_their_own_groups() {
        let keys = [5, 1 << 40, 3, 0];
        let groups = KeyGroups::of(&keys).unwrap();
        assert_eq!(groups.unique, keys);
        for i in 0..keys.len() {
            assert_eq!(groups.members(i), &[i as u32]);
        }
    }

    #[test]
    fn keys_sharing_low_bits_group_apart() {
        // Keys that differ only in high bits must still land in groups of their own.
        let keys: Vec<u64> = (0..5000u64).map(|i| (i % 1000) << 40).collect();
        let groups = KeyGroups::of(&keys).unwrap();
        assert_eq!(groups.unique.len(), 1000);
        for (g, &key) in groups.unique.iter().enumerate() {
            let members = groups.members(g);
            assert_eq!(members.len(), 5);
            assert!(members.iter().all(|&p| keys[p as usize] == key));
            assert!(members.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
