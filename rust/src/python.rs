//! The PyO3 binding, `store._native`: type conversion, GIL release and error mapping only.
//!
//! Inputs are copied into owned buffers before the GIL is released (a numpy view may be
//! mutated by another Python thread meanwhile); outputs are either numpy arrays handed over
//! without copying or caller-provided arrays written in place.

use crate::checkpoint::{self, PackSummary};
use crate::codec::{self, DType};
use crate::embedding;
use crate::error::Error;
use crate::hash::{self, primes};
use crate::init::Initializer;
use crate::optim::Optimizer;
use crate::region;
use crate::table::{self, format::Header};
use numpy::{
    IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray2,
    PyReadwriteArray4, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyIndexError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
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

    #[getter]
    fn fingerprint(&self) -> u64 {
        self.inner.fingerprint()
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
    #[getter]
    fn first_row(&self) -> u64 {
        self.inner.header().first_row
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

fn parse_header(
    num_rows: u64,
    dim: u64,
    dtype: &str,
    init: &str,
    std: f64,
    seed: u64,
    first_row: u64,
) -> PyResult<Header> {
    let init = match init {
        "normal" => Initializer::normal(std, seed).map_err(to_py_err)?,
        "zeros" => Initializer::Zeros,
        other => {
            return Err(PyValueError::new_err(format!(
                "init must be 'normal' or 'zeros', got {other:?}"
            )))
        }
    };
    Ok(Header {
        dtype: parse_dtype(dtype)?,
        num_rows,
        dim,
        init,
        first_row,
    })
}

/// `(rows, step, bytes, crc32)` of a checkpoint row pack.
type PackTuple = (u64, u64, u64, u32);

fn pack_tuple(summary: PackSummary) -> PackTuple {
    (summary.rows, summary.step, summary.bytes, summary.crc32)
}

/// A trainable table: rows, optimizer state and step count, in the files of one directory.
#[pyclass(frozen, module = "store._native")]
struct EmbeddingTable {
    inner: embedding::EmbeddingTable,
}

#[pymethods]
impl EmbeddingTable {
    #[staticmethod]
    #[pyo3(signature = (
        dir, num_rows, dim, dtype, init, std, seed, optimizer, lr, eps, beta1, beta2,
        initial_accumulator_value, allow_non_finite, first_row=0
    ))]
    #[allow(clippy::too_many_arguments)]
    fn create(
        py: Python<'_>,
        dir: PathBuf,
        num_rows: u64,
        dim: u64,
        dtype: &str,
        init: &str,
        std: f64,
        seed: u64,
        optimizer: &str,
        lr: f32,
        eps: f32,
        beta1: f32,
        beta2: f32,
        initial_accumulator_value: f32,
        allow_non_finite: bool,
        first_row: u64,
    ) -> PyResult<Self> {
        let header = parse_header(num_rows, dim, dtype, init, std, seed, first_row)?;
        let optimizer = Optimizer::new(optimizer, lr, eps, beta1, beta2, initial_accumulator_value)
            .map_err(to_py_err)?;
        let inner = detached(py, || {
            embedding::EmbeddingTable::create(&dir, header, optimizer, allow_non_finite)
        })?;
        Ok(EmbeddingTable { inner })
    }

    #[staticmethod]
    #[pyo3(signature = (
        dir, optimizer, lr, eps, beta1, beta2, initial_accumulator_value, allow_non_finite, step
    ))]
    #[allow(clippy::too_many_arguments)]
    fn open(
        py: Python<'_>,
        dir: PathBuf,
        optimizer: &str,
        lr: f32,
        eps: f32,
        beta1: f32,
        beta2: f32,
        initial_accumulator_value: f32,
        allow_non_finite: bool,
        step: u64,
    ) -> PyResult<Self> {
        let optimizer = Optimizer::new(optimizer, lr, eps, beta1, beta2, initial_accumulator_value)
            .map_err(to_py_err)?;
        let inner = detached(py, || {
            embedding::EmbeddingTable::open(&dir, optimizer, allow_non_finite, step)
        })?;
        Ok(EmbeddingTable { inner })
    }

    #[getter]
    fn num_rows(&self) -> u64 {
        self.inner.params().num_rows()
    }
    #[getter]
    fn dim(&self) -> usize {
        self.inner.params().dim()
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.params().dtype().name()
    }
    #[getter]
    fn step(&self) -> u64 {
        self.inner.step()
    }
    #[getter]
    fn state_dim(&self) -> usize {
        self.inner.state().map_or(0, |s| s.dim())
    }

    fn written_count(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.inner.params().written_count())
    }

    /// Rows of the LE uint64 `keys` payload as a new bytes object of `dtype` values,
    /// gathered straight into the bytes' buffer.
    fn lookup_bytes<'py>(
        &self,
        py: Python<'py>,
        keys: &[u8],
        dtype: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let dtype = parse_dtype(dtype)?;
        let keys = codec::decode_keys(keys, "keys").map_err(to_py_err)?;
        let params = self.inner.params();
        params.check_keys(&keys).map_err(to_py_err)?;
        let len = keys.len() * params.dim() * dtype.size();
        PyBytes::new_with(py, len, |out| {
            detached(py, || params.gather_into(&keys, dtype, out))
        })
    }

    /// Fails naming the first key of the LE uint64 payload outside the table.
    fn check_keys_bytes(&self, py: Python<'_>, keys: &[u8]) -> PyResult<()> {
        detached(py, || {
            self.inner
                .params()
                .check_keys(&codec::decode_keys(keys, "keys")?)
        })
    }

    /// Gathers rows into a caller's array (see `Table.gather_into`).
    fn gather_into(
        &self,
        py: Python<'_>,
        keys: PyReadonlyArray1<'_, u64>,
        out: PyReadwriteArray2<'_, f32>,
    ) -> PyResult<()> {
        let keys = owned(&keys);
        let mut out = out;
        let bytes = bytes_mut(out.as_slice_mut()?);
        detached(py, || {
            self.inner.params().gather_into(&keys, DType::F32, bytes)
        })
    }

    /// Applies a push given as wire payloads: LE uint64 keys and `grads_dtype` gradients.
    /// Returns `(distinct rows, step applied)`.
    #[pyo3(signature = (keys, grads, grads_dtype, step=None))]
    fn push_bytes(
        &self,
        py: Python<'_>,
        keys: &[u8],
        grads: &[u8],
        grads_dtype: &str,
        step: Option<u64>,
    ) -> PyResult<(usize, u64)> {
        let grads_dtype = parse_dtype(grads_dtype)?;
        detached(py, || {
            let keys = codec::decode_keys(keys, "keys")?;
            let outcome = self.inner.push_encoded(&keys, grads_dtype, grads, step)?;
            Ok((outcome.rows, outcome.step))
        })
    }

    /// Gathers the rows of the LE uint64 `keys` payload as `dtype` values into the shared
    /// buffer open as `fd`, at `offset` (see `region`). Every key is checked first.
    fn lookup_into_fd(
        &self,
        py: Python<'_>,
        keys: &[u8],
        fd: i32,
        path: PathBuf,
        offset: u64,
        dtype: &str,
    ) -> PyResult<()> {
        let dtype = parse_dtype(dtype)?;
        let file = file_of_fd(fd)?;
        let params = self.inner.params();
        detached(py, || {
            let keys = codec::decode_keys(keys, "keys")?;
            params.check_keys(&keys)?;
            let len = keys.len() * params.dim() * dtype.size();
            region::with_region_mut(&file, &path, offset, len, |out| {
                params.gather_into(&keys, dtype, out)
            })
        })
    }

    /// Applies a push whose `grads_dtype` gradients lie in the shared buffer open as `fd`, at
    /// `offset`. Returns `(distinct rows, step applied)`.
    #[pyo3(signature = (keys, fd, path, offset, grads_dtype, step=None))]
    #[allow(clippy::too_many_arguments)]
    fn push_from_fd(
        &self,
        py: Python<'_>,
        keys: &[u8],
        fd: i32,
        path: PathBuf,
        offset: u64,
        grads_dtype: &str,
        step: Option<u64>,
    ) -> PyResult<(usize, u64)> {
        let grads_dtype = parse_dtype(grads_dtype)?;
        let file = file_of_fd(fd)?;
        let dim = self.inner.params().dim();
        detached(py, || {
            let keys = codec::decode_keys(keys, "keys")?;
            let len = keys.len() * dim * grads_dtype.size();
            let outcome = region::with_region(&file, &path, offset, len, |grads| {
                self.inner.push_encoded(&keys, grads_dtype, grads, step)
            })?;
            Ok((outcome.rows, outcome.step))
        })
    }

    /// Applies a push of numpy arrays. Returns `(distinct rows, step applied)`.
    #[pyo3(signature = (keys, grads, step=None))]
    fn push(
        &self,
        py: Python<'_>,
        keys: PyReadonlyArray1<'_, u64>,
        grads: PyReadonlyArray2<'_, f32>,
        step: Option<u64>,
    ) -> PyResult<(usize, u64)> {
        let keys = owned(&keys);
        let grads: Vec<f32> = grads.as_array().iter().copied().collect();
        let outcome = detached(py, || self.inner.push(&keys, &grads, step))?;
        Ok((outcome.rows, outcome.step))
    }

    /// Writes a checkpoint row pack; returns `(rows, step, bytes, crc32)`.
    fn write_pack(&self, py: Python<'_>, path: PathBuf, incremental: bool) -> PyResult<PackTuple> {
        detached(py, || {
            checkpoint::pack_table(&path, &self.inner, incremental)
        })
        .map(pack_tuple)
    }

    /// Verifies and applies a checkpoint row pack; returns `(rows, step, bytes, crc32)`.
    fn apply_pack(&self, py: Python<'_>, path: PathBuf) -> PyResult<PackTuple> {
        detached(py, || checkpoint::apply_pack(&path, &self.inner)).map(pack_tuple)
    }

    fn clear_dirty(&self, py: Python<'_>) {
        py.detach(|| self.inner.clear_dirty())
    }

    fn dirty_count(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.dirty_keys().len())
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || self.inner.flush())
    }
}

/// Checks a row pack's checksum; returns `(rows, step, bytes, crc32)`.
#[pyfunction]
fn verify_pack(py: Python<'_>, path: PathBuf) -> PyResult<PackTuple> {
    detached(py, || checkpoint::verify_pack(&path)).map(pack_tuple)
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

/// An owned duplicate of a file descriptor the caller keeps open for the call.
fn file_of_fd(fd: i32) -> PyResult<std::fs::File> {
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "fd must be an open file descriptor, got {fd}"
        )));
    }
    // SAFETY: the caller holds `fd` open for the duration of the call; we only duplicate it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().map_err(PyErr::from)?;
    Ok(std::fs::File::from(owned))
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
    m.add_class::<EmbeddingTable>()?;
    m.add_function(wrap_pyfunction!(verify_pack, m)?)?;
    m.add_function(wrap_pyfunction!(table_sizes, m)?)?;
    m.add_function(wrap_pyfunction!(compress_ids, m)?)?;
    m.add_function(wrap_pyfunction!(keys_from_int64, m)?)?;
    Ok(())
}
