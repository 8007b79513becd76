//! `EngineRows` for Python: one engine reader's share of an Engram layer (see
//! [`crate::table::engine_rows`]).

use super::table::into_engine_out;
use super::{detached, parse_dtype, to_py_err};
use crate::table::engine_rows;
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use std::ops::Deref;

#[pyclass(frozen, module = "store._native")]
pub(crate) struct EngineRows {
    inner: engine_rows::EngineRows,
}

impl Deref for EngineRows {
    type Target = engine_rows::EngineRows;
    fn deref(&self) -> &engine_rows::EngineRows {
        &self.inner
    }
}

#[pymethods]
impl EngineRows {
    /// A reader of the heads `heads = (start, stop)`, of the global rows `rows = (start,
    /// stop)`, or of the whole layer; `local_ids`: ids are per-head local ids.
    #[new]
    #[pyo3(signature = (head_sizes, heads=None, rows=None, local_ids=false))]
    fn new(
        head_sizes: Vec<u64>,
        heads: Option<(usize, usize)>,
        rows: Option<(u64, u64)>,
        local_ids: bool,
    ) -> PyResult<Self> {
        let inner = engine_rows::EngineRows::new(
            &head_sizes,
            heads.map(|(start, stop)| start..stop),
            rows.map(|(start, stop)| start..stop),
            local_ids,
        )
        .map_err(to_py_err)?;
        Ok(EngineRows { inner })
    }

    #[getter]
    fn file_rows(&self) -> u64 {
        self.inner.file_rows()
    }
    #[getter]
    fn first_row(&self) -> u64 {
        self.inner.first_row()
    }
    #[getter]
    fn heads(&self) -> usize {
        self.inner.heads()
    }
    #[getter]
    fn columns_read(&self) -> usize {
        self.inner.columns_read()
    }

    /// The file key of each read `(t, head)` of `ids` (`[T, heads]` int64, C-contiguous),
    /// `Table.NO_ROW` where the file holds none or `token_mask[t]` is false.
    #[pyo3(signature = (ids, token_mask=None))]
    fn keys<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArray2<'py, i64>,
        token_mask: Option<PyReadonlyArray1<'py, bool>>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let ids = ids.as_slice()?;
        let mask = token_mask.as_ref().map(|m| m.as_slice()).transpose()?;
        let keys = detached(py, || self.inner.keys(ids, mask))?;
        Ok(keys.into_pyarray(py))
    }
}

/// An engine's rows from rows a daemon answered as stored (`stored` dtype, `dim` values;
/// `fetched`: their bytes, one row for each key of `keys` that is not `Table.NO_ROW`, in
/// order): into `out` (float32, or uint16 holding 16-bit float bits, as `dtype`).
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (keys, stored, dim, fetched, out, dtype, zero_byte_scales))]
pub(crate) fn decode_engine_rows(
    py: Python<'_>,
    keys: PyReadonlyArray1<'_, u64>,
    stored: &str,
    dim: usize,
    fetched: PyReadonlyArray1<'_, u8>,
    out: &Bound<'_, PyAny>,
    dtype: &str,
    zero_byte_scales: bool,
) -> PyResult<()> {
    let (stored, out_dtype) = (parse_dtype(stored)?, parse_dtype(dtype)?);
    let (keys, fetched) = (keys.as_slice()?, fetched.as_slice()?);
    into_engine_out(py, out, out_dtype, |bytes| {
        engine_rows::decode_engine_rows(
            keys,
            stored,
            dim,
            fetched,
            out_dtype,
            bytes,
            zero_byte_scales,
        )
    })
}
