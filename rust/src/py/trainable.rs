//! Bindings of trainable tables and checkpoint row packs.

use super::keys::Keys;
use super::shared_region::SharedRegion;
use super::{
    bytes_mut, detached, invalid_argument, owned, owned_rows, parse_dtype, parse_header, to_py_err,
};
use crate::checkpoint::{self, PackSummary};
use crate::codec::DType;
use crate::journal;
use crate::keys;
use crate::optim::Optimizer;
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
    weight_decay: f32,
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

    /// Sets the table's weight decay (the learning rate is the optimizer's already).
    fn tune(&self, table: &trainable::TrainableTable) -> PyResult<()> {
        table.retune(self.lr, self.weight_decay).map_err(to_py_err)
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

/// Where a call's keys come from: decoded once for a request, or a uint64 array.
#[derive(FromPyObject)]
pub(crate) enum KeySource<'py> {
    Decoded(PyRef<'py, Keys>),
    Array(PyReadonlyArray1<'py, u64>),
}

impl KeySource<'_> {
    fn with<T>(&self, f: impl FnOnce(&Keys) -> T) -> T {
        match self {
            KeySource::Decoded(keys) => f(keys),
            KeySource::Array(array) => f(&Keys::new(keys::Keys::new(owned(array)))),
        }
    }
}

/// Where a lookup writes its rows, when not into new bytes.
#[derive(FromPyObject)]
pub(crate) enum RowSink<'py> {
    Shared(PyRef<'py, SharedRegion>),
    Array(PyReadwriteArray2<'py, f32>),
}

/// Where an import's packed rows come from.
#[derive(FromPyObject)]
pub(crate) enum PackedRows<'py> {
    Shared(PyRef<'py, SharedRegion>),
    Bytes(Bound<'py, PyBytes>),
}

/// Where a push's gradients come from.
#[derive(FromPyObject)]
pub(crate) enum GradsSource<'py> {
    Shared(PyRef<'py, SharedRegion>),
    Bytes(Bound<'py, PyBytes>),
    Array(PyReadonlyArray2<'py, f32>),
}

/// The last dimension of rows on the wire: values, or bytes for packed quantized rows.
fn row_width(dim: usize, dtype: DType) -> usize {
    if dtype.is_quantized() {
        dtype.row_bytes(dim)
    } else {
        dim
    }
}

/// The bytes of `keys` rows of `dim` values of `dtype`.
fn rows_bytes(keys: usize, dim: usize, dtype: DType) -> PyResult<usize> {
    keys.checked_mul(dtype.row_bytes(dim))
        .ok_or_else(|| invalid_argument("the rows of so many keys do not fit in memory"))
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
        spec.optimizer.tune(&inner)?;
        Ok(TrainableTable { inner })
    }

    /// The table in `dir`, trained as `spec` says, its step count at `step`; with
    /// `read_only`, on read-only media: its files only read, and pushes refused.
    #[staticmethod]
    #[pyo3(signature = (dir, spec, step, read_only=false))]
    fn open(
        py: Python<'_>,
        dir: PathBuf,
        spec: TableSpecArgs,
        step: u64,
        read_only: bool,
    ) -> PyResult<Self> {
        let optimizer = spec.optimizer.build()?;
        let allow_non_finite = spec.allow_non_finite;
        let inner = detached(py, || match read_only {
            true => trainable::TrainableTable::open_read_only(&dir, optimizer, step),
            false => trainable::TrainableTable::open(&dir, optimizer, allow_non_finite, step),
        })?;
        spec.optimizer.tune(&inner)?;
        Ok(TrainableTable { inner })
    }

    /// Copies the stored rows (and optimizer state) of `source`, another shard of the same
    /// table, that fall in this table's row range; returns how many (see resharding).
    fn copy_rows_from(&self, py: Python<'_>, source: &TrainableTable) -> PyResult<u64> {
        py.detach(|| self.inner.copy_rows_from(&source.inner))
            .map_err(to_py_err)
    }

    /// Sets the step count (a resharded table takes its source's).
    fn set_step(&self, step: u64) {
        self.inner.set_step(step);
    }

    /// Sets the learning rate and weight decay of later pushes; the optimizer's kind and
    /// state stay.
    fn retune(&self, lr: f32, weight_decay: f32) -> PyResult<()> {
        self.inner.retune(lr, weight_decay).map_err(to_py_err)
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

    /// The rows of `keys` as `dtype` values, written once, straight where they go: into the
    /// shared region or (float32) array `into`, returning None, or into new bytes, returned.
    /// Every key is checked before any row is written.
    #[pyo3(signature = (keys, dtype, into=None))]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        keys: KeySource<'_>,
        dtype: &str,
        into: Option<RowSink<'_>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let dtype = parse_dtype(dtype)?;
        let params = self.inner.params();
        keys.with(|keys| {
            // `gather_into` checks every key before writing any row.
            let values: &[u64] = keys.values();
            let len = rows_bytes(values.len(), params.dim(), dtype)?;
            let gather = |out: &mut [u8]| params.gather_into(values, dtype, out);
            match into {
                None => PyBytes::new_with(py, len, |out| detached(py, || gather(out))).map(Some),
                Some(RowSink::Shared(region)) => {
                    let region: &SharedRegion = &region;
                    detached(py, || region.with_bytes(len, gather)).map(|()| None)
                }
                Some(RowSink::Array(mut array)) => {
                    if dtype != DType::F32 {
                        return Err(invalid_argument(
                            "an array `into` takes float32 rows; pass dtype='float32'",
                        ));
                    }
                    let out = bytes_mut(array.as_slice_mut()?);
                    detached(py, || gather(out)).map(|()| None)
                }
            }
        })
    }

    /// One chunk of a streamed lookup's answer, as a serialised `LookupResponse`: the rows
    /// of `keys[start..end]` are gathered once, straight into the bytes that are sent.
    #[allow(clippy::too_many_arguments)]
    fn lookup_chunk<'py>(
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
        let all = keys.values();
        let end = end.min(all.len());
        let keys = &all[start.min(end)..end];
        let params = self.inner.params();
        // Checked whole by the engine before the first chunk; `gather_into` checks again.
        let data_len = rows_bytes(keys.len(), params.dim(), parsed)?;
        let prefix = wire::LookupChunk {
            offset,
            total_rows,
            dtype,
            shape: [keys.len() as u64, row_width(params.dim(), parsed) as u64],
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
    fn check_keys(&self, keys: PyRef<'_, Keys>) -> PyResult<()> {
        keys.check(self.inner.params()).map_err(to_py_err)
    }

    /// Applies a push of `grads` (one row of `grads_dtype` values per key, repeated keys
    /// summed): from bytes, a shared region or a float32 array. With `return_rows`, the
    /// rows of `keys` as the push left them are written over the gradients in a shared
    /// region, or returned as bytes. Returns `(distinct rows, step applied, rows or None)`.
    #[pyo3(signature = (
        keys, grads, grads_dtype="float32", step=None, return_rows=false, client_id="",
        sequence=0
    ))]
    #[allow(clippy::too_many_arguments)]
    fn push<'py>(
        &self,
        py: Python<'py>,
        keys: KeySource<'_>,
        grads: GradsSource<'py>,
        grads_dtype: &str,
        step: Option<u64>,
        return_rows: bool,
        client_id: &str,
        sequence: u64,
    ) -> PyResult<(usize, u64, Option<Bound<'py, PyBytes>>)> {
        let dtype = parse_dtype(grads_dtype)?;
        let origin = Origin {
            client_id,
            sequence,
        };
        let table = &self.inner;
        let apply = |keys: &[u64], buffer: &mut [u8]| {
            if return_rows {
                table.push_returning_rows(keys, dtype, buffer, step, origin)
            } else {
                table.push_encoded(keys, dtype, buffer, step, origin)
            }
        };
        keys.with(|keys| {
            let values: &[u64] = keys.values();
            match grads {
                GradsSource::Shared(region) => {
                    let region: &SharedRegion = &region;
                    let len = rows_bytes(values.len(), table.params().dim(), dtype)?;
                    let outcome = detached(py, || region.with_bytes(len, |b| apply(values, b)))?;
                    Ok((outcome.rows, outcome.step, None))
                }
                GradsSource::Bytes(bytes) if !return_rows => {
                    let bytes = bytes.as_bytes();
                    let outcome = detached(py, || {
                        table.push_encoded(values, dtype, bytes, step, origin)
                    })?;
                    Ok((outcome.rows, outcome.step, None))
                }
                GradsSource::Bytes(bytes) => {
                    let mut buffer = bytes.as_bytes().to_vec();
                    let outcome = detached(py, || apply(values, &mut buffer))?;
                    let rows = PyBytes::new(py, &buffer);
                    Ok((outcome.rows, outcome.step, Some(rows)))
                }
                GradsSource::Array(array) => {
                    if dtype != DType::F32 {
                        return Err(invalid_argument(
                            "an array of gradients is float32; pass grads_dtype='float32'",
                        ));
                    }
                    let mut buffer: Vec<u8> = owned_rows(&array)
                        .iter()
                        .flat_map(|g| g.to_le_bytes())
                        .collect();
                    let outcome = detached(py, || apply(values, &mut buffer))?;
                    let rows = return_rows.then(|| PyBytes::new(py, &buffer));
                    Ok((outcome.rows, outcome.step, rows))
                }
            }
        })
    }

    /// Stores `count` rows from local row `first_row` on, packed as the table stores them,
    /// from bytes or a shared region, exactly and without the optimizer (imports).
    fn write_packed(
        &self,
        py: Python<'_>,
        first_row: u64,
        count: usize,
        rows: PackedRows<'_>,
    ) -> PyResult<()> {
        let params = self.inner.params();
        let end = first_row
            .checked_add(count as u64)
            .filter(|&end| end <= params.num_rows())
            .ok_or_else(|| {
                invalid_argument(format!(
                    "rows [{first_row}, {first_row} + {count}) fall outside the table's {} rows",
                    params.num_rows()
                ))
            })?;
        let keys: Vec<u64> = (first_row..end).collect();
        let len = rows_bytes(count, params.dim(), params.dtype())?;
        match rows {
            PackedRows::Shared(region) => {
                let region: &SharedRegion = &region;
                detached(py, || {
                    region.with_bytes(len, |bytes| params.write_raw_rows(&keys, bytes))
                })
            }
            PackedRows::Bytes(bytes) => {
                let bytes = bytes.as_bytes();
                detached(py, || params.write_raw_rows(&keys, bytes))
            }
        }
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

    /// Bytes of the table's files in the page cache, exact up to `max_probes` pages a file
    /// and estimated from that many beyond.
    fn resident_bytes(&self, py: Python<'_>, max_probes: usize) -> PyResult<u64> {
        detached(py, || self.inner.resident_bytes(max_probes))
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

    /// Moves the records so far into a retired segment; returns its number.
    fn cut(&self, py: Python<'_>) -> PyResult<u64> {
        detached(py, || self.inner.cut())
    }

    /// Deletes the retired segments numbered up to `upto`.
    fn retire(&self, py: Python<'_>, upto: u64) -> PyResult<()> {
        detached(py, || self.inner.retire(upto))
    }
}

/// Checks a row pack's checksum; returns `(rows, step, bytes, crc32)`.
#[pyfunction]
pub(crate) fn verify_pack(py: Python<'_>, path: PathBuf) -> PyResult<PackTuple> {
    detached(py, || checkpoint::verify_pack(&path)).map(pack_tuple)
}
