//! Byte ranges of callers' shared-memory files.
//!
//! Same-machine clients can hand the daemon a shared buffer instead of shipping rows through
//! the RPC: lookups gather straight into it and pushes read gradients from it in place, so
//! the bulk data never crosses a socket. A client reuses its buffers batch after batch, and
//! mapping 16 MB costs as much as gathering into it, so mappings are kept (up to
//! [`MAX_MAPPINGS`], least recently used first out) and found again by the file's identity.
//! Holding a mapping keeps its inode alive, so an identity cannot be reused by another file
//! while it is cached.

use crate::error::{Error, Result};
use memmap2::{MmapOptions, MmapRaw};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

pub const MAX_MAPPINGS: usize = 64;

/// A shared buffer starts with a header: this magic, then a token of [`BUFFER_TOKEN_BYTES`]
/// random bytes that requests naming the buffer must repeat (proof that the client can read
/// the file), padded to [`BUFFER_HEADER_BYTES`]. Requests name ranges after it.
pub const BUFFER_MAGIC: &[u8; 8] = b"ENGRMBUF";
pub const BUFFER_TOKEN_BYTES: usize = 16;
pub const BUFFER_HEADER_BYTES: u64 = 64;

struct Mapping {
    map: MmapRaw,
    /// The mapped file, to notice when its last name is gone.
    file: File,
    /// Serialises calls on one buffer: two requests naming the same buffer never write it
    /// at the same time.
    in_use: Mutex<()>,
}

#[derive(Default)]
struct Mappings {
    /// (device, inode) -> (mapping, last use).
    by_file: HashMap<(u64, u64), (Arc<Mapping>, u64)>,
    clock: u64,
}

fn mappings() -> &'static Mutex<Mappings> {
    static MAPPINGS: OnceLock<Mutex<Mappings>> = OnceLock::new();
    MAPPINGS.get_or_init(Default::default)
}

/// The whole file mapped, from the cache or freshly.
fn mapping_of(file: &File, path: &Path) -> Result<Arc<Mapping>> {
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let id = (meta.dev(), meta.ino());
    let mut cache = mappings().lock().unwrap_or_else(|e| e.into_inner());
    cache.clock += 1;
    let now = cache.clock;
    if let Some((mapping, last_use)) = cache.by_file.get_mut(&id) {
        // A file that grew since is mapped again below.
        if mapping.map.len() as u64 == meta.len() {
            *last_use = now;
            return Ok(mapping.clone());
        }
    }
    if meta.len() == 0 {
        return Err(Error::invalid(format!(
            "shared buffer {} is empty",
            path.display()
        )));
    }
    let map = MmapOptions::new()
        .populate()
        .map_raw(file)
        .map_err(|e| Error::io(path, e))?;
    let mapping = Arc::new(Mapping {
        map,
        file: file.try_clone().map_err(|e| Error::io(path, e))?,
        in_use: Mutex::new(()),
    });
    // A client replaces a buffer it outgrew by a new file and removes the old one; its
    // memory lives on while mapped here, so let go of files nobody can name any more.
    cache
        .by_file
        .retain(|_, (cached, _)| cached.file.metadata().is_ok_and(|m| m.nlink() > 0));
    if cache.by_file.len() >= MAX_MAPPINGS && !cache.by_file.contains_key(&id) {
        let oldest = cache
            .by_file
            .iter()
            .min_by_key(|(_, (_, used))| *used)
            .map(|(k, _)| *k);
        if let Some(oldest) = oldest {
            cache.by_file.remove(&oldest);
        }
    }
    cache.by_file.insert(id, (mapping.clone(), now));
    Ok(mapping)
}

fn checked_range(
    path: &Path,
    size: u64,
    offset: u64,
    len: usize,
) -> Result<std::ops::Range<usize>> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(offset as usize..end as usize),
        _ => Err(Error::invalid(format!(
            "shared buffer {} holds {size} bytes, too few for {len} bytes at offset {offset}",
            path.display()
        ))),
    }
}

/// Runs `f` on `len` writable bytes at `offset` of `file` (named `path` in errors).
pub fn with_region_mut<T>(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> Result<T>,
) -> Result<T> {
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let range = checked_range(path, size, offset, len)?;
    if len == 0 {
        return f(&mut []);
    }
    let mapping = mapping_of(file, path)?;
    let _exclusive = mapping.in_use.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the range lies inside the mapping (checked against the file size, which the
    // mapping matches), and `in_use` keeps other calls of this process off these bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(mapping.map.as_mut_ptr().add(range.start), range.len())
    };
    f(bytes)
}

/// Runs `f` on `len` bytes at `offset` of `file`, read in place.
pub fn with_region<T>(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    with_region_mut(file, path, offset, len, |bytes| f(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn writes_and_reads_unaligned_ranges() {
        let mut file = tempfile::tempfile().unwrap();
        file.set_len(10_000).unwrap();
        let path = Path::new("buffer");
        with_region_mut(&file, path, 4099, 3, |bytes| {
            bytes.copy_from_slice(b"abc");
            Ok(())
        })
        .unwrap();
        let mut back = [0u8; 3];
        file.seek(SeekFrom::Start(4099)).unwrap();
        file.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"abc");
        file.seek(SeekFrom::Start(7)).unwrap();
        file.write_all(b"xyz").unwrap();
        let read = with_region(&file, path, 7, 3, |bytes| Ok(bytes.to_vec())).unwrap();
        assert_eq!(read, b"xyz");
    }

    #[test]
    fn mappings_are_reused_and_follow_growth() {
        // A named file: mappings of removed ones are dropped whenever another file is mapped.
        let named = tempfile::NamedTempFile::new().unwrap();
        let (file, path) = (named.as_file(), named.path());
        file.set_len(4096).unwrap();
        let first = mapping_of(file, path).unwrap();
        assert!(Arc::ptr_eq(&first, &mapping_of(file, path).unwrap()));
        file.set_len(8192).unwrap();
        let grown = mapping_of(file, path).unwrap();
        assert_eq!(grown.map.len(), 8192);
        with_region_mut(file, path, 8000, 192, |b| {
            b.fill(7);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn mappings_of_removed_files_are_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let old_path = dir.path().join("old");
        let old = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&old_path)
            .unwrap();
        old.set_len(4096).unwrap();
        mapping_of(&old, &old_path).unwrap();
        let old_id = {
            let meta = old.metadata().unwrap();
            (meta.dev(), meta.ino())
        };
        let held = || mappings().lock().unwrap().by_file.contains_key(&old_id);
        assert!(held());
        std::fs::remove_file(&old_path).unwrap();
        let new_path = dir.path().join("new");
        let new = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&new_path)
            .unwrap();
        new.set_len(8192).unwrap();
        mapping_of(&new, &new_path).unwrap();
        assert!(!held(), "the removed file's mapping is still cached");
    }

    #[test]
    fn ranges_past_the_end_are_refused() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(100).unwrap();
        let err = with_region(&file, Path::new("b"), 90, 20, |_| Ok(())).unwrap_err();
        assert!(err
            .to_string()
            .contains("holds 100 bytes, too few for 20 bytes at offset 90"));
        assert!(with_region(&file, Path::new("b"), u64::MAX, 2, |_| Ok(())).is_err());
        assert!(with_region_mut(&file, Path::new("b"), 100, 0, |b| Ok(b.len())).is_ok());
    }
}
