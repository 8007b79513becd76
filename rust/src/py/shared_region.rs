//! Where a same-machine request's keys, rows or gradients lie: a range of a shared buffer
//! the daemon checked and opened (see `store/shared_buffers.py`).

use super::file_of_fd;
use crate::region;
use crate::Result;
use pyo3::prelude::*;
use std::fs::File;
use std::path::PathBuf;

#[pyclass(frozen, module = "store._native")]
pub(crate) struct SharedRegion {
    file: File,
    path: PathBuf,
    offset: u64,
}

#[pymethods]
impl SharedRegion {
    /// The bytes from `offset` of the buffer open as `fd` (duplicated: the region stays
    /// usable after the caller closes `fd`), named `path` in errors.
    #[new]
    fn new(fd: i32, path: PathBuf, offset: u64) -> PyResult<Self> {
        Ok(SharedRegion {
            file: file_of_fd(fd)?,
            path,
            offset,
        })
    }
}

impl SharedRegion {
    /// Runs `f` on the region's first `len` bytes, mapped in place.
    pub(crate) fn with_bytes<T>(
        &self,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> Result<T>,
    ) -> Result<T> {
        region::with_region_mut(&self.file, &self.path, self.offset, len, f)
    }
}
