//! Bindings of trainable tables and checkpoint row packs.

use super::keys::Keys;
use super::{
    bytes_mut, detached, file_of_fd, owned, owned_rows, parse_dtype, parse_header, to_py_err,
};
use crate::checkpoint::{self, PackSummary};
use crate::codec::DType;
use crate::journal;
use crate::optim::Optimizer;
use crate::region;
use crate::trainable::{self, Origin};
use crate::wire;
use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray2};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;
use std::sync::Arc;

/// `(rows, step, bytes, crc32)` of a checkpoint row pack.
type PackTuple = (u64, u64, u64, u32);

fn pack_tuple(summary: PackSummary) -> PackTuple {
    (summary.rows, summary.step, summary.bytes, summary.crc32)
}
/// A `store.spec.OptimizerSpec`, read by attribute.
#[derive(FromPyObject)]
pub(crate) struct OptimizerArgs {
    name: String,
    lr: f32,
    eps: f32,
    beta1: f32,
    beta2: f32,
    initial_accumulator_value: f32,
}

impl OptimizerArgs {
    fn build(&self) -> PyResult<Optimizer> {
        Optimizer::new(
            &self.name,
            self.lr,
            self.eps,
            self.beta1,
            self.beta2,
            self.initial_accumulator_value,
        )
        .map_err(to_py_err)
    }
}

/// A `store.spec.TableSpec`, read by attribute (the fields the engine needs).
#[derive(FromPyObject)]
pub(crate) struct TableSpecArgs {
    num_rows: u64,
    dim: u64,
    dtype: String,
    init: String,
    init_std: f64,
    seed: u64,
    optimizer: OptimizerArgs,
    allow_non_finite: bool,
    first_row: u64,
    row_checksums: bool,
}

/// A trainable table: rows, optimizer state and step count, in the files of one directory.
#[pyclass(frozen, module = "store._native")]
pub(crate) struct TrainableTable {
    inner: trainable::TrainableTable,
}

#[pymethods]
impl TrainableTable {
    /// A table made as `spec` (a `store.spec.TableSpec`, its optimizer resolved) says.
    #[staticmethod]
    fn create(py: Python<'_>, dir: PathBuf, spec: TableSpecArgs) -> PyResult<Self> {
        let header = parse_header(
            spec.num_rows,
            spec.dim,
            &spec.dtype,
            &spec.init,
            spec.init_std,
            spec.seed,
            spec.first_row,
        )?;
        let optimizer = spec.optimizer.build()?;
        let inner = detached(py, || {
            trainable::TrainableTable::create_with(
                &dir,
                header,
                optimizer,
                spec.allow_non_finite,
                spec.row_checksums,
            )
        })?;
        Ok(TrainableTable { inner })
    }

    /// The table in `dir`, trained as `spec` says, its step count at `step`.
    #[staticmethod]
    fn open(py: Python<'_>, dir: PathBuf, spec: TableSpecArgs, step: u64) -> PyResult<Self> {
        let optimizer = spec.optimizer.build()?;
        let allow_non_finite = spec.allow_non_finite;
        let inner = detached(py, || {
            trainable::TrainableTable::open(&dir, optimizer, allow_non_finite, step)
        })?;
        Ok(TrainableTable { inner })
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

    /// Rows of `keys` as a new bytes object of `dtype` values, gathered straight into the
    /// bytes' buffer.
    fn lookup_bytes<'py>(
        &self,
        py: Python<'py>,
        keys: PyRef<'_, Keys>,
        dtype: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let dtype = parse_dtype(dtype)?;
        let keys: &[u64] = &keys.values;
        let params = self.inner.params();
        params.check_keys(keys).map_err(to_py_err)?;
        let len = keys.len() * params.dim() * dtype.size();
        PyBytes::new_with(py, len, |out| {
            detached(py, || params.gather_into(keys, dtype, out))
        })
    }

    /// One chunk of a lookup's answer as a serialised `LookupResponse`: the rows of
    /// `keys[start..end]` are gathered once, straight into the bytes that are sent.
    #[allow(clippy::too_many_arguments)]
    fn lookup_message<'py>(
        &self,
        py: Python<'py>,
        keys: PyRef<'_, Keys>,
        dtype: &str,
        start: usize,
        end: usize,
        offset: u64,
        total_rows: u64,
        result_shape: Vec<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let parsed = parse_dtype(dtype)?;
        let all = &keys.values;
        let end = end.min(all.len());
        let keys = &all[start.min(end)..end];
        let params = self.inner.params();
        params.check_keys(keys).map_err(to_py_err)?;
        let data_len = keys.len() * params.dim() * parsed.size();
        let prefix = wire::LookupChunk {
            offset,
            total_rows,
            dtype,
            shape: [keys.len() as u64, params.dim() as u64],
            result_shape: &result_shape,
        }
        .prefix(data_len);
        PyBytes::new_with(py, prefix.len() + data_len, |out| {
            let (head, rows) = out.split_at_mut(prefix.len());
            head.copy_from_slice(&prefix);
            detached(py, || params.gather_into(keys, parsed, rows))
        })
    }

    /// Fails naming the first key outside the table.
    fn check_keys(&self, py: Python<'_>, keys: PyRef<'_, Keys>) -> PyResult<()> {
        let keys: &[u64] = &keys.values;
        detached(py, || self.inner.params().check_keys(keys))
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
    #[pyo3(signature = (keys, grads, grads_dtype, step=None, client_id="", sequence=0))]
    #[allow(clippy::too_many_arguments)]
    fn push_bytes(
        &self,
        py: Python<'_>,
        keys: PyRef<'_, Keys>,
        grads: &[u8],
        grads_dtype: &str,
        step: Option<u64>,
        client_id: &str,
        sequence: u64,
    ) -> PyResult<(usize, u64)> {
        let grads_dtype = parse_dtype(grads_dtype)?;
        let origin = Origin {
            client_id,
            sequence,
        };
        let keys: &[u64] = &keys.values;
        detached(py, || {
            let outcome = self
                .inner
                .push_encoded(keys, grads_dtype, grads, step, origin)?;
            Ok((outcome.rows, outcome.step))
        })
    }

    /// `push_bytes`, also returning the rows of `keys` as the push left them (packed like
    /// the gradients): `(distinct rows, step applied, rows)`.
    #[pyo3(signature = (keys, grads, grads_dtype, step=None, client_id="", sequence=0))]
    #[allow(clippy::too_many_arguments)]
    fn push_bytes_returning_rows<'py>(
        &self,
        py: Python<'py>,
        keys: PyRef<'_, Keys>,
        grads: &[u8],
        grads_dtype: &str,
        step: Option<u64>,
        client_id: &str,
        sequence: u64,
    ) -> PyResult<(usize, u64, Bound<'py, PyBytes>)> {
        let dtype = parse_dtype(grads_dtype)?;
        let origin = Origin {
            client_id,
            sequence,
        };
        let mut buffer = grads.to_vec();
        let keys: &[u64] = &keys.values;
        let outcome = detached(py, || {
            self.inner
                .push_returning_rows(keys, dtype, &mut buffer, step, origin)
        })?;
        Ok((outcome.rows, outcome.step, PyBytes::new(py, &buffer)))
    }

    /// Gathers the rows of the LE uint64 `keys` payload as `dtype` values into the shared
    /// buffer open as `fd`, at `offset` (see `region`). Every key is checked first.
    fn lookup_into_fd(
        &self,
        py: Python<'_>,
        keys: PyRef<'_, Keys>,
        fd: i32,
        path: PathBuf,
        offset: u64,
        dtype: &str,
    ) -> PyResult<()> {
        let dtype = parse_dtype(dtype)?;
        let file = file_of_fd(fd)?;
        let params = self.inner.params();
        let keys: &[u64] = &keys.values;
        detached(py, || {
            params.check_keys(keys)?;
            let len = keys.len() * params.dim() * dtype.size();
            region::with_region_mut(&file, &path, offset, len, |out| {
                params.gather_into(keys, dtype, out)
            })
        })
    }

    /// Applies a push whose `grads_dtype` gradients lie in the shared buffer open as `fd`, at
    /// `offset`; with `return_rows`, then writes the rows of `keys` as the push left them over
    /// the gradients. Returns `(distinct rows, step applied)`.
    #[pyo3(signature = (
        keys, fd, path, offset, grads_dtype, step=None, return_rows=false, client_id="",
        sequence=0
    ))]
    #[allow(clippy::too_many_arguments)]
    fn push_from_fd(
        &self,
        py: Python<'_>,
        keys: PyRef<'_, Keys>,
        fd: i32,
        path: PathBuf,
        offset: u64,
        grads_dtype: &str,
        step: Option<u64>,
        return_rows: bool,
        client_id: &str,
        sequence: u64,
    ) -> PyResult<(usize, u64)> {
        let grads_dtype = parse_dtype(grads_dtype)?;
        let origin = Origin {
            client_id,
            sequence,
        };
        let file = file_of_fd(fd)?;
        let dim = self.inner.params().dim();
        let keys: &[u64] = &keys.values;
        detached(py, || {
            let len = keys.len() * dim * grads_dtype.size();
            let outcome = region::with_region_mut(&file, &path, offset, len, |buffer| {
                if return_rows {
                    self.inner
                        .push_returning_rows(keys, grads_dtype, buffer, step, origin)
                } else {
                    self.inner
                        .push_encoded(keys, grads_dtype, buffer, step, origin)
                }
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
        let grads = owned_rows(&grads);
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

    /// Commits every later push by a record in `journal`.
    fn attach_journal(&self, journal: &Journal) -> PyResult<()> {
        self.inner
            .attach_journal(journal.inner.clone())
            .map_err(to_py_err)
    }

    /// The token of the last push that started on this table (0: none).
    fn last_push_token(&self) -> u64 {
        self.inner.last_push_token()
    }

    /// After a crash: undoes the last push that started here unless its token is in
    /// `committed` or at most `committed_through`. Returns `(token, rows)` when it undid one.
    fn recover(
        &self,
        py: Python<'_>,
        committed: std::collections::HashSet<u64>,
        committed_through: u64,
    ) -> PyResult<Option<(u64, usize)>> {
        let rolled_back = detached(py, || {
            self.inner
                .recover(|t| t <= committed_through || committed.contains(&t))
        })?;
        Ok(rolled_back.map(|r| (r.token, r.rows)))
    }

    /// Whether the table keeps row checksums (and `verify` checks it).
    #[getter]
    fn row_checksums(&self) -> bool {
        self.inner.params().has_row_checksums()
    }

    /// `(file name, first row)` of every block of rows or state that does not match its
    /// checksum.
    fn verify(&self, py: Python<'_>) -> Vec<(&'static str, u64)> {
        py.detach(|| self.inner.verify())
    }

    fn clear_dirty(&self, py: Python<'_>) {
        py.detach(|| self.inner.clear_dirty())
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || self.inner.flush())
    }
}

/// `(token, table, client_id, sequence, step)` of one journal record.
type RecordTuple = (u64, String, String, u64, u64);

/// The push journal of a daemon's data directory (see `journal.rs`).
#[pyclass(frozen, module = "store._native")]
pub(crate) struct Journal {
    inner: Arc<journal::Journal>,
}

#[pymethods]
impl Journal {
    /// Opens (or creates) the journal; returns it and its records, oldest first.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<(Journal, Vec<RecordTuple>)> {
        let (journal, records) = detached(py, || journal::Journal::open(&path))?;
        let records = records
            .into_iter()
            .map(|r| (r.token, r.table, r.client_id, r.sequence, r.step))
            .collect();
        Ok((
            Journal {
                inner: Arc::new(journal),
            },
            records,
        ))
    }

    /// Makes later push tokens larger than `token`.
    fn tokens_after(&self, token: u64) {
        self.inner.tokens_after(token)
    }

    /// A token no push has taken or will take; every push so far has a smaller one.
    fn fence_token(&self) -> u64 {
        self.inner.next_token()
    }

    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || self.inner.reset())
    }
}

/// Checks a row pack's checksum; returns `(rows, step, bytes, crc32)`.
#[pyfunction]
pub(crate) fn verify_pack(py: Python<'_>, path: PathBuf) -> PyResult<PackTuple> {
    detached(py, || checkpoint::verify_pack(&path)).map(pack_tuple)
}
