//! Bindings of memory-mapped tables.

use super::engine_rows::EngineRows;
use super::hot_rows::HotRowCache;
use super::{bytes_mut, detached, invalid_argument, owned, owned_rows, parse_dtype, parse_header};
use crate::codec::DType;
use crate::init::Initializer;
use crate::table;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray2,
};
use pyo3::prelude::*;
use std::path::PathBuf;

/// A memory-mapped embedding table.
#[pyclass(frozen, module = "store._native")]
pub(crate) struct Table {
    inner: table::Table,
}

#[pymethods]
impl Table {
    #[staticmethod]
    #[pyo3(signature = (
        path, num_rows, dim, dtype="float32", init="normal", std=0.02, seed=0, first_row=0
    ))]
    #[allow(clippy::too_many_arguments)]
    fn create(
        py: Python<'_>,
        path: PathBuf,
        num_rows: u64,
        dim: u64,
        dtype: &str,
        init: &str,
        std: f64,
        seed: u64,
        first_row: u64,
    ) -> PyResult<Self> {
        let header = parse_header(num_rows, dim, dtype, init, std, seed, first_row)?;
        let inner = detached(py, || table::Table::create(&path, header))?;
        Ok(Table { inner })
    }

    /// Opens a table file; with `read_only`, for reading only, mapped copy-on-write (a file
    /// that many processes read through one page cache, or on read-only media).
    #[staticmethod]
    #[pyo3(signature = (path, read_only=false))]
    fn open(py: Python<'_>, path: PathBuf, read_only: bool) -> PyResult<Self> {
        let inner = detached(py, || match read_only {
            true => table::Table::open_read_only(&path),
            false => table::Table::open(&path),
        })?;
        Ok(Table { inner })
    }

    /// The key an engine's gather answers with a zero row.
    #[classattr]
    const NO_ROW: u64 = table::NO_ROW;

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }
    #[getter]
    fn num_rows(&self) -> u64 {
        self.inner.num_rows()
    }
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }
    #[getter]
    fn init(&self) -> &'static str {
        match self.inner.initializer() {
            Initializer::Zeros => "zeros",
            Initializer::Normal { .. } => "normal",
            Initializer::Constant(_) => "constant",
        }
    }
    #[getter]
    fn std(&self) -> f64 {
        match self.inner.initializer() {
            Initializer::Zeros | Initializer::Constant(_) => 0.0,
            Initializer::Normal { std, .. } => std,
        }
    }
    #[getter]
    fn seed(&self) -> u64 {
        match self.inner.initializer() {
            Initializer::Zeros | Initializer::Constant(_) => 0,
            Initializer::Normal { seed, .. } => seed,
        }
    }
    #[getter]
    fn file_len(&self) -> u64 {
        self.inner.file_len()
    }
    #[getter]
    fn first_row(&self) -> u64 {
        self.inner.header().first_row
    }

    /// Gathers rows into `out`, a C-contiguous array of float32 (for `dtype="float32"`),
    /// uint16 holding float16 / bfloat16 bits, or uint8 holding packed quantized rows;
    /// through `cache` when given.
    #[pyo3(signature = (keys, out, dtype, cache=None))]
    fn gather_into(
        &self,
        py: Python<'_>,
        keys: PyReadonlyArray1<'_, u64>,
        out: &Bound<'_, PyAny>,
        dtype: &str,
        cache: Option<PyRef<'_, HotRowCache>>,
    ) -> PyResult<()> {
        let dtype = parse_dtype(dtype)?;
        let keys = owned(&keys);
        let cache = cache.as_deref().map(|cache| &cache.inner);
        let gather = |bytes: &mut [u8]| match cache {
            Some(cache) => self.inner.gather_cached(&keys, dtype, bytes, cache),
            None => self.inner.gather_into(&keys, dtype, bytes),
        };
        if dtype == DType::F32 {
            let mut out: PyReadwriteArray2<'_, f32> = out.extract()?;
            let bytes = bytes_mut(out.as_slice_mut()?);
            detached(py, || gather(bytes))
        } else if dtype.is_quantized() {
            let mut out: PyReadwriteArray2<'_, u8> = out.extract()?;
            let bytes = out.as_slice_mut()?;
            detached(py, || gather(bytes))
        } else {
            let mut out: PyReadwriteArray2<'_, u16> = out.extract()?;
            let bytes = bytes_mut(out.as_slice_mut()?);
            detached(py, || gather(bytes))
        }
    }

    /// An engine's gather: the rows `ids` (`[T, heads]` int64, C-contiguous) name in the
    /// reader's share `share` (this file holding exactly it) into `out` (float32, or uint16
    /// holding 16-bit float bits), a zero row where the share holds none or `token_mask` is
    /// false; with `zero_byte_scales`, FP8 groups whose scale byte is 0 read as zeros.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (share, ids, token_mask, out, dtype, zero_byte_scales))]
    fn gather_engine_ids(
        &self,
        py: Python<'_>,
        share: PyRef<'_, EngineRows>,
        ids: PyReadonlyArray2<'_, i64>,
        token_mask: Option<PyReadonlyArray1<'_, bool>>,
        out: &Bound<'_, PyAny>,
        dtype: &str,
        zero_byte_scales: bool,
    ) -> PyResult<()> {
        let dtype = parse_dtype(dtype)?;
        let share: &EngineRows = &share;
        let ids = ids.as_slice()?;
        let mask = token_mask.as_ref().map(|m| m.as_slice()).transpose()?;
        let gather = |bytes: &mut [u8]| {
            self.inner
                .gather_engine_ids(share, ids, mask, dtype, bytes, zero_byte_scales)
        };
        into_engine_out(py, out, dtype, gather)
    }

    fn scatter_add(
        &self,
        py: Python<'_>,
        keys: PyReadonlyArray1<'_, u64>,
        values: PyReadonlyArray2<'_, f32>,
    ) -> PyResult<()> {
        let (keys, values) = (owned(&keys), owned_rows(&values));
        detached(py, || self.inner.scatter_add(&keys, &values))
    }

    fn write_rows(
        &self,
        py: Python<'_>,
        keys: PyReadonlyArray1<'_, u64>,
        values: PyReadonlyArray2<'_, f32>,
    ) -> PyResult<()> {
        let (keys, values) = (owned(&keys), owned_rows(&values));
        detached(py, || self.inner.write_rows(&keys, &values))
    }

    /// Stores rows packed as the table stores them (`[len(keys), row bytes]` uint8).
    fn write_packed(
        &self,
        py: Python<'_>,
        keys: PyReadonlyArray1<'_, u64>,
        rows: PyReadonlyArray2<'_, u8>,
    ) -> PyResult<()> {
        let (keys, rows) = (owned(&keys), owned_rows(&rows));
        detached(py, || self.inner.write_raw_rows(&keys, &rows))
    }

    fn written<'py>(
        &self,
        py: Python<'py>,
        keys: PyReadonlyArray1<'py, u64>,
    ) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let keys = owned(&keys);
        let flags = detached(py, || self.inner.written(&keys))?;
        Ok(flags.into_pyarray(py))
    }

    fn written_count(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.inner.written_count())
    }

    /// How the rows will be read: "dense" (huge pages, read-ahead) or "sparse" (small pages,
    /// no read-ahead: for tables larger than memory). Opening picks by the file's size.
    fn set_access(&self, access: &str) -> PyResult<()> {
        let access = match access {
            "dense" => table::Access::Dense,
            "sparse" => table::Access::Sparse,
            other => {
                return Err(invalid_argument(format!(
                    "access must be 'dense' or 'sparse', got {other:?}"
                )))
            }
        };
        self.inner.set_access(access);
        Ok(())
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || self.inner.flush())
    }

    fn __repr__(&self) -> String {
        format!(
            "Table(path={:?}, num_rows={}, dim={}, dtype={:?})",
            self.inner.path(),
            self.inner.num_rows(),
            self.inner.dim(),
            self.inner.dtype().name()
        )
    }
}

/// Signed keys -> unsigned keys, naming the first negative one.
#[pyfunction]
pub(crate) fn keys_from_int64<'py>(
    py: Python<'py>,
    keys: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<u64>>> {
    let keys = owned(&keys);
    let out = detached(py, || table::keys_from_i64(&keys))?;
    Ok(out.into_pyarray(py))
}

/// Rows stored as `stored` (`[n, row bytes]` uint8, a quantized row's values then its
/// scales) as float32 `[n, dim]`, exactly.
#[pyfunction]
pub(crate) fn rows_to_float32<'py>(
    py: Python<'py>,
    stored: &str,
    dim: usize,
    rows: PyReadonlyArray2<'py, u8>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let dtype = parse_dtype(stored)?;
    let count = rows.as_array().nrows();
    let packed = rows.as_slice()?;
    let mut values = vec![0f32; count * dim];
    detached(py, || {
        crate::codec::rows_to_f32(dtype, dim, packed, &mut values)
    })?;
    Ok(numpy::ndarray::Array2::from_shape_vec((count, dim), values)
        .map_err(|e| invalid_argument(e.to_string()))?
        .into_pyarray(py))
}

/// Runs `gather` with the GIL released on the bytes of an engine's `out`: float32, or
/// uint16 holding 16-bit float bits.
pub(crate) fn into_engine_out(
    py: Python<'_>,
    out: &Bound<'_, PyAny>,
    dtype: DType,
    gather: impl FnOnce(&mut [u8]) -> crate::Result<()> + Send,
) -> PyResult<()> {
    if dtype == DType::F32 {
        let mut out: PyReadwriteArray2<'_, f32> = out.extract()?;
        let bytes = bytes_mut(out.as_slice_mut()?);
        detached(py, || gather(bytes))
    } else {
        let mut out: PyReadwriteArray2<'_, u16> = out.extract()?;
        let bytes = bytes_mut(out.as_slice_mut()?);
        detached(py, || gather(bytes))
    }
}
