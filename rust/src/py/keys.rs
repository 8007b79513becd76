//! `Keys` for Python: a request's keys (see [`crate::keys`]), made from a message's bytes,
//! a shared region or an array.

use super::detached;
use super::shared_region::SharedRegion;
use crate::keys;
use numpy::PyReadonlyArray1;
use pyo3::prelude::*;
use std::ops::Deref;

#[pyclass(frozen, module = "store._native")]
pub(crate) struct Keys {
    inner: keys::Keys,
}

impl Keys {
    pub(crate) fn new(inner: keys::Keys) -> Self {
        Keys { inner }
    }
}

impl Deref for Keys {
    type Target = keys::Keys;
    fn deref(&self) -> &keys::Keys {
        &self.inner
    }
}

#[pymethods]
impl Keys {
    /// Keys packed little-endian as `dtype` ("uint64", or "int64" not negative).
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8], dtype: &str) -> PyResult<Self> {
        detached(py, || keys::Keys::decode(data, dtype).map(Keys::new))
    }

    /// `count` keys packed as `dtype` at the start of a shared region: read straight from
    /// its mapping (the one copy the daemon makes of them).
    #[staticmethod]
    fn from_shared(
        py: Python<'_>,
        region: PyRef<'_, SharedRegion>,
        count: usize,
        dtype: &str,
    ) -> PyResult<Self> {
        let len = count
            .checked_mul(8)
            .ok_or_else(|| pyo3::exceptions::PyOverflowError::new_err("too many keys"))?;
        let region: &SharedRegion = &region;
        detached(py, || {
            region.with_bytes(len, |bytes| keys::Keys::decode(bytes, dtype).map(Keys::new))
        })
    }

    /// Keys from a uint64 array.
    #[staticmethod]
    fn from_array(keys: PyReadonlyArray1<'_, u64>) -> Self {
        Keys::new(keys::Keys::new(super::owned(&keys)))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}
