//! The hot-row cache's count of reads: a count-min sketch, each key's four counters in one
//! cache line.
//!
//! Counters are 8 bits, saturating, in blocks of 64 (one cache line, as Caffeine lays out
//! its TinyLFU sketch): a key hashes to one block and to one counter in each quarter of it,
//! so counting a read or estimating a key costs one memory access, not four. A key's
//! estimate is the least of its counters. Every `AGING_READS_PER_KEY` reads per key the
//! sketch ranks, all counters are halved, so that the counts follow a shifting distribution.
//! Keys come hashed (`splitmix64(key)`, computed once per read for this and the slot index).

use crate::table::prefetch_ptr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Counters are halved after this many reads per key the sketch is sized for.
const AGING_READS_PER_KEY: u64 = 10;
/// Counters per key the sketch is sized for (as a count-min sketch of depth 4 wants).
const COUNTERS_PER_KEY: usize = 4;
/// Counters in a block: one cache line.
const BLOCK: usize = 64;
/// The fewest blocks: in a smaller sketch a small cache's few hot keys cover so many
/// counters that a cold key's all collide with theirs and it passes for hot.
const MIN_BLOCKS: usize = 64;
/// The most blocks: 64 MiB of counters, plenty to rank the hot rows of any cache.
const MAX_BLOCKS: usize = 1 << 20;

#[repr(align(64))]
struct Block([AtomicU8; BLOCK]);

pub(super) struct FrequencySketch {
    blocks: Vec<Block>,
    reads: AtomicU64,
    aging_period: u64,
}

impl FrequencySketch {
    /// Room to rank about `keys` keys.
    pub(super) fn new(keys: usize) -> FrequencySketch {
        let blocks = (keys.saturating_mul(COUNTERS_PER_KEY) / BLOCK)
            .clamp(MIN_BLOCKS, MAX_BLOCKS)
            .next_power_of_two();
        FrequencySketch {
            blocks: (0..blocks)
                .map(|_| Block(std::array::from_fn(|_| AtomicU8::new(0))))
                .collect(),
            reads: AtomicU64::new(0),
            aging_period: AGING_READS_PER_KEY * keys.max(1) as u64,
        }
    }

    fn counters(&self) -> impl Iterator<Item = &AtomicU8> {
        self.blocks.iter().flat_map(|block| &block.0)
    }

    fn block_of(&self, hash: u64) -> &Block {
        &self.blocks[hash as usize & (self.blocks.len() - 1)]
    }

    /// The counters of the key of `hash`: one in each quarter of its block.
    fn counters_of(&self, hash: u64) -> impl Iterator<Item = &AtomicU8> {
        let block = self.block_of(hash);
        let quarter = BLOCK / 4;
        (0..4).map(move |i| &block.0[i * quarter + ((hash >> (32 + 4 * i)) & 15) as usize])
    }

    /// Starts loading the counters of the key of `hash`.
    pub(super) fn prefetch(&self, hash: u64) {
        prefetch_ptr(std::ptr::from_ref(self.block_of(hash)).cast());
    }

    /// Counts one read of each key (given by its hash); returns whether the counters were
    /// then aged. The shared read count moves once per call, not per key: threads counting
    /// at once would otherwise fight over its cache line.
    pub(super) fn record(&self, hashes: &[u64]) -> bool {
        for &hash in hashes {
            for counter in self.counters_of(hash) {
                let count = counter.load(Ordering::Relaxed);
                counter.store(count.saturating_add(1), Ordering::Relaxed);
            }
        }
        let before = self.reads.fetch_add(hashes.len() as u64, Ordering::Relaxed);
        let aged = before / self.aging_period != (before + hashes.len() as u64) / self.aging_period;
        if aged {
            for counter in self.counters() {
                counter.store(counter.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
        aged
    }

    /// The reads counted of the key of `hash`.
    pub(super) fn estimate(&self, hash: u64) -> u8 {
        self.counters_of(hash)
            .map(|counter| counter.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

pub(super) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashed(keys: &[u64]) -> Vec<u64> {
        keys.iter().map(|&k| splitmix64(k)).collect()
    }

    #[test]
    fn estimates_never_undercount_and_separate_hot_from_cold() {
        let sketch = FrequencySketch::new(1000);
        let hot: Vec<u64> = (0..100).collect();
        for _ in 0..5 {
            sketch.record(&hashed(&hot));
        }
        let cold: Vec<u64> = (10_000..11_000).collect();
        sketch.record(&hashed(&cold));
        assert!(hot.iter().all(|&k| sketch.estimate(splitmix64(k)) >= 5));
        assert!(cold.iter().all(|&k| sketch.estimate(splitmix64(k)) >= 1));
        let overcounted = cold
            .iter()
            .filter(|&&k| sketch.estimate(splitmix64(k)) >= 5)
            .count();
        assert!(overcounted < 10, "{overcounted} cold keys pass for hot");
    }

    #[test]
    fn counts_saturate_and_age() {
        let large = FrequencySketch::new(1 << 20);
        for _ in 0..300 {
            large.record(&[splitmix64(7)]);
        }
        assert_eq!(large.estimate(splitmix64(7)), u8::MAX);
        // Sized for one key: aged every 10 reads, so a key read 300 times one by one ends
        // between 5 and 15.
        let small = FrequencySketch::new(1);
        let aged = (0..300).filter(|_| small.record(&[splitmix64(7)])).count();
        assert_eq!(aged, 30);
        assert!(
            (5..=15).contains(&small.estimate(splitmix64(7))),
            "{}",
            small.estimate(splitmix64(7))
        );
    }
}
