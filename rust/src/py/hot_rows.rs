//! Binding of the hot-row cache.

use super::to_py_err;
use crate::table::hot_rows;
use pyo3::prelude::*;

/// A cache of a table's most-read rows (see `table::hot_rows`), passed to `Table.gather_into`.
#[pyclass(frozen, module = "store._native")]
pub(crate) struct HotRowCache {
    pub(crate) inner: hot_rows::HotRowCache,
}

#[pymethods]
impl HotRowCache {
    #[new]
    #[pyo3(signature = (capacity_bytes, admit_after=2))]
    fn new(capacity_bytes: usize, admit_after: u8) -> PyResult<Self> {
        let inner = hot_rows::HotRowCache::new(capacity_bytes, admit_after).map_err(to_py_err)?;
        Ok(HotRowCache { inner })
    }

    #[getter]
    fn capacity_bytes(&self) -> usize {
        self.inner.capacity_bytes()
    }

    #[getter]
    fn bytes_used(&self) -> usize {
        self.inner.bytes_used()
    }

    /// (hits, misses, admissions, evictions) since the cache was made or cleared.
    fn stats(&self) -> (u64, u64, u64, u64) {
        let s = self.inner.stats();
        (s.hits, s.misses, s.admissions, s.evictions)
    }

    fn clear(&self, py: Python<'_>) {
        py.detach(|| self.inner.clear());
    }
}
