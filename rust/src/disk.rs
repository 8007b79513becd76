//! Reserving disk space for sparse files that are written through a mapping.
//!
//! A store to a never-allocated page of a shared file mapping allocates its block when the
//! page is first written; on a full disk that fails with SIGBUS, which kills the process.
//! Reserving the blocks first turns a full disk into an error the caller can answer.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

pub const PAGE: u64 = 4096;

/// Writes back the dirty pages of the shared file mapping at `base..base + len` and waits for
/// them (`msync(MS_SYNC)`). It takes the address alone, not a borrow of the mapping, so that
/// a caller need not hold the lock that guards the mapping's rows through the writeback:
/// writes that go on meanwhile are safe, and are written back now or by the next call.
///
/// # Safety
/// `base..base + len` must be a mapping that stays mapped until this returns.
pub unsafe fn write_back(base: *const u8, len: usize, path: &Path) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the caller keeps the range mapped; msync only reads the page tables.
    let rc = unsafe { libc::msync(base as *mut libc::c_void, len, libc::MS_SYNC) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::io(path, std::io::Error::last_os_error()))
    }
}

/// Allocates the blocks of `offset..offset + len` of `file` without changing its contents or
/// size. Filesystems that cannot reserve (no `fallocate`) are
/// let through: they allocate on write as before.
pub fn reserve(file: &File, path: &Path, offset: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(start), Ok(count)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(Error::invalid(format!(
            "cannot reserve {len} bytes at {offset}"
        )));
    };
    // SAFETY: a plain syscall on an open descriptor; KEEP_SIZE leaves the file's length as it
    // is (a page reserved past the end of a small file does not grow it), and existing data
    // is never touched.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, start, count) };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(Error::io(path, error)),
    }
}

/// Reserves every page of `pages` (page numbers, any order, repeats allowed), one call per
/// run of consecutive pages.
pub fn reserve_pages(file: &File, path: &Path, pages: &mut Vec<u64>) -> Result<()> {
    pages.sort_unstable();
    pages.dedup();
    let mut i = 0;
    while i < pages.len() {
        let mut j = i + 1;
        while j < pages.len() && pages[j] == pages[j - 1] + 1 {
            j += 1;
        }
        reserve(file, path, pages[i] * PAGE, (j - i) as u64 * PAGE)?;
        i = j;
    }
    Ok(())
}

/// The parts of `start..end` of `file` that hold data, as the filesystem reports them (holes
/// of a sparse file read as zeros and are left out). Where the filesystem cannot tell, the
/// whole range.
pub fn data_ranges(file: &File, start: u64, end: u64) -> Vec<std::ops::Range<u64>> {
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: i32| -> Option<u64> {
        // SAFETY: lseek on an open descriptor; it only moves the file offset.
        let at = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        (at >= 0).then_some(at as u64)
    };
    let mut ranges = Vec::new();
    let mut at = start;
    while at < end {
        let Some(data) = seek(at, libc::SEEK_DATA) else {
            // ENXIO: no data after `at`; anything else: the filesystem cannot say.
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO) {
                return std::iter::once(start..end).collect();
            }
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE).unwrap_or(end).min(end);
        ranges.push(data..hole);
        at = hole;
    }
    ranges
}

/// Whether an I/O error means the disk (or its quota) is full.
pub fn is_full(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn data_ranges_skip_holes() {
        use std::os::unix::fs::FileExt;
        let named = tempfile::NamedTempFile::new().unwrap();
        let file = named.as_file();
        file.set_len(1024 * PAGE).unwrap();
        file.write_all_at(b"x", 100 * PAGE + 7).unwrap();
        let ranges = data_ranges(file, 0, 1024 * PAGE);
        assert!(ranges.iter().any(|r| r.contains(&(100 * PAGE + 7))));
        let covered: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(covered < 1024 * PAGE, "holes are skipped: {ranges:?}");
        assert!(data_ranges(file, 200 * PAGE, 300 * PAGE).is_empty());
    }

    #[test]
    fn reserving_allocates_without_changing_size_or_contents() {
        let named = tempfile::NamedTempFile::new().unwrap();
        let file = named.as_file();
        file.set_len(64 * PAGE).unwrap();
        let before = file.metadata().unwrap().blocks();
        let mut pages = vec![9, 3, 4, 3, 40];
        reserve_pages(file, named.path(), &mut pages).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 64 * PAGE);
        assert!(meta.blocks() >= before + 4 * PAGE / 512);
        assert!(std::fs::read(named.path()).unwrap().iter().all(|&b| b == 0));
    }
}
