//! The hot-row cache's map from a row's key to its slot: open addressing with linear
//! probing over one array of 16-byte entries, placed by the key's hash (the one the read
//! counts use too). A lookup is nearly always one cache line, and a gather prefetches that
//! line a few keys ahead of asking, which a std `HashMap` gives no way to do: with a cache
//! of a million rows the map is tens of MiB, and each lookup would otherwise wait on memory.

use super::sketch::splitmix64;
use crate::table::prefetch_ptr;

/// No key is `u64::MAX` (keys are below a table's row count, itself below 2^63).
const EMPTY: u64 = u64::MAX;
const FIRST_SIZE: usize = 64;

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Entry {
    key: u64,
    slot: u32,
}

const VACANT: Entry = Entry {
    key: EMPTY,
    slot: 0,
};

pub(super) struct SlotIndex {
    entries: Vec<Entry>,
    /// `64 - log2(entries.len())`: a hash's top bits place its key.
    shift: u32,
    len: usize,
}

impl SlotIndex {
    pub(super) fn new() -> SlotIndex {
        SlotIndex::with_size(FIRST_SIZE)
    }

    fn with_size(size: usize) -> SlotIndex {
        debug_assert!(size.is_power_of_two() && size >= 2);
        SlotIndex {
            entries: vec![VACANT; size],
            shift: 64 - size.trailing_zeros(),
            len: 0,
        }
    }

    /// Keys held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    fn next(&self, at: usize) -> usize {
        (at + 1) & (self.entries.len() - 1)
    }

    /// Starts loading the entry where a key of `hash` would be.
    pub(super) fn prefetch(&self, hash: u64) {
        prefetch_ptr(std::ptr::from_ref(&self.entries[self.home(hash)]).cast());
    }

    /// `key`'s slot; `hash` is `splitmix64(key)`.
    pub(super) fn get(&self, key: u64, hash: u64) -> Option<u32> {
        let mut at = self.home(hash);
        loop {
            let entry = self.entries[at];
            if entry.key == key {
                return Some(entry.slot);
            }
            if entry.key == EMPTY {
                return None;
            }
            at = self.next(at);
        }
    }

    /// Puts `key` in `slot` (replacing its slot if it is held); `hash` is `splitmix64(key)`.
    pub(super) fn insert(&mut self, key: u64, hash: u64, slot: u32) {
        debug_assert_ne!(key, EMPTY);
        // At most half full: probes stay short.
        if 2 * (self.len + 1) > self.entries.len() {
            self.grow();
        }
        let mut at = self.home(hash);
        loop {
            let entry = &mut self.entries[at];
            if entry.key == EMPTY {
                self.len += 1;
            }
            if entry.key == EMPTY || entry.key == key {
                *entry = Entry { key, slot };
                return;
            }
            at = self.next(at);
        }
    }

    /// Takes `key` out, if held.
    pub(super) fn remove(&mut self, key: u64) {
        let mut hole = self.home(splitmix64(key));
        loop {
            match self.entries[hole].key {
                EMPTY => return,
                held if held == key => break,
                _ => hole = self.next(hole),
            }
        }
        // Backward shift: each later entry of the run that may sit in the hole (its home is
        // not between the hole and it) moves there, so no probe meets a gap before its key.
        let mask = self.entries.len() - 1;
        let mut at = self.next(hole);
        while self.entries[at].key != EMPTY {
            let home = self.home(splitmix64(self.entries[at].key));
            if at.wrapping_sub(home) & mask >= at.wrapping_sub(hole) & mask {
                self.entries[hole] = self.entries[at];
                hole = at;
            }
            at = self.next(at);
        }
        self.entries[hole] = VACANT;
        self.len -= 1;
    }

    pub(super) fn clear(&mut self) {
        *self = SlotIndex::new();
    }

    fn grow(&mut self) {
        let old = std::mem::replace(self, SlotIndex::with_size(2 * self.entries.len()));
        for entry in old.entries.into_iter().filter(|e| e.key != EMPTY) {
            self.insert(entry.key, splitmix64(entry.key), entry.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn get(index: &SlotIndex, key: u64) -> Option<u32> {
        index.get(key, splitmix64(key))
    }

    #[test]
    fn keys_find_their_slots_through_growth_replacement_and_removal() {
        let mut index = SlotIndex::new();
        let mut truth = HashMap::new();
        let mut state = 1u64;
        for step in 0..200_000u32 {
            state = splitmix64(state);
            // Few distinct keys, so that inserts, replacements and removals all meet held
            // keys and long probe runs form and break.
            let key = state % 5_000;
            if state >> 62 == 0 {
                index.remove(key);
                truth.remove(&key);
            } else {
                index.insert(key, splitmix64(key), step);
                truth.insert(key, step);
            }
            assert_eq!(index.len(), truth.len());
        }
        for key in 0..6_000 {
            assert_eq!(get(&index, key), truth.get(&key).copied(), "key {key}");
        }
        index.clear();
        assert_eq!((index.len(), get(&index, 1)), (0, None));
    }

    #[test]
    fn removal_keeps_colliding_keys_reachable() {
        // Keys whose hashes share a home, so that they sit in one run.
        let mut index = SlotIndex::new();
        let home = index.home(splitmix64(0));
        let same_home: Vec<u64> = (0..)
            .filter(|&k| index.home(splitmix64(k)) == home)
            .take(5)
            .collect();
        for (slot, &key) in same_home.iter().enumerate() {
            index.insert(key, splitmix64(key), slot as u32);
        }
        index.remove(same_home[1]);
        for (slot, &key) in same_home.iter().enumerate() {
            let expected = (slot != 1).then_some(slot as u32);
            assert_eq!(get(&index, key), expected);
        }
    }
}
