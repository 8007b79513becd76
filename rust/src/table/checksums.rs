//! Row checksums, kept per block of rows as rows change, so that a scrub can tell a table's
//! bytes from what was written (a flipped bit on disk, a row or written mark changed by
//! anything but the engine).
//!
//! A sidecar file `<table>.sums` holds one little-endian u64 per block of [`BLOCK_ROWS`]
//! rows: the wrapping sum of [`row_hash`] over the block's written rows. A sum, unlike a
//! CRC of the block, can be updated from the changed row alone (subtract its old hash, add
//! its new one), so keeping it costs two hashes of each row an update writes, not a pass
//! over its block. Verifying a block recomputes its sum from its written rows. The file is
//! sparse like the table: blocks with no written row take no disk.

use crate::disk;
use crate::error::{Error, Result};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const BLOCK_ROWS: u64 = 64;
pub const SUMS_SUFFIX: &str = ".sums";

/// A hash of row `key`'s stored bytes (the key is mixed in, so that rows swapped between
/// keys do not cancel out). Each 8-byte word is mixed with its position and multiplied by an
/// odd constant, independently of the others, so that the multiplies overlap (a chained
/// hash would cost the latency of one multiply per word): any one flipped bit changes the
/// sum, since an odd multiplier maps a nonzero change to a nonzero change modulo 2^64.
pub fn row_hash(key: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    const POSITION: u64 = 0xD6E8_FEB8_6659_FD93;
    let mut lanes = [0u64; 4];
    let mut words = bytes.chunks_exact(32);
    let mut position = 0u64;
    for chunk in &mut words {
        for (lane, w) in lanes.iter_mut().zip(chunk.chunks_exact(8)) {
            position = position.wrapping_add(POSITION);
            let word = u64::from_le_bytes(w.try_into().unwrap());
            *lane = lane.wrapping_add((word ^ position).wrapping_mul(K));
        }
    }
    let mut tail = [0u8; 32];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    for (lane, w) in lanes.iter_mut().zip(tail.chunks_exact(8)) {
        position = position.wrapping_add(POSITION);
        let word = u64::from_le_bytes(w.try_into().unwrap());
        *lane = lane.wrapping_add((word ^ position).wrapping_mul(K));
    }
    let mut h = key.wrapping_mul(K) ^ bytes.len() as u64;
    for lane in lanes {
        h = (h ^ lane).wrapping_mul(K).rotate_left(31);
    }
    h ^ (h >> 29)
}

pub struct BlockSums {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    blocks: usize,
}

impl BlockSums {
    pub fn path_for(table: &Path) -> PathBuf {
        let mut name = table.as_os_str().to_owned();
        name.push(SUMS_SUFFIX);
        PathBuf::from(name)
    }

    /// Opens the sums of a table of `num_rows` rows, creating them (all zero: no row
    /// written) if `create`. Returns whether the file was there.
    pub fn open(table: &Path, num_rows: u64, create: bool) -> Result<(BlockSums, bool)> {
        let path = Self::path_for(table);
        let io = |e| Error::io(&path, e);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create || !existed)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let blocks = num_rows.div_ceil(BLOCK_ROWS) as usize;
        let len = (blocks * 8) as u64;
        let actual = file.metadata().map_err(io)?.len();
        if actual != len {
            if existed && actual != 0 {
                return Err(Error::format(
                    &path,
                    format!("row checksums hold {actual} bytes, expected {len}"),
                ));
            }
            file.set_len(len).map_err(io)?;
        }
        let map = MmapOptions::new().map_raw(&file).map_err(io)?;
        let sums = BlockSums {
            path,
            file,
            map,
            blocks,
        };
        Ok((sums, existed && actual == len))
    }

    fn word(&self, block: usize) -> &AtomicU64 {
        assert!(block < self.blocks);
        // SAFETY: in bounds, 8-aligned (page-aligned mapping); shared through atomics only.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(block * 8).cast()) }
    }

    pub fn block_of(key: u64) -> usize {
        (key / BLOCK_ROWS) as usize
    }

    /// Replaces `old` (the hash of what row `key` held, if it was written) by `new`.
    pub fn replace(&self, key: u64, old: Option<u64>, new: Option<u64>) {
        let delta = new.unwrap_or(0).wrapping_sub(old.unwrap_or(0));
        if delta != 0 {
            self.word(Self::block_of(key))
                .fetch_add(delta, Ordering::Relaxed);
        }
    }

    pub fn get(&self, block: usize) -> u64 {
        self.word(block).load(Ordering::Relaxed)
    }

    pub fn set(&self, block: usize, sum: u64) {
        self.word(block).store(sum, Ordering::Relaxed);
    }

    /// Blocks whose sum is not zero, ascending (only the stored parts are read).
    pub fn nonzero_blocks(&self) -> Vec<usize> {
        let len = (self.blocks * 8) as u64;
        let mut blocks = Vec::new();
        for range in disk::data_ranges(&self.file, 0, len) {
            for block in (range.start / 8) as usize..(range.end / 8) as usize {
                if block < self.blocks && self.get(block) != 0 {
                    blocks.push(block);
                }
            }
        }
        blocks
    }

    /// Reserves disk for the sums of the blocks of `keys` (see [`disk`]).
    pub fn reserve(&self, keys: impl Iterator<Item = u64>) -> Result<()> {
        let mut pages: Vec<u64> = keys
            .map(|k| Self::block_of(k) as u64 * 8 / disk::PAGE)
            .collect();
        disk::reserve_pages(&self.file, &self.path, &mut pages)
    }

    pub fn flush(&self) -> Result<()> {
        self.map.flush().map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_depend_on_every_byte_and_the_key() {
        let row = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        let base = row_hash(3, &row);
        assert_ne!(base, row_hash(4, &row));
        for i in 0..row.len() {
            for bit in 0..8 {
                let mut flipped = row;
                flipped[i] ^= 1 << bit;
                assert_ne!(row_hash(3, &flipped), base, "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn sums_follow_replacements_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("t.engram");
        let (sums, existed) = BlockSums::open(&table, 1000, true).unwrap();
        assert!(!existed);
        sums.replace(70, None, Some(5));
        sums.replace(71, None, Some(7));
        sums.replace(70, Some(5), Some(9));
        assert_eq!(sums.get(1), 16);
        assert_eq!(sums.nonzero_blocks(), vec![1]);
        sums.flush().unwrap();
        drop(sums);
        let (sums, existed) = BlockSums::open(&table, 1000, false).unwrap();
        assert!(existed);
        assert_eq!(sums.get(1), 16);
        assert!(
            BlockSums::open(&table, 5000, false).is_err(),
            "the wrong size is refused"
        );
    }
}
