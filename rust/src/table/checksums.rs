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

use super::Writes;
use crate::disk;
use crate::error::{Error, Result};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const BLOCK_ROWS: u64 = 64;
pub const SUMS_SUFFIX: &str = ".sums";

/// A hash of row `key`'s stored bytes (the key is mixed in, so that rows swapped between
/// keys do not cancel out). The words, each xored with a constant of its position, are
/// summed in four lanes: any one flipped bit changes its word's term by a power of two and
/// so the sum, and the loop is a few vector adds per cache line (the hash runs twice for
/// every row a push writes, so a chained multiply per word would cost as much as the
/// update). The lanes and the key are then mixed.
pub fn row_hash(key: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    const POSITION: [u64; 4] = [
        0xD6E8_FEB8_6659_FD93,
        0xA076_1D64_78BD_642F,
        0xE703_7ED1_A0B4_28DB,
        0x8EBC_6AF0_9C88_C6E3,
    ];
    let mut lanes = [0u64; 4];
    let mut chunks = bytes.chunks_exact(32);
    let mut add = |chunk: &[u8], round: u64| {
        for (i, (lane, w)) in lanes.iter_mut().zip(chunk.chunks_exact(8)).enumerate() {
            let word = u64::from_le_bytes(w.try_into().unwrap());
            *lane = lane.wrapping_add(word ^ POSITION[i].wrapping_add(round));
        }
    };
    let mut round = 0u64;
    for chunk in &mut chunks {
        add(chunk, round);
        round += 1;
    }
    let mut tail = [0u8; 32];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    add(&tail, round);
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

    /// Creates the sums of a new table of `num_rows` rows (all zero: no row written),
    /// replacing whatever a crashed creation left.
    pub fn create(table: &Path, num_rows: u64) -> Result<BlockSums> {
        let path = Self::path_for(table);
        let _ = std::fs::remove_file(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Self::map(path, file, num_rows, Writes::ToFile)
    }

    /// Opens the sums of a table of `num_rows` rows; `None` for a table kept without them.
    pub fn open(table: &Path, num_rows: u64, writes: Writes) -> Result<Option<BlockSums>> {
        let path = Self::path_for(table);
        let writable = writes == Writes::ToFile;
        match OpenOptions::new().read(true).write(writable).open(&path) {
            Ok(file) => Self::map(path, file, num_rows, writes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn map(path: PathBuf, file: File, num_rows: u64, writes: Writes) -> Result<BlockSums> {
        let io = |e| Error::io(&path, e);
        let blocks = num_rows.div_ceil(BLOCK_ROWS) as usize;
        let len = (blocks * 8) as u64;
        let actual = file.metadata().map_err(io)?.len();
        if actual == 0 && writes == Writes::ToFile {
            file.set_len(len).map_err(io)?;
        } else if actual != len {
            return Err(Error::format(
                &path,
                format!("row checksums hold {actual} bytes, expected {len}"),
            ));
        }
        let map = match writes {
            Writes::ToFile => MmapOptions::new().map_raw(&file),
            // SAFETY: a private copy-on-write mapping; nothing else maps it.
            Writes::Private => unsafe { MmapOptions::new().map_copy(&file) }.map(MmapRaw::from),
        }
        .map_err(io)?;
        Ok(BlockSums {
            path,
            file,
            map,
            blocks,
        })
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
        assert!(BlockSums::open(&table, 1000, Writes::ToFile)
            .unwrap()
            .is_none());
        let sums = BlockSums::create(&table, 1000).unwrap();
        sums.replace(70, None, Some(5));
        sums.replace(71, None, Some(7));
        sums.replace(70, Some(5), Some(9));
        assert_eq!(sums.get(1), 16);
        assert_eq!(sums.nonzero_blocks(), vec![1]);
        sums.flush().unwrap();
        drop(sums);
        let sums = BlockSums::open(&table, 1000, Writes::ToFile)
            .unwrap()
            .unwrap();
        assert_eq!(sums.get(1), 16);
        assert!(
            BlockSums::open(&table, 5000, Writes::ToFile).is_err(),
            "the wrong size is refused"
        );
        assert_eq!(BlockSums::create(&table, 1000).unwrap().get(1), 0);
    }
}
