//! A trainable embedding table: the rows, the optimizer's state beside them, and the step
//! count. Pushes apply sparse gradients atomically: a concurrent lookup sees every row of a
//! push either before or after it.

mod undo;

use crate::codec::{self, DType};
use crate::error::{Error, Result};
use crate::journal::{Journal, JournalRecord};
use crate::optim::{Optimizer, StepConstants};
use crate::parallel;
use crate::table::format::Header;
use crate::table::{prefetch_ptr, Access, GroupUpdate, KeyGroups, Table, Writes};
use rayon::prelude::*;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
pub use undo::{UndoLog, UNDO_FILE};

pub const PARAMS_FILE: &str = "params.engram";
/// Rows copied at a time between shards, to bound memory.
const ROWS_PER_COPY: usize = 65_536;
pub const STATE_FILE: &str = "state.engram";

#[derive(Debug)]
pub struct TrainableTable {
    dir: PathBuf,
    params: Table,
    state: Option<Table>,
    /// The optimizer and weight decay; their learning rate and decay may change between
    /// pushes ([`TrainableTable::retune`]), each push reads them once.
    tuning: RwLock<Tuning>,
    allow_non_finite: bool,
    step: AtomicU64,
    /// Serialises pushes (and checkpoints) so that steps are applied in the order counted;
    /// holds the undo log that the push in progress writes.
    push_lock: Mutex<UndoLog>,
    /// Where pushes are committed; without one, a crash in the middle of a push leaves it
    /// half applied (tables used in process, not served).
    journal: OnceLock<Arc<Journal>>,
    /// `Private` on read-only media: pushes are refused.
    writes: Writes,
}

/// The hyper-parameters a table's pushes use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    pub optimizer: Optimizer,
    pub weight_decay: f32,
}

/// Who sent a push: its idempotency key, recorded in the journal with it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Origin<'a> {
    /// Empty for a push without idempotency.
    pub client_id: &'a str,
    pub sequence: u64,
}

/// A push undone when its table was opened after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolledBack {
    pub token: u64,
    pub rows: usize,
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushOutcome {
    /// Distinct rows updated (duplicate keys are summed first).
    pub rows: usize,
    /// The step the optimizer applied.
    pub step: u64,
}

impl TrainableTable {
    /// Creates the table's files in `dir` (which must not exist yet), with row checksums.
    pub fn create(
        dir: impl AsRef<Path>,
        header: Header,
        optimizer: Optimizer,
        allow_non_finite: bool,
    ) -> Result<Self> {
        Self::create_with(dir, header, optimizer, allow_non_finite, true)
    }

    /// [`TrainableTable::create`], with row checksums on rows and state or without.
    pub fn create_with(
        dir: impl AsRef<Path>,
        header: Header,
        optimizer: Optimizer,
        allow_non_finite: bool,
        row_checksums: bool,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        header.validate()?;
        std::fs::create_dir(dir).map_err(|e| Error::io(dir, e))?;
        let created = (|| {
            let params = Table::create_with(dir.join(PARAMS_FILE), header.clone(), row_checksums)?;
            let state = Self::state_header(&header, &optimizer)
                .map(|h| Table::create_with(dir.join(STATE_FILE), h, row_checksums))
                .transpose()?;
            Ok((params, state))
        })();
        match created.and_then(|(params, state)| {
            Self::assemble(
                dir,
                params,
                state,
                optimizer,
                allow_non_finite,
                0,
                Writes::ToFile,
            )
        }) {
            Ok(table) => Ok(table),
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir);
                Err(e)
            }
        }
    }

    /// Opens the files in `dir`, checking that they fit the optimizer.
    pub fn open(
        dir: impl AsRef<Path>,
        optimizer: Optimizer,
        allow_non_finite: bool,
        step: u64,
    ) -> Result<Self> {
        Self::open_with(
            dir.as_ref(),
            optimizer,
            allow_non_finite,
            step,
            Writes::ToFile,
        )
    }

    /// Opens a table on read-only media: its files are read, never written (see
    /// [`Table::open_read_only`]), and pushes are refused.
    pub fn open_read_only(dir: impl AsRef<Path>, optimizer: Optimizer, step: u64) -> Result<Self> {
        Self::open_with(dir.as_ref(), optimizer, false, step, Writes::Private)
    }

    fn open_with(
        dir: &Path,
        optimizer: Optimizer,
        allow_non_finite: bool,
        step: u64,
        writes: Writes,
    ) -> Result<Self> {
        let open = |path: PathBuf| match writes {
            Writes::ToFile => Table::open(path),
            Writes::Private => Table::open_read_only(path),
        };
        let params = open(dir.join(PARAMS_FILE))?;
        let expected_state = Self::state_header(params.header(), &optimizer);
        let state = match expected_state {
            None => None,
            Some(expected) => {
                let state = open(dir.join(STATE_FILE))?;
                if state.header() != &expected {
                    return Err(Error::format(
                        state.path(),
                        format!(
                            "optimizer state {:?} does not fit {}",
                            state.header(),
                            optimizer.name()
                        ),
                    ));
                }
                Some(state)
            }
        };
        Self::assemble(
            dir,
            params,
            state,
            optimizer,
            allow_non_finite,
            step,
            writes,
        )
    }

    fn assemble(
        dir: &Path,
        params: Table,
        state: Option<Table>,
        optimizer: Optimizer,
        allow_non_finite: bool,
        step: u64,
        writes: Writes,
    ) -> Result<Self> {
        let state_bytes = state.as_ref().map_or(0, |s| s.dtype().row_bytes(s.dim()));
        let row_bytes = params.dtype().row_bytes(params.dim());
        let undo = match writes {
            Writes::ToFile => UndoLog::open(dir, row_bytes, state_bytes)?,
            Writes::Private => UndoLog::open_read_only(dir, row_bytes, state_bytes)?,
        };
        // Pushes write rows here and there.
        params.set_access(Access::Sparse);
        if let Some(state) = &state {
            state.set_access(Access::Sparse);
        }
        Ok(TrainableTable {
            dir: dir.to_path_buf(),
            params,
            state,
            tuning: RwLock::new(Tuning {
                optimizer,
                weight_decay: 0.0,
            }),
            allow_non_finite,
            step: AtomicU64::new(step),
            push_lock: Mutex::new(undo),
            journal: OnceLock::new(),
            writes,
        })
    }

    /// From now on, every push is committed by a record in `journal` (and undone if that
    /// record cannot be written). Attached once.
    pub fn attach_journal(&self, journal: Arc<Journal>) -> Result<()> {
        self.journal
            .set(journal)
            .map_err(|_| Error::invalid("the table already has a journal"))
    }

    /// The table's name in journal records: its directory's.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The token of the last push that started on this table (see [`UndoLog`]).
    pub fn last_push_token(&self) -> u64 {
        self.pause_pushes().token()
    }

    /// After a crash: undoes the last push that started on this table unless `committed`
    /// says its journal record was written.
    pub fn recover(&self, committed: impl Fn(u64) -> bool) -> Result<Option<RolledBack>> {
        let undo = self.pause_pushes();
        let token = undo.token();
        if token == 0 || undo.rolled_back() || committed(token) {
            return Ok(None);
        }
        let rows = undo.roll_back(&self.params, self.state.as_ref())?;
        Ok(Some(RolledBack { token, rows }))
    }

    fn state_header(params: &Header, optimizer: &Optimizer) -> Option<Header> {
        // Quantized tables serve and are never pushed to: no state to keep.
        let state_dim = match params.dtype.is_quantized() {
            true => 0,
            false => optimizer.state_dim(params.dim as usize),
        };
        (state_dim > 0).then(|| Header {
            dtype: crate::codec::DType::F32,
            num_rows: params.num_rows,
            dim: state_dim as u64,
            init: optimizer.state_initializer(),
            first_row: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn params(&self) -> &Table {
        &self.params
    }
    pub fn state(&self) -> Option<&Table> {
        self.state.as_ref()
    }
    pub fn optimizer(&self) -> Optimizer {
        self.tuning().optimizer
    }
    pub fn tuning(&self) -> Tuning {
        *self.tuning.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the learning rate and weight decay of later pushes (a push in progress keeps
    /// those it started with); the optimizer's kind and state stay.
    pub fn retune(&self, lr: f32, weight_decay: f32) -> Result<()> {
        crate::optim::check_weight_decay(weight_decay)?;
        let mut tuning = self.tuning.write().unwrap_or_else(|e| e.into_inner());
        *tuning = Tuning {
            optimizer: tuning.optimizer.with_lr(lr)?,
            weight_decay,
        };
        Ok(())
    }
    pub fn allow_non_finite(&self) -> bool {
        self.allow_non_finite
    }
    pub fn step(&self) -> u64 {
        self.step.load(Ordering::Acquire)
    }

    /// Holds off pushes while the caller works on a consistent view (checkpoints).
    pub fn pause_pushes(&self) -> MutexGuard<'_, UndoLog> {
        self.push_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the step count (restores).
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Release);
    }

    /// Applies float32 `grads` (`keys.len() x dim`); see [`TrainableTable::push_encoded`].
    pub fn push(&self, keys: &[u64], grads: &[f32], step: Option<u64>) -> Result<PushOutcome> {
        // SAFETY: any f32 is plain bytes; tables only build on little-endian targets.
        let bytes = unsafe {
            std::slice::from_raw_parts(grads.as_ptr().cast::<u8>(), std::mem::size_of_val(grads))
        };
        self.push_encoded(keys, DType::F32, bytes, step, Origin::default())
    }

    /// Applies gradients packed little-endian as `grads_dtype` (a wire payload, read in
    /// place), summing the gradients of repeated keys first. Without `step`, the table's step
    /// count advances by one; with it, the optimizer uses that step and the count becomes at
    /// least `step`. Everything is validated before any row changes.
    pub fn push_encoded(
        &self,
        keys: &[u64],
        grads_dtype: DType,
        grads: &[u8],
        step: Option<u64>,
        origin: Origin<'_>,
    ) -> Result<PushOutcome> {
        let (grads, groups) = self.prepare_push(keys, grads_dtype, grads, step)?;
        let mut undo = self.pause_pushes();
        self.apply_push(&mut undo, &groups, grads, step, origin)
    }

    /// [`TrainableTable::push_encoded`], then overwrites `buffer` (which held the gradients)
    /// with the rows of `keys` as this push left them, in the same dtype, before any other
    /// push can change them: a client learns the rows its push produced without reading
    /// them again.
    pub fn push_returning_rows(
        &self,
        keys: &[u64],
        dtype: DType,
        buffer: &mut [u8],
        step: Option<u64>,
        origin: Origin<'_>,
    ) -> Result<PushOutcome> {
        let mut serialised;
        let outcome = {
            let (grads, groups) = self.prepare_push(keys, dtype, buffer, step)?;
            serialised = self.pause_pushes();
            self.apply_push(&mut serialised, &groups, grads, step, origin)?
        };
        self.params.gather_into(keys, dtype, buffer)?;
        drop(serialised);
        Ok(outcome)
    }

    /// Validates a push (before any lock is taken) and groups its keys.
    fn prepare_push<'a>(
        &self,
        keys: &[u64],
        grads_dtype: DType,
        grads: &'a [u8],
        step: Option<u64>,
    ) -> Result<(Gradients<'a>, KeyGroups)> {
        if self.writes == Writes::Private {
            return Err(Error::invalid(format!(
                "{}: the table is on read-only media: pushes are refused",
                self.dir.display()
            )));
        }
        let stored = self.params.dtype();
        if stored.is_quantized() {
            return Err(Error::invalid(format!(
                "this table stores {} rows, which are for serving: pushes are refused (import \
                 its checkpoint into a float32 table to train it)",
                stored.name()
            )));
        }
        if grads_dtype.is_quantized() {
            return Err(Error::invalid(format!(
                "gradients travel as float32, bfloat16 or float16, not {}",
                grads_dtype.name()
            )));
        }
        let dim = self.params.dim();
        let row_bytes = grads_dtype.row_bytes(dim);
        if grads.len() != keys.len() * row_bytes {
            return Err(Error::invalid(format!(
                "gradients hold {} bytes, expected {} keys x dim {dim} x {}",
                grads.len(),
                keys.len(),
                grads_dtype.name()
            )));
        }
        if keys.is_empty() {
            return Err(Error::invalid("push has no keys"));
        }
        if step == Some(0) {
            return Err(Error::invalid("step counts from 1, got 0"));
        }
        self.params.check_keys(keys)?;
        let grads = Gradients::new(grads_dtype, grads, dim);
        // Both passes read everything the push carries; running them side by side halves
        // the time before the first row changes.
        let (finite, groups) = parallel::join(
            || match self.allow_non_finite {
                true => Ok(()),
                false => grads.check_finite(dim),
            },
            || KeyGroups::of(keys),
        );
        finite?;
        Ok((grads, groups?))
    }

    /// Applies a prepared push; the caller holds [`TrainableTable::pause_pushes`]. Disk for
    /// new rows is reserved first (a full disk fails the push). With a journal, every row
    /// is saved in the undo log before it
    /// changes, and the push is committed by its journal record (or undone, if the record
    /// cannot be written).
    fn apply_push(
        &self,
        undo: &mut UndoLog,
        groups: &KeyGroups,
        grads: Gradients<'_>,
        step: Option<u64>,
        origin: Origin<'_>,
    ) -> Result<PushOutcome> {
        let journal = self.journal.get();
        let token = journal.map(|j| j.next_token());
        if let Some(token) = token {
            undo.begin(token, groups.unique.len())?;
        }
        let step_before = self.step();
        let step = match step {
            Some(s) => {
                self.step.fetch_max(s, Ordering::AcqRel);
                s
            }
            None => self.step.fetch_add(1, Ordering::AcqRel) + 1,
        };
        let tuning = self.tuning();
        let update = OptimizerStep {
            optimizer: tuning.optimizer,
            constants: tuning
                .optimizer
                .at_step(step)
                .with_weight_decay(tuning.weight_decay),
            grads,
            dim: self.params.dim(),
        };
        let saver = token.map(|_| &*undo as &dyn crate::table::RowSaver);
        let rows =
            match self
                .params
                .update_grouped_saving(self.state.as_ref(), groups, update, saver)
            {
                Ok(rows) => rows,
                Err(e) => {
                    // Refused before any row changed (a full disk): the step is not taken either.
                    self.step.store(step_before, Ordering::Release);
                    return Err(e);
                }
            };
        crate::crash_points::crash_point("push:rows-applied");
        if let (Some(journal), Some(token)) = (journal, token) {
            let record = JournalRecord {
                token,
                table: self.name(),
                client_id: origin.client_id.to_owned(),
                sequence: origin.sequence,
                step: self.step(),
            };
            if let Err(e) = journal.append(&record) {
                undo.roll_back(&self.params, self.state.as_ref())?;
                self.step.store(step_before, Ordering::Release);
                return Err(e);
            }
            crate::crash_points::crash_point("push:journal-appended");
        }
        Ok(PushOutcome { rows, step })
    }

    /// Keys whose rows or state changed since the dirty marks were last cleared.
    pub fn dirty_keys(&self) -> Vec<u64> {
        merge_sorted(
            self.params.dirty_keys(),
            self.state.as_ref().map(Table::dirty_keys),
        )
    }

    /// Copies, bit for bit, the stored rows of `source` (another shard of the same table:
    /// same dtype, dim and optimizer state) whose global rows fall in this table's range,
    /// with their optimizer state; the step is left to the caller. Returns the rows copied.
    /// For resharding a table offline: neither table may be pushed meanwhile.
    pub fn copy_rows_from(&self, source: &TrainableTable) -> Result<u64> {
        let (from, to) = (source.params.header(), self.params.header());
        let state_dim = |t: &TrainableTable| t.state.as_ref().map_or(0, Table::dim);
        if (from.dtype, from.dim, state_dim(source)) != (to.dtype, to.dim, state_dim(self)) {
            return Err(Error::invalid(format!(
                "shards differ: (dtype, dim, state dim) {:?} against {:?}",
                (from.dtype, from.dim, state_dim(source)),
                (to.dtype, to.dim, state_dim(self))
            )));
        }
        let (start, stop) = (to.first_row, to.first_row + to.num_rows);
        let inside: Vec<u64> = source
            .written_keys()
            .into_iter()
            .filter(|key| (start..stop).contains(&(from.first_row + key)))
            .collect();
        for batch in inside.chunks(ROWS_PER_COPY) {
            let local: Vec<u64> = batch.iter().map(|k| from.first_row + k - start).collect();
            self.params
                .write_raw_rows(&local, &source.params.read_raw_rows(batch)?)?;
            if let (Some(mine), Some(theirs)) = (&self.state, &source.state) {
                mine.write_raw_rows(&local, &theirs.read_raw_rows(batch)?)?;
            }
        }
        Ok(inside.len() as u64)
    }

    /// Keys of the rows changed since the dirty marks were last cleared that are stored
    /// (rows or state rows). A row marked but not stored was first written by a push that a
    /// crash cut short and start-up put back: never-written then as at the last checkpoint,
    /// it is left out, so that a checkpoint restores it never-written as well.
    pub fn changed_stored_keys(&self) -> Result<Vec<u64>> {
        let changed = self.dirty_keys();
        let mut stored = self.params.written(&changed)?;
        if let Some(state) = &self.state {
            for (stored, state_stored) in stored.iter_mut().zip(state.written(&changed)?) {
                *stored |= state_stored;
            }
        }
        Ok(changed
            .into_iter()
            .zip(stored)
            .filter_map(|(key, stored)| stored.then_some(key))
            .collect())
    }

    /// Keys of every stored row or state row.
    pub fn written_keys(&self) -> Vec<u64> {
        merge_sorted(
            self.params.written_keys(),
            self.state.as_ref().map(Table::written_keys),
        )
    }

    /// Bytes of the rows' and the optimizer state's files in the page cache (see
    /// [`Table::resident_bytes`]).
    pub fn resident_bytes(&self, max_probes: usize) -> Result<u64> {
        let state = match &self.state {
            Some(state) => state.resident_bytes(max_probes)?,
            None => 0,
        };
        Ok(self.params.resident_bytes(max_probes)? + state)
    }

    /// Checks the rows and optimizer state against their checksums: the first rows of the
    /// blocks that do not match, as (file name, row).
    pub fn verify(&self) -> Vec<(&'static str, u64)> {
        let _paused = self.pause_pushes();
        let mut bad: Vec<(&'static str, u64)> = self
            .params
            .verify()
            .into_iter()
            .map(|r| (PARAMS_FILE, r))
            .collect();
        if let Some(state) = &self.state {
            bad.extend(state.verify().into_iter().map(|r| (STATE_FILE, r)));
        }
        bad
    }

    pub fn clear_dirty(&self) {
        self.params.clear_dirty();
        if let Some(state) = &self.state {
            state.clear_dirty();
        }
    }

    pub fn flush(&self) -> Result<()> {
        self.params.flush()?;
        if let Some(state) = &self.state {
            state.flush()?;
        }
        Ok(())
    }
}

fn merge_sorted(mut a: Vec<u64>, b: Option<Vec<u64>>) -> Vec<u64> {
    if let Some(b) = b {
        a.extend(b);
        a.sort_unstable();
        a.dedup();
    }
    a
}

thread_local! {
    /// Per-thread buffer for the summed gradient of one key.
    static GRADIENT_SUM: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One optimizer step on each pushed row: its gradients summed, then applied.
struct OptimizerStep<'a> {
    optimizer: Optimizer,
    constants: StepConstants,
    grads: Gradients<'a>,
    dim: usize,
}

impl GroupUpdate for OptimizerStep<'_> {
    fn update(&self, positions: &[u32], row: &mut [f32], state: &mut [f32]) {
        if let ([only], Some(values)) = (positions, self.grads.f32_values) {
            // One occurrence of a float32 gradient: read it in place.
            let grad = &values[*only as usize * self.dim..][..self.dim];
            return self.optimizer.apply_at(&self.constants, row, state, grad);
        }
        GRADIENT_SUM.with_borrow_mut(|sum| {
            sum.resize(self.dim, 0.0);
            self.grads.sum_rows(positions, sum);
            self.optimizer.apply_at(&self.constants, row, state, sum)
        })
    }

    fn prefetch(&self, positions: &[u32]) {
        for &p in positions {
            for line in self.grads.row(p as usize).chunks(64) {
                prefetch_ptr(line.as_ptr());
            }
        }
    }
}

/// Gradient rows still in their wire encoding.
struct Gradients<'a> {
    dtype: DType,
    bytes: &'a [u8],
    row_bytes: usize,
    /// The same bytes as float32 values, when they are float32 and aligned for it.
    f32_values: Option<&'a [f32]>,
}

impl<'a> Gradients<'a> {
    fn new(dtype: DType, bytes: &'a [u8], dim: usize) -> Self {
        // SAFETY: any bit pattern is a valid f32; align_to only yields aligned values.
        let (head, values, tail) = unsafe { bytes.align_to::<f32>() };
        let aligned = head.is_empty() && tail.is_empty();
        Gradients {
            dtype,
            bytes,
            row_bytes: dtype.row_bytes(dim),
            f32_values: (dtype == DType::F32 && aligned).then_some(values),
        }
    }

    fn row(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.row_bytes..(i + 1) * self.row_bytes]
    }

    /// `sum` = the sum of rows `members`, added in order.
    fn sum_rows(&self, members: &[u32], sum: &mut [f32]) {
        let (first, rest) = members.split_first().expect("every key has a row");
        codec::decode_to_f32(self.dtype, self.row(*first as usize), sum);
        let mut decoded = [0f32; 64];
        for &member in rest {
            let row = self.row(member as usize);
            let width = self.dtype.row_bytes(decoded.len());
            for (part, acc) in row.chunks(width).zip(sum.chunks_mut(decoded.len())) {
                let values = &mut decoded[..acc.len()];
                codec::decode_to_f32(self.dtype, part, values);
                for (a, v) in acc.iter_mut().zip(values.iter()) {
                    *a += v;
                }
            }
        }
    }

    /// Fails naming the first non-finite gradient. Looks for values whose exponent bits are
    /// all set, over large chunks in parallel (a branch-free OR the compiler vectorises);
    /// only a failure looks for the row.
    fn check_finite(&self, dim: usize) -> Result<()> {
        let non_finite = |bytes: &[u8]| -> bool {
            let found = match self.dtype {
                DType::F32 => bytes
                    .chunks_exact(4)
                    .map(|v| {
                        let bits = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                        u32::from(bits & 0x7f80_0000 == 0x7f80_0000)
                    })
                    .fold(0, |a, b| a | b),
                DType::BF16 => bytes
                    .chunks_exact(2)
                    .map(|v| u32::from(u16::from_le_bytes([v[0], v[1]]) & 0x7f80 == 0x7f80))
                    .fold(0, |a, b| a | b),
                DType::F16 => bytes
                    .chunks_exact(2)
                    .map(|v| u32::from(u16::from_le_bytes([v[0], v[1]]) & 0x7c00 == 0x7c00))
                    .fold(0, |a, b| a | b),
                // Refused by `prepare_push` before any check.
                DType::Fp8E4M3 | DType::Int8 => 0,
            };
            found != 0
        };
        let chunk = self.row_bytes * 1024;
        let all_finite = match self.f32_values {
            // The common case, on whole words: the compiler's best vector code.
            Some(values) => !values
                .par_chunks(chunk / 4)
                .with_min_len(parallel::min_items_per_task())
                .any(|c| {
                    c.iter()
                        .map(|v| u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000))
                        .fold(0, |a, b| a | b)
                        != 0
                }),
            None => !self
                .bytes
                .par_chunks(chunk)
                .with_min_len(parallel::min_items_per_task())
                .any(non_finite),
        };
        if all_finite {
            return Ok(());
        }
        let rows = self.bytes.len() / self.row_bytes;
        let i = (0..rows).find(|&i| non_finite(self.row(i))).unwrap_or(0);
        let mut decoded = vec![0f32; dim];
        codec::decode_to_f32(self.dtype, self.row(i), &mut decoded);
        let col = decoded.iter().position(|g| !g.is_finite()).unwrap_or(0);
        Err(Error::invalid(format!(
            "gradient of keys[{i}] is {} (column {col}); this table rejects non-finite gradients",
            decoded[col]
        )))
    }
}

#[cfg(test)]
mod tests;
