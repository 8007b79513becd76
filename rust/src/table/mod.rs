//! Memory-mapped embedding tables.
//!
//! One file per table (see [`format`]). Readers share the mapping through a read lock;
//! writers take the write lock, so a reader sees each row either entirely before or entirely
//! after an update. Inside one update, the distinct keys are spread over threads, so that no
//! two threads ever touch the same row.

pub mod checksums;
pub mod engine_rows;
pub mod format;
mod groups;
pub mod hot_rows;
mod residency;

pub use groups::KeyGroups;

use crate::codec::{self, DType};
use crate::error::{Error, Result};
use crate::init::Initializer;
use crate::parallel;
use checksums::{row_hash, BlockSums, BLOCK_ROWS};
use format::{Header, Layout, HEADER_LEN};
use memmap2::{MmapMut, MmapOptions};
use rayon::prelude::*;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Rows per parallel task in gathers and updates: enough to amortise scheduling.
const ROWS_PER_TASK: usize = 512;
/// How many rows ahead a gather prefetches, and at most how many cache lines of each.
const PREFETCH_DISTANCE: usize = 12;
const MAX_PREFETCH_LINES: usize = 8;
/// Updates smaller than this run on the calling thread.
const PARALLEL_UPDATE_MIN_ROWS: usize = 4096;

/// A key an engine's gather answers with a zero row ([`Table::gather_engine_rows`]).
pub const NO_ROW: u64 = u64::MAX;

/// Where a mapped table's writes go: to its file, or (read-only media) nowhere but this
/// process's private copy of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    ToFile,
    Private,
}

/// How a table's rows will be used, for the kernel's paging of its mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Most rows are read, often (a table read whole, or served frozen): huge pages where the
    /// kernel offers them, so that random reads miss the TLB less. The default for tables
    /// that fit in half of this machine's memory.
    Dense,
    /// Rows are read and written here and there (a table under training, or one larger than
    /// memory): small pages and no read-ahead, so that page cache and writeback stay near the
    /// rows touched. With huge pages every row written dirties 2 MiB, and on a sparse file
    /// every first touch zero-fills as much; a table beyond memory read through huge pages
    /// reads megabytes from disk for each row.
    Sparse,
}

impl Access {
    /// Dense for a file that fits in half of this machine's memory, else Sparse.
    pub fn for_file_of(len: u64) -> Access {
        // SAFETY: sysconf only reads system configuration.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let memory = (pages.max(0) as u64).saturating_mul(page.max(0) as u64);
        if memory == 0 || len <= memory / 2 {
            Access::Dense
        } else {
            Access::Sparse
        }
    }
}

pub struct Table {
    path: PathBuf,
    file: File,
    header: Header,
    layout: Layout,
    map: RwLock<MmapMut>,
    /// Rows whose written bit is set, kept as bits change: describing a table must not scan
    /// its bitmap (a gigabyte for ten billion rows).
    written: AtomicU64,
    /// One bit per page of the dirty bitmap that may hold a set bit: a checkpoint looks
    /// for changed rows on these pages only.
    dirty_pages: Vec<AtomicU64>,
    /// Per-block checksums of the written rows, kept as rows change (see [`checksums`]);
    /// `None` for a table created without them (or before them).
    sums: Option<BlockSums>,
    /// Unique among the tables this process opens, so that a [`hot_rows::HotRowCache`]
    /// knows whose rows it holds.
    id: u64,
    /// Counts the times the mapping was taken for writing: a cache of rows read before a
    /// change sees it move.
    write_generation: AtomicU64,
}

/// The next [`Table`]'s `id`.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(0);

/// Rows covered by one page of a bitmap.
const ROWS_PER_BITMAP_PAGE: u64 = crate::disk::PAGE * 8;

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

/// A pointer into the mapping shared by update threads that write disjoint rows.
#[derive(Clone, Copy)]
struct SharedBase(*mut u8);
// SAFETY: threads only dereference it for rows assigned to them alone (disjoint bytes) and for
// bitmap bytes through atomics.
unsafe impl Send for SharedBase {}
unsafe impl Sync for SharedBase {}

impl Table {
    /// Creates a new table file; fails if `path` exists. Constant time and disk in the table
    /// size: the file is sparse and every row starts virtual.
    pub fn create(path: impl AsRef<Path>, header: Header) -> Result<Table> {
        Self::create_with(path, header, true)
    }

    /// [`Table::create`], keeping row checksums (see [`checksums`]) or not: they cost each
    /// update two hashes of the row, and buy `verify`.
    pub fn create_with(
        path: impl AsRef<Path>,
        header: Header,
        row_checksums: bool,
    ) -> Result<Table> {
        let path = path.as_ref();
        let layout = header.validate()?;
        let io = |e| Error::io(path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        let written = (|| {
            use std::io::Write;
            (&file).write_all(&header.encode())?;
            file.set_len(layout.file_len)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(io(e));
        }
        let sums = match row_checksums {
            true => Some(BlockSums::create(path, header.num_rows)?),
            false => {
                // Whatever a crashed creation left describes no row of this table.
                let _ = std::fs::remove_file(BlockSums::path_for(path));
                None
            }
        };
        Self::map(path, file, header, layout, sums, Writes::ToFile)
    }

    /// Opens an existing table, checking its header, checksum and size before mapping it.
    pub fn open(path: impl AsRef<Path>) -> Result<Table> {
        Self::open_with(path.as_ref(), Writes::ToFile)
    }

    /// Opens an existing table on read-only media (a snapshot that many daemons serve): the
    /// file is opened for reading only and mapped copy-on-write, so that the page cache is
    /// shared with every other reader and nothing can ever reach the file.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Table> {
        Self::open_with(path.as_ref(), Writes::Private)
    }

    fn open_with(path: &Path, writes: Writes) -> Result<Table> {
        let io = |e| Error::io(path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(writes == Writes::ToFile)
            .open(path)
            .map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut head = Vec::with_capacity(HEADER_LEN as usize);
        (&mut file)
            .take(HEADER_LEN)
            .read_to_end(&mut head)
            .map_err(io)?;
        let (header, layout) = Header::decode(path, &head, file_len)?;
        let sums = BlockSums::open(path, header.num_rows, writes)?;
        Self::map(path, file, header, layout, sums, writes)
    }

    fn map(
        path: &Path,
        file: File,
        header: Header,
        layout: Layout,
        sums: Option<BlockSums>,
        writes: Writes,
    ) -> Result<Table> {
        // SAFETY: the file's size was checked against the header; the mapping is private to
        // this process's Table and all access goes through the lock.
        let map = match writes {
            Writes::ToFile => unsafe { MmapOptions::new().map_mut(&file) },
            Writes::Private => unsafe { MmapOptions::new().map_copy(&file) },
        }
        .map_err(|e| Error::io(path, e))?;
        let bitmap_pages = header.num_rows.div_ceil(ROWS_PER_BITMAP_PAGE) as usize;
        let table = Table {
            path: path.to_path_buf(),
            file,
            header,
            layout,
            map: RwLock::new(map),
            written: AtomicU64::new(0),
            dirty_pages: (0..bitmap_pages.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            sums,
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            write_generation: AtomicU64::new(0),
        };
        table.set_access(Access::for_file_of(table.layout.file_len));
        table.count_bitmaps();
        Ok(table)
    }

    /// Counts the written rows and notes which dirty-bitmap pages hold a bit: once, when the
    /// table is opened, so that later calls need not scan. Only the parts of the bitmaps the
    /// file holds are read: a fresh table's are holes, and cost nothing.
    fn count_bitmaps(&self) {
        let map = self.read_map();
        let page = ROWS_PER_BITMAP_PAGE as usize / 8;
        let stored = |offset: u64| {
            let end = offset + self.bitmap_bytes() as u64;
            crate::disk::data_ranges(&self.file, offset, end)
                .into_iter()
                .map(move |r| (r.start - offset) as usize..(r.end - offset) as usize)
        };
        let mut written = 0;
        for range in stored(self.layout.bitmap_offset) {
            let bits = &map[self.layout.bitmap_offset as usize..][range];
            written += bits
                .par_chunks(page)
                .map(|c| c.iter().map(|b| u64::from(b.count_ones())).sum::<u64>())
                .sum::<u64>();
        }
        self.written.store(written, Ordering::Relaxed);
        for range in stored(self.layout.dirty_offset) {
            let first_page = range.start / page;
            let bits = &map[self.layout.dirty_offset as usize + first_page * page..]
                [..range.end - first_page * page];
            bits.par_chunks(page)
                .enumerate()
                .filter(|(_, c)| c.iter().any(|&b| b != 0))
                .for_each(|(i, _)| self.note_dirty_page(first_page + i));
        }
    }

    fn note_dirty_page(&self, page: usize) {
        let (word, bit) = (page / 64, 1u64 << (page % 64));
        if self.dirty_pages[word].load(Ordering::Relaxed) & bit == 0 {
            self.dirty_pages[word].fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Pages of the dirty bitmap that may hold a set bit, ascending.
    fn noted_dirty_pages(&self) -> Vec<usize> {
        let mut pages = Vec::new();
        for (w, word) in self.dirty_pages.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                pages.push(w * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
        pages
    }

    /// Tells the kernel how the rows will be used (see [`Access`]); only a hint.
    pub fn set_access(&self, access: Access) {
        use memmap2::Advice;
        let map = self.read_map();
        let advice = match access {
            Access::Dense => [Advice::Normal, Advice::HugePage],
            Access::Sparse => [Advice::NoHugePage, Advice::Random],
        };
        for a in advice {
            // Failure (an old kernel, no transparent huge pages) changes nothing else.
            let _ = map.advise(a);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn num_rows(&self) -> u64 {
        self.header.num_rows
    }
    pub fn dim(&self) -> usize {
        self.header.dim as usize
    }
    pub fn dtype(&self) -> DType {
        self.header.dtype
    }
    pub fn initializer(&self) -> Initializer {
        self.header.init
    }
    pub fn file_len(&self) -> u64 {
        self.layout.file_len
    }

    /// Bytes of the file the page cache holds: exact up to `max_probes` pages, estimated
    /// from that many pages spread over the file beyond (see [`residency`]).
    pub fn resident_bytes(&self, max_probes: usize) -> Result<u64> {
        // The lock is held only to read where the mapping lies: it lives as long as the table
        // and is never replaced, and mincore reads none of it, so pushes need not wait for
        // the probes.
        let (base, len) = {
            let map = self.read_map();
            (map.as_ptr(), map.len())
        };
        residency::resident_bytes(base, len, max_probes).map_err(|e| Error::io(&self.path, e))
    }

    fn read_map(&self) -> RwLockReadGuard<'_, MmapMut> {
        // A panic while holding the lock cannot leave a row half-written in a way the lock
        // would protect against (rows are written whole), so poisoning is ignored.
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self) -> RwLockWriteGuard<'_, MmapMut> {
        let guard = self.map.write().unwrap_or_else(|e| e.into_inner());
        // Under the write lock: a reader holding the read lock sees a stable generation.
        self.write_generation.fetch_add(1, Ordering::Relaxed);
        guard
    }

    /// Fails naming the first key that is not a row of this table.
    pub fn check_keys(&self, keys: &[u64]) -> Result<()> {
        match keys.iter().position(|&k| k >= self.header.num_rows) {
            None => Ok(()),
            Some(i) => Err(Error::out_of_range(format!(
                "keys[{i}] = {} is out of range for a table of {} rows",
                keys[i], self.header.num_rows
            ))),
        }
    }

    /// Gathers `keys` into `out` (`keys.len() x dim` elements of `out_dtype`, as bytes).
    /// Validates every key first: on error nothing is written.
    pub fn gather_into(&self, keys: &[u64], out_dtype: DType, out: &mut [u8]) -> Result<()> {
        let out_row = self.check_gather(keys, out_dtype, out.len())?;
        self.gather_rows(keys, out, out_row, |map, key, scratch, dst| {
            self.read_row(map, key, scratch, out_dtype, dst)
        });
        Ok(())
    }

    /// An engine's gather (see `client/engram_reader.py`): rows of `keys` into `out` as
    /// `out_dtype` (a float dtype), with a zero row for each key that is [`NO_ROW`] (a
    /// masked position, or an id this table does not hold). With `zero_byte_scales`, a
    /// group of FP8 values whose E8M0 scale byte is 0 reads as zeros, as vLLM decodes that
    /// byte; otherwise as 2^-127 times its codes, as torch's float8_e8m0fnu does.
    pub fn gather_engine_rows(
        &self,
        keys: &[u64],
        out_dtype: DType,
        out: &mut [u8],
        zero_byte_scales: bool,
    ) -> Result<()> {
        engine_rows::check_engine_dtype(out_dtype)?;
        if let Some(i) = keys
            .iter()
            .position(|&k| k != NO_ROW && k >= self.header.num_rows)
        {
            return Err(Error::out_of_range(format!(
                "keys[{i}] = {} is out of range for a table of {} rows",
                keys[i], self.header.num_rows
            )));
        }
        let out_row = self.check_gather(&[], out_dtype, 0)?;
        if out.len() != keys.len() * out_row {
            return Err(Error::invalid(format!(
                "out holds {} bytes, expected {} keys x {} x {}",
                out.len(),
                keys.len(),
                self.dim(),
                out_dtype.name()
            )));
        }
        let zero_groups = zero_byte_scales && self.header.dtype == DType::Fp8E4M3;
        let group_out = out_dtype.row_bytes(crate::quant::GROUP);
        self.gather_rows(keys, out, out_row, |map, key, scratch, dst| {
            if key == NO_ROW {
                dst.fill(0);
                return;
            }
            self.read_row(map, key, scratch, out_dtype, dst);
            if zero_groups && self.is_written_in(map, key) {
                let scales = &map[self.row_range(key)][self.dim()..];
                engine_rows::zero_groups_of_zero_scales(dst, scales, group_out);
            }
        });
        Ok(())
    }

    /// [`Table::gather_engine_rows`] of the rows `ids` (`[T, heads]`, with `mask`) name
    /// in a reader's share of a layer, this table holding exactly that share.
    pub fn gather_engine_ids(
        &self,
        share: &engine_rows::EngineRows,
        ids: &[i64],
        mask: Option<&[bool]>,
        out_dtype: DType,
        out: &mut [u8],
        zero_byte_scales: bool,
    ) -> Result<()> {
        if share.file_rows() != self.header.num_rows {
            return Err(Error::invalid(format!(
                "{} holds {} rows; the reader's heads or rows need {}",
                self.path.display(),
                self.header.num_rows,
                share.file_rows()
            )));
        }
        let keys = share.keys(ids, mask)?;
        self.gather_engine_rows(&keys, out_dtype, out, zero_byte_scales)
    }

    /// Fills each `out_row`-byte row of `out` with `read(map, key, scratch, row)` for its
    /// key, on the worker threads; keys are checked by the caller (a [`NO_ROW`] key is
    /// the caller's to answer, and is never prefetched).
    fn gather_rows(
        &self,
        keys: &[u64],
        out: &mut [u8],
        out_row: usize,
        read: impl Fn(&[u8], u64, &mut [f32], &mut [u8]) + Sync,
    ) {
        if keys.is_empty() {
            return;
        }
        let map = self.read_map();
        let map: &[u8] = &map;
        let task = |scratch: &mut Vec<f32>, (task_out, task_keys): (&mut [u8], &[u64])| {
            for (i, (dst, &key)) in task_out.chunks_mut(out_row).zip(task_keys).enumerate() {
                // Random rows miss every cache and the TLB: ask for later rows early so
                // their misses overlap this row's copy.
                if let Some(&ahead) = task_keys.get(i + PREFETCH_DISTANCE) {
                    if ahead != NO_ROW {
                        self.prefetch_row(map, ahead);
                    }
                }
                read(map, key, scratch, dst);
            }
        };
        if keys.len() <= ROWS_PER_TASK {
            // One task: handing it to the pool would only add a thread's wake-up to the
            // wait (tens of microseconds, longer than a decode step's gather).
            task(&mut vec![0f32; self.dim()], (out, keys));
            return;
        }
        out.par_chunks_mut(out_row * ROWS_PER_TASK)
            .zip(keys.par_chunks(ROWS_PER_TASK))
            .with_min_len(parallel::min_items_per_task())
            .for_each_init(|| vec![0f32; self.dim()], task);
    }

    /// Checks a gather's keys, output dtype and output size; returns the bytes of an
    /// output row.
    fn check_gather(&self, keys: &[u64], out_dtype: DType, out_len: usize) -> Result<usize> {
        let stored = self.header.dtype;
        if out_dtype.is_quantized() && stored.is_quantized() && out_dtype != stored {
            return Err(Error::invalid(format!(
                "rows stored as {} are read as stored or as a float dtype, not as {}",
                stored.name(),
                out_dtype.name()
            )));
        }
        // A float table of another width has no whole groups to quantize.
        out_dtype.check_dim(self.header.dim)?;
        let out_row = out_dtype.row_bytes(self.dim());
        if out_len != keys.len() * out_row {
            return Err(Error::invalid(format!(
                "out holds {out_len} bytes, expected {} keys x {} x {} = {}",
                keys.len(),
                self.dim(),
                out_dtype.name(),
                keys.len() * out_row
            )));
        }
        self.check_keys(keys)?;
        Ok(out_row)
    }

    fn prefetch_row(&self, map: &[u8], key: u64) {
        let range = self.row_range(key);
        let (bit_byte, _) = self.bit_position(key);
        prefetch(&map[bit_byte]);
        prefetch_lines(&map[range]);
    }

    /// Gathers `keys` as float32 values.
    pub fn gather(&self, keys: &[u64]) -> Result<Vec<f32>> {
        let mut out = vec![0f32; keys.len() * self.dim()];
        let bytes = bytes_of_f32_mut(&mut out);
        self.gather_into(keys, DType::F32, bytes)?;
        Ok(out)
    }

    fn row_range(&self, key: u64) -> std::ops::Range<usize> {
        let start = (self.layout.data_offset + key * self.layout.row_bytes) as usize;
        start..start + self.layout.row_bytes as usize
    }

    fn bit_position(&self, key: u64) -> (usize, u8) {
        (
            (self.layout.bitmap_offset + key / 8) as usize,
            1u8 << (key % 8),
        )
    }

    fn is_written_in(&self, map: &[u8], key: u64) -> bool {
        let (byte, mask) = self.bit_position(key);
        map[byte] & mask != 0
    }

    fn read_row(
        &self,
        map: &[u8],
        key: u64,
        scratch: &mut [f32],
        out_dtype: DType,
        dst: &mut [u8],
    ) {
        if self.is_written_in(map, key) {
            let stored = &map[self.row_range(key)];
            codec::convert_row(self.header.dtype, stored, out_dtype, dst, scratch);
        } else {
            self.initial_row(key, scratch);
            codec::encode_f32(out_dtype, scratch, dst);
        }
    }

    /// The value a never-written row reads as: the initializer's float32 values rounded to the
    /// storage dtype, so a virtual row reads exactly as it would once stored.
    fn initial_row(&self, key: u64, row: &mut [f32]) {
        self.header.init.fill_row(self.header.first_row + key, row);
        if self.header.dtype != DType::F32 {
            let mut stored = vec![0u8; self.header.dtype.row_bytes(row.len())];
            codec::encode_f32(self.header.dtype, row, &mut stored);
            codec::decode_to_f32(self.header.dtype, &stored, row);
        }
    }

    /// Whether each key has been stored (as opposed to reading its initial value).
    pub fn written(&self, keys: &[u64]) -> Result<Vec<bool>> {
        self.check_keys(keys)?;
        let map = self.read_map();
        Ok(keys.iter().map(|&k| self.is_written_in(&map, k)).collect())
    }

    /// Number of stored rows (kept up to date, not counted).
    pub fn written_count(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Allocates disk for the rows of `keys` that were never written, and for their bitmap
    /// bytes, so that storing them cannot fault on a full disk: a full disk then fails
    /// here, before anything changes. Rows already written have their blocks.
    pub fn reserve_unwritten(&self, keys: &[u64]) -> Result<()> {
        self.check_keys(keys)?;
        let unwritten: Vec<u64> = {
            let map = self.read_map();
            keys.iter()
                .copied()
                .filter(|&k| !self.is_written_in(&map, k))
                .collect()
        };
        if unwritten.is_empty() {
            return Ok(());
        }
        let page = crate::disk::PAGE;
        let mut pages = Vec::new();
        for &key in &unwritten {
            let rows = self.row_range(key);
            pages.extend(rows.start as u64 / page..=(rows.end as u64 - 1) / page);
            let (byte, _) = self.bit_position(key);
            pages.push(byte as u64 / page);
            pages.push((byte as u64 + self.layout.dirty_offset - self.layout.bitmap_offset) / page);
        }
        crate::disk::reserve_pages(&self.file, &self.path, &mut pages)?;
        match &self.sums {
            Some(sums) => sums.reserve(unwritten.into_iter()),
            None => Ok(()),
        }
    }

    /// Whether the table keeps row checksums (and so can be verified).
    pub fn has_row_checksums(&self) -> bool {
        self.sums.is_some()
    }

    /// The checksum of block `block` computed from its rows.
    fn block_sum(&self, map: &[u8], block: usize) -> u64 {
        let first = block as u64 * BLOCK_ROWS;
        let last = (first + BLOCK_ROWS).min(self.header.num_rows);
        (first..last)
            .filter(|&k| self.is_written_in(map, k))
            .fold(0u64, |sum, k| {
                sum.wrapping_add(row_hash(k, &map[self.row_range(k)]))
            })
    }

    /// Sets the checksums of the blocks of `keys` from their rows (after rows were put back
    /// by an undo, which may have found a row changed but its checksum not yet).
    pub fn recompute_sums(&self, keys: &[u64]) {
        let Some(sums) = &self.sums else {
            return;
        };
        let map = self.write_map();
        let mut blocks: Vec<usize> = keys.iter().map(|&k| BlockSums::block_of(k)).collect();
        blocks.sort_unstable();
        blocks.dedup();
        for block in blocks {
            sums.set(block, self.block_sum(&map, block));
        }
    }

    /// Checks every block holding a written row (or a checksum) against its rows; returns
    /// the first rows of the blocks that do not match, ascending (none for a table without
    /// checksums). Holds off updates while it reads.
    pub fn verify(&self) -> Vec<u64> {
        let Some(sums) = &self.sums else {
            return Vec::new();
        };
        let map = self.write_map();
        let mut blocks: Vec<usize> = self
            .written_keys_in(&map)
            .into_iter()
            .map(BlockSums::block_of)
            .chain(sums.nonzero_blocks())
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        blocks
            .into_par_iter()
            .filter(|&b| self.block_sum(&map, b) != sums.get(b))
            .map(|b| b as u64 * BLOCK_ROWS)
            .collect()
    }

    /// Applies `update(i, row)` to the float32 value of row `keys[i]` for every i, in order
    /// for repeated keys, then stores the rows. All keys are validated first, and the whole
    /// update happens under the write lock.
    pub fn update_rows<F>(&self, keys: &[u64], update: F) -> Result<()>
    where
        F: Fn(usize, &mut [f32]) + Sync,
    {
        self.update_row_groups(None, keys, EachOccurrence(update))
            .map(|_| ())
    }

    /// Updates each distinct row of `keys` once: `update(positions, row, state_row)` gets the
    /// positions in `keys` where that row's key occurs (in order), its float32 value, and the
    /// same row of the companion `state` table (optimizer state: same row count, its own
    /// width). Both tables are locked (this one first) for the whole update, and every key is
    /// validated before anything changes. Returns the number of distinct rows.
    pub fn update_row_groups(
        &self,
        state: Option<&Table>,
        keys: &[u64],
        update: impl GroupUpdate,
    ) -> Result<usize> {
        self.check_keys(keys)?;
        self.update_grouped(state, &KeyGroups::of(keys)?, update)
    }

    /// [`Table::update_row_groups`] on keys grouped beforehand (so that callers can group
    /// while they validate something else).
    pub fn update_grouped(
        &self,
        state: Option<&Table>,
        groups: &KeyGroups,
        update: impl GroupUpdate,
    ) -> Result<usize> {
        self.update_grouped_saving(state, groups, update, None)
    }

    /// [`Table::update_grouped`], handing each row (and state row) to `saver` as it was
    /// just before it changes: the group's index, its key, its stored bytes and whether it
    /// had been written.
    pub fn update_grouped_saving(
        &self,
        state: Option<&Table>,
        groups: &KeyGroups,
        update: impl GroupUpdate,
        saver: Option<&dyn RowSaver>,
    ) -> Result<usize> {
        self.check_keys(&groups.unique)?;
        if let Some(state) = state {
            if state.num_rows() != self.num_rows() {
                return Err(Error::invalid(format!(
                    "state table has {} rows, the table {}",
                    state.num_rows(),
                    self.num_rows()
                )));
            }
        }
        if groups.unique.is_empty() {
            return Ok(0);
        }
        self.reserve_unwritten(&groups.unique)?;
        if let Some(state) = state {
            state.reserve_unwritten(&groups.unique)?;
        }
        let params = self.writer();
        let state_rows = state.map(Table::writer);
        let state_dim = state.map_or(0, Table::dim);
        // Each task owns whole rows (distinct keys); bitmap bytes they share are set atomically.
        let update_task =
            |first_group: usize, task_keys: &[u64], (row, state_row): &mut (Vec<f32>, Vec<f32>)| {
                for (i, &key) in task_keys.iter().enumerate() {
                    if let Some(&ahead) = task_keys.get(i + PREFETCH_DISTANCE) {
                        params.prefetch(ahead);
                        if let Some(w) = &state_rows {
                            w.prefetch(ahead);
                        }
                        update.prefetch(groups.members(first_group + i + PREFETCH_DISTANCE));
                    }
                    let members = groups.members(first_group + i);
                    // SAFETY: keys are in range (checked above) and distinct, and each belongs
                    // to one task alone.
                    unsafe {
                        if let Some(saver) = saver {
                            let state = state_rows
                                .as_ref()
                                .map(|w| (&*w.row(key), w.is_written(key)));
                            saver.save(
                                first_group + i,
                                key,
                                (&*params.row(key), params.is_written(key)),
                                state,
                            );
                        }
                        params.modify(key, row, |row| match &state_rows {
                            Some(w) => {
                                w.modify(key, state_row, |state| update.update(members, row, state))
                            }
                            None => update.update(members, row, &mut []),
                        })
                    }
                }
            };
        let scratch = || (vec![0f32; self.dim()], vec![0f32; state_dim]);
        if groups.unique.len() < PARALLEL_UPDATE_MIN_ROWS {
            update_task(0, &groups.unique, &mut scratch());
        } else {
            groups
                .unique
                .par_chunks(ROWS_PER_TASK)
                .with_min_len(parallel::min_items_per_task())
                .enumerate()
                .for_each_init(scratch, |scratch, (task, task_keys)| {
                    update_task(task * ROWS_PER_TASK, task_keys, scratch)
                });
        }
        Ok(groups.unique.len())
    }

    fn writer(&self) -> RowWriter<'_> {
        let mut guard = self.write_map();
        let base = SharedBase(guard.as_mut_ptr());
        RowWriter {
            table: self,
            _guard: guard,
            base,
        }
    }

    fn bitmap_bytes(&self) -> usize {
        self.header.num_rows.div_ceil(8) as usize
    }

    /// The bytes of bitmap page `page` (of the bitmap at `offset`) and the first of them.
    fn bitmap_page(&self, offset: u64, page: usize) -> std::ops::Range<usize> {
        let bytes = ROWS_PER_BITMAP_PAGE as usize / 8;
        let start = page * bytes;
        let end = (start + bytes).min(self.bitmap_bytes());
        offset as usize + start..offset as usize + end
    }

    fn keys_in_bitmap(
        &self,
        map: &[u8],
        offset: u64,
        pages: impl Iterator<Item = usize>,
    ) -> Vec<u64> {
        let mut keys = Vec::new();
        for page in pages {
            let range = self.bitmap_page(offset, page);
            let first_byte = range.start - offset as usize;
            for (i, &byte) in map[range].iter().enumerate() {
                let mut rest = byte;
                while rest != 0 {
                    keys.push((first_byte + i) as u64 * 8 + u64::from(rest.trailing_zeros()));
                    rest &= rest - 1;
                }
            }
        }
        keys
    }

    fn bitmap_page_count(&self) -> usize {
        self.header.num_rows.div_ceil(ROWS_PER_BITMAP_PAGE) as usize
    }

    /// Keys of every stored row, ascending. Only the pages of the bitmap the file holds are
    /// read (the others are holes: no row there was ever written).
    pub fn written_keys(&self) -> Vec<u64> {
        self.written_keys_in(&self.read_map())
    }

    fn written_keys_in(&self, map: &[u8]) -> Vec<u64> {
        let start = self.layout.bitmap_offset;
        let page = ROWS_PER_BITMAP_PAGE / 8;
        let mut pages: Vec<usize> = Vec::new();
        for range in crate::disk::data_ranges(&self.file, start, start + self.bitmap_bytes() as u64)
        {
            let first = ((range.start - start) / page) as usize;
            let last = (range.end - start).div_ceil(page) as usize;
            pages.extend(first..last.min(self.bitmap_page_count()));
        }
        pages.dedup();
        self.keys_in_bitmap(map, start, pages.into_iter())
    }

    /// Keys of the rows stored since the dirty marks were last cleared, ascending. Only the
    /// pages of the dirty bitmap where a row was marked are read.
    pub fn dirty_keys(&self) -> Vec<u64> {
        let pages = self.noted_dirty_pages().into_iter();
        self.keys_in_bitmap(&self.read_map(), self.layout.dirty_offset, pages)
    }

    /// Forgets which rows changed (once a checkpoint has saved them).
    pub fn clear_dirty(&self) {
        let mut map = self.write_map();
        for page in self.noted_dirty_pages() {
            let range = self.bitmap_page(self.layout.dirty_offset, page);
            map[range].fill(0);
        }
        for word in &self.dirty_pages {
            word.store(0, Ordering::Relaxed);
        }
    }

    /// Puts back a row saved before an update that is being undone: its exact bytes and
    /// whether it had been written. Its dirty mark stays (a checkpoint then saves the row
    /// as it is, which is harmless).
    pub fn restore_row(&self, key: u64, bytes: &[u8], was_written: bool) -> Result<()> {
        self.check_keys(&[key])?;
        if bytes.len() != self.layout.row_bytes as usize {
            return Err(Error::invalid(format!(
                "a saved row of {} bytes does not fit rows of {}",
                bytes.len(),
                self.layout.row_bytes
            )));
        }
        let writer = self.writer();
        // SAFETY: in range (checked above); this thread is the only writer.
        unsafe {
            writer.store_raw(key, bytes);
            if !was_written {
                writer.clear_written(key);
            }
        }
        Ok(())
    }

    /// Raw stored bytes of `keys` (`keys.len()` rows of the storage dtype): exact copies for
    /// checkpoints. Never-written rows read as their initial value.
    pub fn read_raw_rows(&self, keys: &[u64]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; keys.len() * self.layout.row_bytes as usize];
        self.gather_into(keys, self.header.dtype, &mut out)?;
        Ok(out)
    }

    /// Stores raw row bytes (as from [`Table::read_raw_rows`]) exactly, marking them written.
    pub fn write_raw_rows(&self, keys: &[u64], rows: &[u8]) -> Result<()> {
        let row_bytes = self.layout.row_bytes as usize;
        if rows.len() != keys.len() * row_bytes {
            return Err(Error::invalid(format!(
                "rows hold {} bytes, expected {} keys x {row_bytes}",
                rows.len(),
                keys.len()
            )));
        }
        self.reserve_unwritten(keys)?;
        let writer = self.writer();
        for (&key, row) in keys.iter().zip(rows.chunks_exact(row_bytes)) {
            // SAFETY: in range (checked above); this thread is the only writer.
            unsafe { writer.store_raw(key, row) };
        }
        Ok(())
    }

    /// Adds `values` (`keys.len() x dim`) to the rows; repeated keys accumulate.
    pub fn scatter_add(&self, keys: &[u64], values: &[f32]) -> Result<()> {
        self.check_values(keys, values)?;
        let dim = self.dim();
        self.update_rows(keys, |i, row| {
            for (r, v) in row.iter_mut().zip(&values[i * dim..(i + 1) * dim]) {
                *r += v;
            }
        })
    }

    /// Overwrites the rows with `values` (`keys.len() x dim`); for a repeated key the last wins.
    pub fn write_rows(&self, keys: &[u64], values: &[f32]) -> Result<()> {
        self.check_values(keys, values)?;
        let dim = self.dim();
        self.update_rows(keys, |i, row| {
            row.copy_from_slice(&values[i * dim..(i + 1) * dim])
        })
    }

    fn check_values(&self, keys: &[u64], values: &[f32]) -> Result<()> {
        if values.len() != keys.len() * self.dim() {
            return Err(Error::invalid(format!(
                "values hold {} elements, expected {} keys x dim {} = {}",
                values.len(),
                keys.len(),
                self.dim(),
                keys.len() * self.dim()
            )));
        }
        Ok(())
    }

    /// Makes every stored row durable (msync of the mapping). Updates go on meanwhile: the
    /// lock is held only to read where the mapping lies (it lives as long as the table and
    /// is never replaced), not through the writeback, which takes as long as the dirty
    /// pages take to reach the disk.
    pub fn flush(&self) -> Result<()> {
        let (base, len) = {
            let map = self.read_map();
            (map.as_ptr(), map.len())
        };
        // SAFETY: the mapping lives as long as `self`, which this borrow keeps alive.
        unsafe { crate::disk::write_back(base, len, &self.path) }?;
        self.sums.as_ref().map_or(Ok(()), BlockSums::flush)
    }
}

/// Keeps the rows an update is about to change (see [`Table::update_grouped_saving`]).
/// Called from several threads at once, each time for another group.
pub trait RowSaver: Sync {
    /// `row` and `state` are (stored bytes, whether written) of row `key`, group `group`.
    fn save(&self, group: usize, key: u64, row: (&[u8], bool), state: Option<(&[u8], bool)>);
}

/// What [`Table::update_row_groups`] does to each distinct row.
pub trait GroupUpdate: Sync {
    /// Updates one row (and its state row) given the positions of its key in the update.
    fn update(&self, positions: &[u32], row: &mut [f32], state: &mut [f32]);

    /// Called a few rows ahead of `update` for the same positions, to start loading its
    /// inputs (the update's rows are visited in a scattered order).
    fn prefetch(&self, _positions: &[u32]) {}
}

/// [`Table::update_rows`]' update: each occurrence of a key in turn.
struct EachOccurrence<F>(F);

impl<F: Fn(usize, &mut [f32]) + Sync> GroupUpdate for EachOccurrence<F> {
    fn update(&self, positions: &[u32], row: &mut [f32], _state: &mut [f32]) {
        for &i in positions {
            (self.0)(i as usize, row);
        }
    }
}

/// Exclusive access to a table's rows for one update. Rows may be loaded and stored from
/// several threads at once as long as no two threads touch the same row.
struct RowWriter<'a> {
    table: &'a Table,
    _guard: RwLockWriteGuard<'a, MmapMut>,
    base: SharedBase,
}

impl RowWriter<'_> {
    /// # Safety
    /// `key` must be in range and its row not accessed by another thread meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, key: u64) -> &mut [u8] {
        let range = self.table.row_range(key);
        std::slice::from_raw_parts_mut(self.base.0.add(range.start), range.len())
    }

    /// The dirty-bitmap byte matching a written-bitmap byte.
    fn dirty_byte(&self, written_byte: usize) -> usize {
        let layout = &self.table.layout;
        written_byte + (layout.dirty_offset - layout.bitmap_offset) as usize
    }

    /// Asks for a row (and its bitmap bytes) ahead of its update; `key` must be in range.
    fn prefetch(&self, key: u64) {
        let range = self.table.row_range(key);
        let (byte, _) = self.table.bit_position(key);
        // SAFETY: the offsets lie inside the mapping (key in range); prefetching reads nothing.
        unsafe {
            prefetch_ptr(self.base.0.add(byte));
            prefetch_ptr(self.base.0.add(self.dirty_byte(byte)));
            for line in (range.start..range.end)
                .step_by(64)
                .take(MAX_PREFETCH_LINES)
            {
                prefetch_ptr(self.base.0.add(line));
            }
        }
    }

    /// Whether `key`'s row holds stored values (rather than reading as its initial value).
    ///
    /// # Safety
    /// `key` must be in range.
    unsafe fn is_written(&self, key: u64) -> bool {
        let (byte, mask) = self.table.bit_position(key);
        self.bitmap_byte(byte).load(Ordering::Relaxed) & mask != 0
    }

    /// Runs `f` on the float32 values of row `key`, then stores them and marks the row. A
    /// float32 table's row is changed in place; other dtypes go through `scratch`.
    ///
    /// # Safety
    /// As for [`RowWriter::row`].
    unsafe fn modify(&self, key: u64, scratch: &mut [f32], f: impl FnOnce(&mut [f32])) {
        let written = self.is_written(key);
        let sums = self.table.sums.as_ref();
        let old = match sums {
            Some(_) if written => Some(row_hash(key, self.row(key))),
            _ => None,
        };
        let dtype = self.table.header.dtype;
        if dtype == DType::F32 {
            let bytes = self.row(key);
            // SAFETY: rows of a float32 table start 4-aligned (page-aligned data, whole
            // float32 rows), and any bit pattern is a valid f32.
            let values =
                std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<f32>(), bytes.len() / 4);
            if !written {
                self.table.initial_row(key, values);
            }
            f(values);
        } else {
            if written {
                codec::decode_to_f32(dtype, self.row(key), scratch);
            } else {
                self.table.initial_row(key, scratch);
            }
            f(scratch);
            codec::encode_f32(dtype, scratch, self.row(key));
        }
        if let Some(sums) = sums {
            sums.replace(key, old, Some(row_hash(key, self.row(key))));
        }
        self.mark_stored(key);
    }

    /// # Safety
    /// As for [`RowWriter::row`].
    unsafe fn store_raw(&self, key: u64, bytes: &[u8]) {
        if let Some(sums) = &self.table.sums {
            let old = self.is_written(key).then(|| row_hash(key, self.row(key)));
            sums.replace(key, old, Some(row_hash(key, bytes)));
        }
        self.row(key).copy_from_slice(bytes);
        self.mark_stored(key);
    }

    /// # Safety
    /// `key` must be in range.
    unsafe fn mark_stored(&self, key: u64) {
        let (byte, mask) = self.table.bit_position(key);
        // Tasks of one update share bitmap bytes; reading first skips the locked write for
        // rows already marked (most rows of a training run).
        let written = self.bitmap_byte(byte);
        if written.load(Ordering::Relaxed) & mask == 0
            && written.fetch_or(mask, Ordering::Relaxed) & mask == 0
        {
            self.table.written.fetch_add(1, Ordering::Relaxed);
        }
        let dirty = self.bitmap_byte(self.dirty_byte(byte));
        if dirty.load(Ordering::Relaxed) & mask == 0 {
            dirty.fetch_or(mask, Ordering::Relaxed);
            self.table
                .note_dirty_page((key / ROWS_PER_BITMAP_PAGE) as usize);
        }
    }

    /// # Safety
    /// `key` must be in range.
    unsafe fn clear_written(&self, key: u64) {
        let (byte, mask) = self.table.bit_position(key);
        if self.bitmap_byte(byte).fetch_and(!mask, Ordering::Relaxed) & mask != 0 {
            self.table.written.fetch_sub(1, Ordering::Relaxed);
            if let Some(sums) = &self.table.sums {
                sums.replace(key, Some(row_hash(key, self.row(key))), None);
            }
        }
    }

    /// # Safety
    /// `offset` must be a bitmap byte of the mapping.
    unsafe fn bitmap_byte(&self, offset: usize) -> &AtomicU8 {
        AtomicU8::from_ptr(self.base.0.add(offset))
    }
}

#[inline(always)]
fn prefetch(byte: &u8) {
    prefetch_ptr(byte);
}

/// Prefetches the first cache lines of `row` (at most [`MAX_PREFETCH_LINES`]).
fn prefetch_lines(row: &[u8]) {
    for line in row.chunks(64).take(MAX_PREFETCH_LINES) {
        prefetch(&line[0]);
    }
}

/// A hint to start loading the cache line of `ptr`; it never faults.
#[inline(always)]
pub(crate) fn prefetch_ptr(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint that cannot fault, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// Converts signed keys, naming the first negative one.
pub fn keys_from_i64(keys: &[i64]) -> Result<Vec<u64>> {
    match keys.iter().position(|&k| k < 0) {
        None => Ok(keys.iter().map(|&k| k as u64).collect()),
        Some(i) => Err(Error::out_of_range(format!(
            "keys[{i}] = {} is negative",
            keys[i]
        ))),
    }
}

fn bytes_of_f32_mut(values: &mut [f32]) -> &mut [u8] {
    // SAFETY: f32 has no invalid bit patterns and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), values.len() * 4) }
}

#[cfg(test)]
mod tests;
