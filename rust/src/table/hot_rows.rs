//! A cache of a table's most-read rows, for serving tables larger than memory.
//!
//! Engram's n-gram ids are Zipf-distributed: a small share of rows takes most reads. Through
//! the page cache alone each hot row keeps a whole 4 KiB page resident (fifteen FP8 rows, one
//! of them hot), and a table beyond memory keeps evicting hot pages for cold ones.
//! [`HotRowCache`] keeps the hot rows themselves, packed as stored (a quarter of float32's
//! bytes for FP8), in memory of its own; a gather through it converts a hit from there
//! exactly as it would from the table, so its answers equal [`Table::gather_into`]'s.
//!
//! Admission is TinyLFU's: every read is counted in a count-min sketch ([`sketch`]), and a
//! missed row that has been asked for at least `admit_after` times enters, once the cache
//! is full, only in place of a row read `ADMISSION_MARGIN` times less: the least read of
//! `EVICTION_SAMPLE` slots drawn at random (as Redis samples for its LFU), each slot
//! counting its own hits. A gather's misses are copied aside as it reads them and admitted
//! after it, at most one per `KEYS_PER_PROPOSAL` keys, so that admitting costs a small share
//! of a gather. Counting is lock-free and may lose an increment under contention, which only
//! blurs an estimate. Rows that were never written are not cached: they are computed, not
//! read. A read finds its row's slot through [`slot_index`]; the index entry and the read
//! counters of a key are prefetched a few keys ahead, as the rows themselves are, since
//! with a large cache both are tens of MiB and would otherwise cost a memory wait a read.
//!
//! A write to the table through this process's `Table` empties the cache at the next gather
//! (the table's write generation moves); writes by another process to the same file are not
//! seen, so cache only tables that no other process changes (a served, frozen table).

use super::{prefetch_lines, Table, PREFETCH_DISTANCE, ROWS_PER_TASK};
use crate::codec::{self, DType};
use crate::error::{Error, Result};
use crate::parallel;
use rayon::prelude::*;
use sketch::{splitmix64, FrequencySketch};
use slot_index::SlotIndex;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Slots drawn when the cache is full, the least counted of which a new row may replace.
const EVICTION_SAMPLE: usize = 8;
/// A gather task proposes at most one row for admission per this many keys it reads (and
/// at least `MIN_PROPOSALS`): an admission costs a few random memory accesses under the
/// write lock, and a Zipf stream's long tail would otherwise keep turning the cache's
/// coldest rows over at a cost like the gather's own. Hot rows, asked for again and again,
/// get in soon.
const KEYS_PER_PROPOSAL: usize = 16;
const MIN_PROPOSALS: usize = 16;
/// A row replaces a cached one only if read this many times more: without the margin the
/// cache's least-read rows keep trading places with the tail's, each trade a copy, and hit
/// no more (on the n-gram stream of `bench/beyond_ram.py`, a margin of 4 both halves the
/// admissions and raises the hit rate).
const ADMISSION_MARGIN: u8 = 4;
/// How many keys ahead a gather prefetches a key's slot-index entry and read counters.
const LOOKUP_PREFETCH_DISTANCE: usize = 16;

/// What a cache has done since it was made (or cleared).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotRowStats {
    pub hits: u64,
    pub misses: u64,
    pub admissions: u64,
    pub evictions: u64,
}

pub struct HotRowCache {
    capacity_bytes: usize,
    admit_after: u8,
    slots: RwLock<Slots>,
    hits: AtomicU64,
    misses: AtomicU64,
    admissions: AtomicU64,
    evictions: AtomicU64,
}

/// The cached rows, bound at the first gather to one table and its write generation.
struct Slots {
    table_id: Option<u64>,
    generation: u64,
    row_bytes: usize,
    capacity: usize,
    /// Read counts; counted under the read lock (the counters are atomic), sized under
    /// the write lock.
    sketch: FrequencySketch,
    slot_of: SlotIndex,
    key_of_slot: Vec<u64>,
    /// Each slot's reads: its row's estimate when admitted, plus its hits since, aged with
    /// the sketch. Victims are chosen by it, without reaching into the sketch.
    count_of_slot: Vec<AtomicU8>,
    /// The count a missed row must pass to replace a cached one: the last victim's plus the
    /// margin, halved as counts age (0 while there is room). Gathers propose only rows above
    /// it.
    admission_bar: AtomicU8,
    /// `key_of_slot.len()` rows of `row_bytes`, grown as rows are admitted.
    rows: Vec<u8>,
    random: u64,
}

impl HotRowCache {
    /// A cache of at most `capacity_bytes` of rows (as stored), admitting a row once it has
    /// been asked for `admit_after` times (at least 1).
    pub fn new(capacity_bytes: usize, admit_after: u8) -> Result<HotRowCache> {
        if capacity_bytes == 0 {
            return Err(Error::invalid("capacity_bytes must be positive"));
        }
        if admit_after == 0 {
            return Err(Error::invalid("admit_after must be at least 1"));
        }
        Ok(HotRowCache {
            capacity_bytes,
            admit_after,
            slots: RwLock::new(Slots {
                table_id: None,
                generation: 0,
                row_bytes: 0,
                capacity: 0,
                // Sized when the row size, and so the slot count, is known.
                sketch: FrequencySketch::new(0),
                slot_of: SlotIndex::new(),
                key_of_slot: Vec::new(),
                count_of_slot: Vec::new(),
                admission_bar: AtomicU8::new(0),
                rows: Vec::new(),
                random: 0x9E37_79B9_7F4A_7C15,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            admissions: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// Bytes of rows held now.
    pub fn bytes_used(&self) -> usize {
        self.read_slots().rows.len()
    }

    pub fn stats(&self) -> HotRowStats {
        HotRowStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            admissions: self.admissions.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Forgets every row and count (the cache can then serve another table).
    pub fn clear(&self) {
        let mut slots = self.write_slots();
        slots.table_id = None;
        slots.forget_rows();
        slots.sketch = FrequencySketch::new(0);
        for counter in [&self.hits, &self.misses, &self.admissions, &self.evictions] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    fn read_slots(&self) -> RwLockReadGuard<'_, Slots> {
        // Slots are changed whole under the write lock; a panic inside leaves them usable.
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_slots(&self) -> RwLockWriteGuard<'_, Slots> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the cache to `table` at `generation` (emptying it if it held an older
    /// generation's rows); fails if it holds another table's.
    fn bind(&self, table: &Table, generation: u64) -> Result<()> {
        {
            let slots = self.read_slots();
            if slots.table_id == Some(table.id) && slots.generation == generation {
                return Ok(());
            }
        }
        let mut slots = self.write_slots();
        match slots.table_id {
            Some(id) if id != table.id => {
                return Err(Error::invalid(
                    "this cache holds another table's rows (one cache serves one table; \
                     clear() it first to move it)",
                ))
            }
            Some(_) if slots.generation == generation => return Ok(()),
            Some(_) => slots.forget_rows(),
            None => {
                slots.row_bytes = table.layout.row_bytes as usize;
                let rows = usize::try_from(table.num_rows()).unwrap_or(usize::MAX);
                slots.capacity = (self.capacity_bytes / slots.row_bytes).clamp(1, rows);
                let capacity = slots.capacity;
                slots.sketch = FrequencySketch::new(capacity);
            }
        }
        slots.table_id = Some(table.id);
        slots.generation = generation;
        Ok(())
    }

    /// Admits the proposed rows that qualify.
    fn admit(&self, proposals: &[Proposals]) {
        let mut guard = self.write_slots();
        let slots = &mut *guard;
        let row_bytes = slots.row_bytes;
        for (key, count, row) in proposals.iter().flat_map(|p| p.rows(row_bytes)) {
            let hash = splitmix64(key);
            if slots.slot_of.get(key, hash).is_some() {
                continue; // proposed twice in one gather
            }
            let slot = if slots.key_of_slot.len() < slots.capacity {
                slots.key_of_slot.push(key);
                slots.count_of_slot.push(AtomicU8::new(0));
                slots.rows.resize(slots.rows.len() + row_bytes, 0);
                slots.key_of_slot.len() - 1
            } else {
                let (victim, victim_count) = slots.sampled_victim();
                let bar = victim_count.saturating_add(ADMISSION_MARGIN);
                slots.admission_bar.store(bar, Ordering::Relaxed);
                if bar >= count {
                    continue;
                }
                let victim_key = slots.key_of_slot[victim];
                slots.slot_of.remove(victim_key);
                slots.key_of_slot[victim] = key;
                self.evictions.fetch_add(1, Ordering::Relaxed);
                victim
            };
            slots.slot_of.insert(key, hash, slot as u32);
            slots.count_of_slot[slot].store(count, Ordering::Relaxed);
            slots.rows[slot * row_bytes..(slot + 1) * row_bytes].copy_from_slice(row);
            self.admissions.fetch_add(1, Ordering::Relaxed);
        }
        debug_assert_eq!(slots.slot_of.len(), slots.key_of_slot.len());
    }
}

/// Rows a gather task missed and proposes for admission, copied while its reads had them
/// in the CPU's caches (admission, later and on one thread, would read each from memory
/// or disk again).
#[derive(Default)]
struct Proposals {
    keys: Vec<u64>,
    /// Each key's estimated reads when proposed.
    counts: Vec<u8>,
    rows: Vec<u8>,
}

impl Proposals {
    fn rows(&self, row_bytes: usize) -> impl Iterator<Item = (u64, u8, &[u8])> {
        let keys = self.keys.iter().zip(&self.counts);
        keys.zip(self.rows.chunks_exact(row_bytes))
            .map(|((&key, &count), row)| (key, count, row))
    }
}

impl Slots {
    fn forget_rows(&mut self) {
        self.admission_bar.store(0, Ordering::Relaxed);
        self.slot_of.clear();
        self.key_of_slot.clear();
        self.count_of_slot.clear();
        self.rows.clear();
    }

    fn row(&self, slot: u32) -> &[u8] {
        let start = slot as usize * self.row_bytes;
        &self.rows[start..start + self.row_bytes]
    }

    /// Each key's slot, if cached (`hashes`: the keys' `splitmix64`), its entry and read
    /// counters asked for a few keys ahead so that their misses overlap.
    fn find(&self, keys: &[u64], hashes: &[u64]) -> Vec<Option<u32>> {
        let mut found = Vec::with_capacity(keys.len());
        for (i, (&key, &hash)) in keys.iter().zip(hashes).enumerate() {
            if let Some(&ahead) = hashes.get(i + LOOKUP_PREFETCH_DISTANCE) {
                self.slot_of.prefetch(ahead);
                self.sketch.prefetch(ahead);
            }
            found.push(self.slot_of.get(key, hash));
        }
        found
    }

    /// Counts one read of each key (by its hash), and of each hit's slot; ages the slots'
    /// counts with the sketch's.
    fn record(&self, hashes: &[u64], found: &[Option<u32>]) {
        for slot in found.iter().flatten() {
            let count = &self.count_of_slot[*slot as usize];
            count.store(
                count.load(Ordering::Relaxed).saturating_add(1),
                Ordering::Relaxed,
            );
        }
        if self.sketch.record(hashes) {
            for count in self.count_of_slot.iter().chain([&self.admission_bar]) {
                count.store(count.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
    }

    /// The least read of a few slots drawn at random (the cache is full), and its count.
    fn sampled_victim(&mut self) -> (usize, u8) {
        let samples: [usize; EVICTION_SAMPLE] = std::array::from_fn(|_| self.random_slot());
        samples
            .into_iter()
            .map(|slot| (slot, self.count_of_slot[slot].load(Ordering::Relaxed)))
            .min_by_key(|&(_, count)| count)
            .expect("the sample is not empty")
    }

    fn random_slot(&mut self) -> usize {
        // xorshift64: cheap, and only needs to spread the draws; its high half scaled to the
        // slot count (a multiply, not a division).
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (((self.random >> 32) * self.key_of_slot.len() as u64) >> 32) as usize
    }
}

impl Table {
    /// [`Table::gather_into`] through `cache`: hits are read from the cache's rows, misses
    /// from the table, and the misses that qualify are then admitted. Answers are equal to
    /// the uncached gather's.
    pub fn gather_cached(
        &self,
        keys: &[u64],
        out_dtype: DType,
        out: &mut [u8],
        cache: &HotRowCache,
    ) -> Result<()> {
        let out_row = self.check_gather(keys, out_dtype, out.len())?;
        // Held to the end: no write can slip between reading rows and admitting them.
        let map = self.read_map();
        let map: &[u8] = &map;
        cache.bind(self, self.write_generation.load(Ordering::Relaxed))?;
        if keys.is_empty() {
            return Ok(());
        }
        let proposals: Vec<Proposals> = {
            let slots = cache.read_slots();
            let slots = &*slots;
            out.par_chunks_mut(out_row * ROWS_PER_TASK)
                .zip(keys.par_chunks(ROWS_PER_TASK))
                .with_min_len(parallel::min_items_per_task())
                .map_init(
                    || vec![0f32; self.dim()],
                    |scratch, (task_out, task_keys)| {
                        self.gather_task(map, slots, cache, task_keys, out_dtype, task_out, scratch)
                    },
                )
                .filter(|proposals| !proposals.keys.is_empty())
                .collect()
        };
        if !proposals.is_empty() {
            cache.admit(&proposals);
        }
        Ok(())
    }

    /// One task's rows; returns the rows it missed that may be admitted.
    #[allow(clippy::too_many_arguments)]
    fn gather_task(
        &self,
        map: &[u8],
        slots: &Slots,
        cache: &HotRowCache,
        keys: &[u64],
        out_dtype: DType,
        out: &mut [u8],
        scratch: &mut [f32],
    ) -> Proposals {
        let out_row = out.len() / keys.len();
        let hashes: Vec<u64> = keys.iter().map(|&key| splitmix64(key)).collect();
        let found = slots.find(keys, &hashes);
        slots.record(&hashes, &found);
        let mut proposals = Proposals::default();
        let most_proposals = (keys.len() / KEYS_PER_PROPOSAL).max(MIN_PROPOSALS);
        for (i, (dst, &key)) in out.chunks_mut(out_row).zip(keys).enumerate() {
            // Later rows, from the table or from the cache, are asked for early so that
            // their misses overlap this row's work.
            match (
                keys.get(i + PREFETCH_DISTANCE),
                found.get(i + PREFETCH_DISTANCE),
            ) {
                (Some(&ahead), Some(None)) => self.prefetch_row(map, ahead),
                (_, Some(Some(slot))) => prefetch_lines(slots.row(*slot)),
                _ => {}
            }
            match found[i] {
                Some(slot) => {
                    let stored = slots.row(slot);
                    codec::convert_row(self.header.dtype, stored, out_dtype, dst, scratch);
                }
                None => {
                    self.read_row(map, key, scratch, out_dtype, dst);
                    let count = slots.sketch.estimate(hashes[i]);
                    if proposals.keys.len() < most_proposals
                        && count >= cache.admit_after
                        && count > slots.admission_bar.load(Ordering::Relaxed)
                        && self.is_written_in(map, key)
                    {
                        proposals.keys.push(key);
                        proposals.counts.push(count);
                        proposals.rows.extend_from_slice(&map[self.row_range(key)]);
                    }
                }
            }
        }
        let hits = found.iter().filter(|slot| slot.is_some()).count() as u64;
        cache.hits.fetch_add(hits, Ordering::Relaxed);
        cache
            .misses
            .fetch_add(keys.len() as u64 - hits, Ordering::Relaxed);
        proposals
    }
}

mod sketch;
mod slot_index;
#[cfg(test)]
mod tests;
