//! The PyO3 binding, `store._native`: type conversion, GIL release and error mapping only.
//!
//! Inputs are copied into owned buffers before the GIL is released (a numpy view may be
//! mutated by another Python thread meanwhile); outputs are either numpy arrays handed over
//! without copying or caller-provided arrays written in place.

mod engine_rows;
mod hashing;
mod hot_rows;
mod keys;
mod shared_region;
mod table;
mod trainable;

use crate::codec::DType;
use crate::error::Error;
use crate::init::Initializer;
use crate::region;
use crate::table::format::Header;
use numpy::PyReadonlyArray1;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyIndexError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyTuple, PyType};

create_exception!(
    store._native,
    StoreError,
    PyException,
    "Base class of Engram Store errors."
);
create_exception!(
    store._native,
    TableFormatError,
    StoreError,
    "A table file is not a valid Engram Store table (bad magic, version, checksum or size)."
);

static INVALID_ARGUMENT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static OUT_OF_RANGE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// A subclass of both `StoreError` and the builtin users expect (`ValueError`,
/// `IndexError`). `create_exception!` takes one base only, so the class is built by
/// calling `type`, once per process.
fn store_error_kind<'py, Builtin: pyo3::PyTypeInfo>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    doc: &str,
) -> PyResult<&'py Bound<'py, PyType>> {
    let kind = cell.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(py, [py.get_type::<StoreError>(), py.get_type::<Builtin>()])?;
        let namespace = PyDict::new(py);
        namespace.set_item("__module__", "store._native")?;
        namespace.set_item("__doc__", doc)?;
        let kind = py.get_type::<PyType>().call1((name, bases, namespace))?;
        Ok(kind.cast_into::<PyType>()?.unbind())
    })?;
    Ok(kind.bind(py))
}

fn invalid_argument_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    store_error_kind::<PyValueError>(
        py,
        &INVALID_ARGUMENT,
        "InvalidArgumentError",
        "A malformed request: bad shape, dtype, name or config (INVALID_ARGUMENT).",
    )
}

fn out_of_range_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    store_error_kind::<PyIndexError>(
        py,
        &OUT_OF_RANGE,
        "OutOfRangeError",
        "A key outside its table (OUT_OF_RANGE).",
    )
}

fn raised(kind: fn(Python<'_>) -> PyResult<&Bound<'_, PyType>>, msg: String) -> PyErr {
    Python::attach(|py| match kind(py) {
        Ok(kind) => PyErr::from_type(kind.clone(), msg),
        Err(err) => err,
    })
}

/// `InvalidArgumentError` (a `StoreError` and a `ValueError`) with `msg`.
pub(crate) fn invalid_argument(msg: impl Into<String>) -> PyErr {
    raised(invalid_argument_type, msg.into())
}

/// `OutOfRangeError` (a `StoreError` and an `IndexError`) with `msg`.
pub(crate) fn out_of_range(msg: impl Into<String>) -> PyErr {
    raised(out_of_range_type, msg.into())
}

pub(crate) fn to_py_err(err: Error) -> PyErr {
    match err {
        Error::InvalidArgument(msg) => invalid_argument(msg),
        Error::OutOfRange(msg) => out_of_range(msg),
        Error::Format { .. } => TableFormatError::new_err(err.to_string()),
        Error::Io { path, source } => {
            // OSError(errno, strerror, filename) picks the matching subclass
            // (FileNotFoundError, FileExistsError, ...) and adds "[Errno N]" itself, so
            // strerror leaves out Rust's own " (os error N)".
            let errno = source.raw_os_error().unwrap_or(0);
            let text = source.to_string();
            let strerror = text
                .strip_suffix(&format!(" (os error {errno})"))
                .unwrap_or(&text)
                .to_owned();
            PyOSError::new_err((errno, strerror, path.display().to_string()))
        }
    }
}

/// Runs an engine call with the GIL released and maps its error.
pub(crate) fn detached<T, F>(py: Python<'_>, call: F) -> PyResult<T>
where
    F: FnOnce() -> crate::Result<T> + Send,
    T: Send,
{
    py.detach(call).map_err(to_py_err)
}

pub(crate) fn owned<T: numpy::Element + Copy>(array: &PyReadonlyArray1<'_, T>) -> Vec<T> {
    array.as_array().iter().copied().collect()
}

/// A 2-D array's values, row-major, in an owned buffer.
pub(crate) fn owned_rows<T: numpy::Element + Copy>(
    array: &numpy::PyReadonlyArray2<'_, T>,
) -> Vec<T> {
    array.as_array().iter().copied().collect()
}

pub(crate) fn parse_dtype(name: &str) -> PyResult<DType> {
    DType::parse(name).map_err(to_py_err)
}

pub(crate) fn parse_header(
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
            return Err(invalid_argument(format!(
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

/// An owned duplicate of a file descriptor the caller keeps open for the call.
pub(crate) fn file_of_fd(fd: i32) -> PyResult<std::fs::File> {
    if fd < 0 {
        return Err(invalid_argument(format!(
            "fd must be an open file descriptor, got {fd}"
        )));
    }
    // SAFETY: the caller holds `fd` open for the duration of the call; we only duplicate it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().map_err(PyErr::from)?;
    Ok(std::fs::File::from(owned))
}

pub(crate) fn bytes_mut<T: numpy::Element>(values: &mut [T]) -> &mut [u8] {
    let len = std::mem::size_of_val(values);
    // SAFETY: only instantiated with f32 and u16, plain numbers valid for any bit pattern.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), len) }
}

/// The fields of one serialised `LookupResponse` and where its rows' bytes are in it:
/// `(offset, total_rows, dtype, shape, result_shape, in_shared_buffer, start, end)`.
type ParsedChunkTuple = (u64, u64, String, Vec<u64>, Vec<i64>, bool, usize, usize);

#[pyfunction]
fn parse_lookup_chunk(data: &[u8]) -> PyResult<ParsedChunkTuple> {
    let c = crate::wire::parse_lookup_chunk(data).map_err(to_py_err)?;
    Ok((
        c.offset,
        c.total_rows,
        c.dtype,
        c.shape,
        c.result_shape,
        c.in_shared_buffer,
        c.data.start,
        c.data.end,
    ))
}

/// Sizes the engine's thread pool; only possible before its first parallel call.
#[pyfunction]
fn set_thread_count(threads: usize) -> PyResult<()> {
    if threads == 0 {
        return Err(invalid_argument("threads must be positive, got 0"));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| invalid_argument(format!("cannot set the engine's threads: {e}")))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("TableFormatError", py.get_type::<TableFormatError>())?;
    m.add("InvalidArgumentError", invalid_argument_type(py)?)?;
    m.add("OutOfRangeError", out_of_range_type(py)?)?;
    m.add("TABLE_FORMAT_VERSION", crate::table::format::FORMAT_VERSION)?;
    m.add("PUSH_CRASH_POINTS", crate::crash_points::POINTS.to_vec())?;
    m.add("BUFFER_MAGIC", PyBytes::new(py, region::BUFFER_MAGIC))?;
    m.add("BUFFER_TOKEN_BYTES", region::BUFFER_TOKEN_BYTES)?;
    m.add("BUFFER_HEADER_BYTES", region::BUFFER_HEADER_BYTES)?;
    m.add_class::<hashing::NgramHasher>()?;
    m.add_class::<table::Table>()?;
    m.add_class::<engine_rows::EngineRows>()?;
    m.add_class::<hot_rows::HotRowCache>()?;
    m.add_class::<trainable::TrainableTable>()?;
    m.add_class::<keys::Keys>()?;
    m.add_class::<shared_region::SharedRegion>()?;
    m.add_class::<trainable::Journal>()?;
    m.add_function(wrap_pyfunction!(trainable::verify_pack, m)?)?;
    m.add_function(wrap_pyfunction!(set_thread_count, m)?)?;
    m.add_function(wrap_pyfunction!(parse_lookup_chunk, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::table_sizes, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::compress_ids, m)?)?;
    m.add_function(wrap_pyfunction!(table::keys_from_int64, m)?)?;
    m.add_function(wrap_pyfunction!(table::rows_to_float32, m)?)?;
    m.add_function(wrap_pyfunction!(engine_rows::decode_engine_rows, m)?)?;
    Ok(())
}
