//! A request's row keys, decoded once from where they arrived (a message's bytes, a shared
//! buffer, an array) and then handed to every call of that request without another copy.

use super::{detached, file_of_fd};
use crate::codec;
use crate::region;
use numpy::PyReadonlyArray1;
use pyo3::prelude::*;
use std::path::PathBuf;

#[pyclass(frozen, module = "store._native")]
pub(crate) struct Keys {
    pub(crate) values: Vec<u64>,
}

#[pymethods]
impl Keys {
    /// Keys packed little-endian as `dtype` ("uint64", or "int64" not negative).
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8], dtype: &str) -> PyResult<Self> {
        let values = detached(py, || codec::decode_keys_of(data, dtype))?;
        Ok(Keys { values })
    }

    /// `count` keys packed as `dtype` in the shared buffer open as `fd`, at `offset`: read
    /// straight from its mapping (the one copy the daemon makes of them).
    #[staticmethod]
    fn from_shared(
        py: Python<'_>,
        fd: i32,
        path: PathBuf,
        offset: u64,
        count: usize,
        dtype: &str,
    ) -> PyResult<Self> {
        let file = file_of_fd(fd)?;
        let len = count
            .checked_mul(8)
            .ok_or_else(|| pyo3::exceptions::PyOverflowError::new_err("too many keys"))?;
        let values = detached(py, || {
            region::with_region(&file, &path, offset, len, |bytes| {
                codec::decode_keys_of(bytes, dtype)
            })
        })?;
        Ok(Keys { values })
    }

    /// Keys from a uint64 array.
    #[staticmethod]
    fn from_array(keys: PyReadonlyArray1<'_, u64>) -> Self {
        Keys {
            values: super::owned(&keys),
        }
    }

    fn __len__(&self) -> usize {
        self.values.len()
    }
}
