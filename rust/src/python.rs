//! The PyO3 binding, `store._native`: type conversion, GIL release and error mapping only.
//!
//! Inputs are copied into owned buffers before the GIL is released (a numpy view may be
//! mutated by another Python thread meanwhile); outputs are either numpy arrays handed over
//! without copying or caller-provided arrays written in place.

use crate::codec::DType;
use crate::error::Error;
use crate::hash::{self, primes};
use crate::init::Initializer;
use crate::table::{self, format::Header};
use numpy::{
    IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray2,
    PyReadwriteArray4, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyIndexError, PyOSError, PyValueError};
use pyo3::prelude::*;
use std::path::PathBuf;

create_exception!(
    _native,
    StoreError,
    PyException,
    "Base class of Engram Store errors."
);
create_exception!(
    _native,
    TableFormatError,
    StoreError,
    "A table file is not a valid Engram Store table (bad magic, version, checksum or size)."
);

fn to_py_err(err: Error) -> PyErr {
    match err {
        Error::InvalidArgument(msg) => PyValueError::new_err(msg),
        Error::OutOfRange(msg) => PyIndexError::new_err(msg),
        Error::Format { .. } => TableFormatError::new_err(err.to_string()),
        Error::Io { path, source } => {
            // OSError(errno, strerror, filename) picks the matching subclass
            // (FileNotFoundError, FileExistsError, ...).
            let errno = source.raw_os_error().unwrap_or(0);
            PyOSError::new_err((errno, source.to_string(), path))
        }
    }
}

/// Runs an engine call with the GIL released and maps its error.
fn detached<T, F>(py: Python<'_>, call: F) -> PyResult<T>
where
    F: FnOnce() -> crate::Result<T> + Send,
    T: Send,
{
    py.detach(call).map_err(to_py_err)
}

fn owned<T: numpy::Element + Copy>(array: &PyReadonlyArray1<'_, T>) -> Vec<T> {
    array.as_array().iter().copied().collect()
}

fn parse_dtype(name: &str) -> PyResult<DType> {
    DType::parse(name).map_err(to_py_err)
}

/// Hash kernel for one model configuration (every Engram layer).
#[pyclass(frozen, module = "store._native")]
struct NgramHasher {
    inner: hash::NgramHasher,
}

#[pymethods]
impl NgramHasher {
    #[new]
    #[pyo3(signature = (max_ngram_size, n_head_per_ngram, pad_id, multipliers, primes, lookup=None))]
    fn new(
        max_ngram_size: usize,
        n_head_per_ngram: usize,
        pad_id: i64,
        multipliers: Vec<Vec<i64>>,
        primes: Vec<Vec<u64>>,
        lookup: Option<PyReadonlyArray1<'_, i64>>,
    ) -> PyResult<Self> {
        let lookup = lookup.map(|l| owned(&l));
        hash::NgramHasher::new(
            max_ngram_size,
            n_head_per_ngram,
            pad_id,
            multipliers,
            primes,
            lookup,
        )
        .map(|inner| NgramHasher { inner })
        .map_err(to_py_err)
    }

    /// Hashes `[B, T]` raw token ids into `out`, a C-contiguous int64
    /// `[layers, B, T, heads_per_layer]` array (allocated by numpy, which backs large arrays
    /// with huge pages: faulting in fresh 4 KiB pages would cost more than the hashing).
    fn hash_into(
        &self,
        py: Python<'_>,
        input_ids: PyReadonlyArray2<'_, i64>,
        mut out: PyReadwriteArray4<'_, i64>,
    ) -> PyResult<()> {
        let (batch, seq) = (input_ids.shape()[0], input_ids.shape()[1]);
        let ids: Vec<i64> = input_ids.as_array().iter().copied().collect();
        let out = out.as_slice_mut()?;
        detached(py, || self.inner.hash_into(&ids, batch, seq, out))
    }

    #[getter]
    fn heads_per_layer(&self) -> usize {
        self.inner.heads_per_layer()
    }
}

/// `sizes[layer][order - 2][head]`: the reference's prime table sizes.
#[pyfunction]
fn table_sizes(
    py: Python<'_>,
    vocab_sizes: Vec<u64>,
    n_head_per_ngram: usize,
    n_layers: usize,
) -> PyResult<Vec<Vec<Vec<u64>>>> {
    if let Some(bad) = vocab_sizes.iter().find(|&&v| v < 1) {
        return Err(PyValueError::new_err(format!(
            "engram_vocab_size entries must be positive, got {bad}"
        )));
    }
    py.detach(|| primes::table_sizes(&vocab_sizes, n_head_per_ngram, n_layers))
        .ok_or_else(|| PyValueError::new_err("no 64-bit prime table size above engram_vocab_size"))
}

/// Raw token ids -> compressed ids through `lookup`; negative ids pass through.
#[pyfunction]
fn compress_ids<'py>(
    py: Python<'py>,
    ids: PyReadonlyArray1<'py, i64>,
    lookup: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (ids, lookup) = (owned(&ids), owned(&lookup));
    let out = detached(py, || hash::compress_ids(&ids, &lookup))?;
    Ok(out.into_pyarray(py))
}

/// A memory-mapped embedding table.
#[pyclass(frozen, module = "store._native")]
struct Table {
    inner: table::Table,
}

#[pymethods]
impl Table {
    #[staticmethod]
    #[pyo3(signature = (path, num_rows, dim, dtype="float32", init="normal", std=0.02, seed=0))]
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
    ) -> PyResult<Self> {
        let init = match init {
            "normal" => Initializer::normal(std, seed).map_err(to_py_err)?,
            "zeros" => Initializer::Zeros,
            other => {
                return Err(PyValueError::new_err(format!(
                    "init must be 'normal' or 'zeros', got {other:?}"
                )))
            }
        };
        let header = Header {
            dtype: parse_dtype(dtype)?,
            num_rows,
            dim,
            init,
        };
        let inner = detached(py, || table::Table::create(&path, header))?;
        Ok(Table { inner })
    }

    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = detached(py, || table::Table::open(&path))?;
        Ok(Table { inner })
    }

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

    /// Gathers rows into `out`, a C-contiguous `[len(keys), dim]` array of float32 (for
    /// `dtype="float32"`) or uint16 holding float16 / bfloat16 bits.
    fn gather_into(
        &self,
        py: Python<'_>,
        keys: PyReadonlyArray1<'_, u64>,
        out: &Bound<'_, PyAny>,
        dtype: &str,
    ) -> PyResult<()> {
        let dtype = parse_dtype(dtype)?;
        let keys = owned(&keys);
        if dtype == DType::F32 {
            let mut out: PyReadwriteArray2<'_, f32> = out.extract()?;
            let bytes = bytes_mut(out.as_slice_mut()?);
            detached(py, || self.inner.gather_into(&keys, dtype, bytes))
        } else {
            let mut out: PyReadwriteArray2<'_, u16> = out.extract()?;
            let bytes = bytes_mut(out.as_slice_mut()?);
            detached(py, || self.inner.gather_into(&keys, dtype, bytes))
        }
    }

    fn scatter_add(
        &self,
        py: Python<'_>,
        keys: PyReadonlyArray1<'_, u64>,
        values: PyReadonlyArray2<'_, f32>,
    ) -> PyResult<()> {
        let (keys, values) = (
            owned(&keys),
            values.as_array().iter().copied().collect::<Vec<_>>(),
        );
        detached(py, || self.inner.scatter_add(&keys, &values))
    }

    fn write_rows(
        &self,
        py: Python<'_>,
        keys: PyReadonlyArray1<'_, u64>,
        values: PyReadonlyArray2<'_, f32>,
    ) -> PyResult<()> {
        let (keys, values) = (
            owned(&keys),
            values.as_array().iter().copied().collect::<Vec<_>>(),
        );
        detached(py, || self.inner.write_rows(&keys, &values))
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
fn keys_from_int64<'py>(
    py: Python<'py>,
    keys: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<u64>>> {
    let keys = owned(&keys);
    let out = detached(py, || table::keys_from_i64(&keys))?;
    Ok(out.into_pyarray(py))
}

fn bytes_mut<T: numpy::Element>(values: &mut [T]) -> &mut [u8] {
    let len = std::mem::size_of_val(values);
    // SAFETY: only instantiated with f32 and u16, plain numbers valid for any bit pattern.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), len) }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("TableFormatError", py.get_type::<TableFormatError>())?;
    m.add("TABLE_FORMAT_VERSION", table::format::FORMAT_VERSION)?;
    m.add_class::<NgramHasher>()?;
    m.add_class::<Table>()?;
    m.add_function(wrap_pyfunction!(table_sizes, m)?)?;
    m.add_function(wrap_pyfunction!(compress_ids, m)?)?;
    m.add_function(wrap_pyfunction!(keys_from_int64, m)?)?;
    Ok(())
}
