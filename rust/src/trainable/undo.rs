//! A table's undo log: the rows the push in progress is changing, as they were before.
//!
//! A push changes rows in place in the mapped files; a crash of the process in the middle
//! leaves some rows changed and others not. Before each row changes, its stored bytes (and
//! its optimizer state row's) are copied here, tagged with the push's token. On restart, a
//! push whose journal record is missing (see [`crate::journal`]) is undone by copying the
//! saved rows back; so is a push whose record could not be written (a full disk).
//!
//! ```text
//! offset 0     magic "ENGRMUND" | token u64 | count u64 | rolled_back u64   (one page)
//! 4096 + i*E   entry i: tag u64 | key u64 | flags u64 | row bytes | state row bytes
//! ```
//! E is the entry size rounded up to 8 bytes; flag bit 0: the row had been written, bit 1:
//! the state row had. An entry belongs to the push whose token it carries: a push killed
//! halfway has written some entries, and the others still hold an older push's. The token
//! is stored after everything else, in the header and in each entry, so a reader never
//! takes a half-written one for complete. The file is only ever extended by reserved
//! (fallocated) space, so writing it cannot fault on a full disk.

use crate::disk;
use crate::error::{Error, Result};
use crate::table::{RowSaver, Table};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const UNDO_FILE: &str = "undo.engram";
const MAGIC: [u8; 8] = *b"ENGRMUND";
const HEADER: usize = 4096;
const ENTRY_HEAD: usize = 24;

pub struct UndoLog {
    path: PathBuf,
    /// None on read-only media, where no push may begin.
    file: Option<File>,
    map: MmapRaw,
    row_bytes: usize,
    state_bytes: usize,
}

impl std::fmt::Debug for UndoLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UndoLog").field("path", &self.path).finish()
    }
}

/// A saved row, as recovery puts it back.
pub struct SavedRow<'a> {
    pub key: u64,
    pub row: &'a [u8],
    pub row_written: bool,
    pub state: &'a [u8],
    pub state_written: bool,
}

impl UndoLog {
    /// Opens the undo log in `dir`, creating an empty one if there is none.
    pub fn open(dir: &Path, row_bytes: usize, state_bytes: usize) -> Result<UndoLog> {
        let path = dir.join(UNDO_FILE);
        let io = |e| Error::io(&path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() < HEADER as u64 {
            file.set_len(HEADER as u64).map_err(io)?;
            disk::reserve(&file, &path, 0, HEADER as u64)?;
        }
        let map = MmapOptions::new().map_raw(&file).map_err(io)?;
        let log = UndoLog {
            path,
            file: Some(file),
            map,
            row_bytes,
            state_bytes,
        };
        if log.bytes(0, 8) != MAGIC {
            if log.word(1).load(Ordering::Acquire) != 0 {
                return Err(Error::format(&log.path, "not an undo log (bad magic)"));
            }
            log.bytes_mut(0, 8).copy_from_slice(&MAGIC);
        }
        Ok(log)
    }

    /// The undo log of a table on read-only media: the one there, mapped copy-on-write (or
    /// an empty one in memory). Recovery reads it; a push cannot begin.
    pub fn open_read_only(dir: &Path, row_bytes: usize, state_bytes: usize) -> Result<UndoLog> {
        let path = dir.join(UNDO_FILE);
        let io = |e| Error::io(&path, e);
        let map = match File::open(&path) {
            Ok(file) if file.metadata().map_err(io)?.len() >= HEADER as u64 => {
                // SAFETY: a private copy-on-write mapping; nothing else maps it here.
                unsafe { MmapOptions::new().map_copy(&file) }.map_err(io)?
            }
            Ok(_) => memmap2::MmapMut::map_anon(HEADER).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                memmap2::MmapMut::map_anon(HEADER).map_err(io)?
            }
            Err(e) => return Err(io(e)),
        };
        Ok(UndoLog {
            path,
            file: None,
            map: MmapRaw::from(map),
            row_bytes,
            state_bytes,
        })
    }

    fn entry_bytes(&self) -> usize {
        (ENTRY_HEAD + self.row_bytes + self.state_bytes).div_ceil(8) * 8
    }

    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.map.len());
        // SAFETY: in bounds (checked); pushes write the log under their table's push lock.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(offset), len) }
    }

    #[allow(clippy::mut_from_ref)]
    fn bytes_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.map.len());
        // SAFETY: in bounds (checked); each caller writes bytes no other thread touches.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(offset), len) }
    }

    /// The `i`-th u64 of the file; `8 * i` must lie inside the mapping.
    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(8 * i + 8 <= self.map.len());
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned).
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(8 * i).cast()) }
    }

    /// The token of the last push that started here (0: none).
    pub fn token(&self) -> u64 {
        self.word(1).load(Ordering::Acquire)
    }

    fn count(&self) -> usize {
        self.word(2).load(Ordering::Acquire) as usize
    }

    pub fn rolled_back(&self) -> bool {
        self.word(3).load(Ordering::Acquire) != 0
    }

    /// Starts saving the rows of push `token`, which changes `count` rows: makes room
    /// (reserving disk, which is where a full disk fails), then records the push.
    pub fn begin(&mut self, token: u64, count: usize) -> Result<()> {
        let needed = HEADER + count * self.entry_bytes();
        let Some(file) = &self.file else {
            return Err(Error::invalid(format!(
                "{}: the table is on read-only media: pushes are refused",
                self.path.display()
            )));
        };
        if needed > self.map.len() {
            // Grow by half again, so that slowly growing pushes do not remap each time.
            let size = needed.max(self.map.len() + self.map.len() / 2) as u64;
            let io = |e| Error::io(&self.path, e);
            let old = self.map.len() as u64;
            file.set_len(size).map_err(io)?;
            if let Err(e) = disk::reserve(file, &self.path, old, size - old) {
                let _ = file.set_len(old);
                return Err(e);
            }
            self.map = MmapOptions::new().map_raw(file).map_err(io)?;
        }
        self.word(3).store(0, Ordering::Release);
        self.word(2).store(count as u64, Ordering::Release);
        self.word(1).store(token, Ordering::Release);
        Ok(())
    }

    /// The rows saved for the current push, to put back.
    pub fn saved(&self) -> impl Iterator<Item = SavedRow<'_>> {
        let token = self.token();
        let size = self.entry_bytes();
        let count = self
            .count()
            .min(self.map.len().saturating_sub(HEADER) / size);
        (0..count).filter_map(move |i| {
            let at = HEADER + i * size;
            if self.word(at / 8).load(Ordering::Acquire) != token {
                return None;
            }
            let key = self.word(at / 8 + 1).load(Ordering::Relaxed);
            let flags = self.word(at / 8 + 2).load(Ordering::Relaxed);
            let row_at = at + ENTRY_HEAD;
            Some(SavedRow {
                key,
                row: self.bytes(row_at, self.row_bytes),
                row_written: flags & 1 != 0,
                state: self.bytes(row_at + self.row_bytes, self.state_bytes),
                state_written: flags & 2 != 0,
            })
        })
    }

    /// Marks the current push as undone, so that it is not undone again.
    pub fn mark_rolled_back(&self) {
        self.word(3).store(1, Ordering::Release);
    }

    /// Puts back every row the current push saved, in `params` and `state`.
    pub fn roll_back(&self, params: &Table, state: Option<&Table>) -> Result<usize> {
        let mut keys = Vec::new();
        for saved in self.saved() {
            params.restore_row(saved.key, saved.row, saved.row_written)?;
            if let Some(state) = state {
                state.restore_row(saved.key, saved.state, saved.state_written)?;
            }
            keys.push(saved.key);
        }
        // A crash may have come between a row's change and its checksum's.
        params.recompute_sums(&keys);
        if let Some(state) = state {
            state.recompute_sums(&keys);
        }
        self.mark_rolled_back();
        Ok(keys.len())
    }
}

impl RowSaver for UndoLog {
    fn save(&self, group: usize, key: u64, row: (&[u8], bool), state: Option<(&[u8], bool)>) {
        let at = HEADER + group * self.entry_bytes();
        let row_at = at + ENTRY_HEAD;
        self.bytes_mut(row_at, self.row_bytes)
            .copy_from_slice(row.0);
        let mut flags = u64::from(row.1);
        if let Some((state, written)) = state {
            self.bytes_mut(row_at + self.row_bytes, self.state_bytes)
                .copy_from_slice(state);
            flags |= u64::from(written) << 1;
        }
        self.word(at / 8 + 1).store(key, Ordering::Relaxed);
        self.word(at / 8 + 2).store(flags, Ordering::Relaxed);
        // Last, so that an entry carrying the token is complete.
        self.word(at / 8).store(self.token(), Ordering::Release);
    }
}
