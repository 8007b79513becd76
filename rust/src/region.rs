//! A byte range of a caller's file, mapped for the duration of one call.
//!
//! Same-machine clients can hand the daemon a shared-memory file instead of shipping rows
//! through the RPC: lookups gather straight into it and pushes read gradients from it in
//! place, so the bulk data never crosses a socket.

use crate::error::{Error, Result};
use memmap2::MmapOptions;
use std::fs::File;
use std::path::Path;

fn check_fits(file: &File, path: &Path, offset: u64, len: usize) -> Result<()> {
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|end| end > size) {
        return Err(Error::invalid(format!(
            "shared buffer {} holds {size} bytes, too few for {len} bytes at offset {offset}",
            path.display()
        )));
    }
    Ok(())
}

/// Runs `f` on `len` writable bytes at `offset` of `file` (named `path` in errors).
pub fn with_region_mut<T>(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> Result<T>,
) -> Result<T> {
    check_fits(file, path, offset, len)?;
    if len == 0 {
        return f(&mut []);
    }
    // SAFETY: the range lies inside the file (checked above). Another process writing the same
    // bytes meanwhile can only garble its own buffer's contents.
    let mut map = unsafe {
        MmapOptions::new()
            .offset(offset)
            .len(len)
            .populate()
            .map_mut(file)
    }
    .map_err(|e| Error::io(path, e))?;
    f(&mut map)
}

/// Runs `f` on `len` bytes at `offset` of `file`, read in place.
pub fn with_region<T>(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    check_fits(file, path, offset, len)?;
    if len == 0 {
        return f(&[]);
    }
    // SAFETY: as above; the bytes are only read.
    let map = unsafe {
        MmapOptions::new()
            .offset(offset)
            .len(len)
            .populate()
            .map(file)
    }
    .map_err(|e| Error::io(path, e))?;
    f(&map)
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
