//! A trainable embedding table: the rows, the optimizer's state beside them, and the step
//! count. Pushes apply sparse gradients atomically: a concurrent lookup sees every row of a
//! push either before or after it.

use crate::error::{Error, Result};
use crate::optim::Optimizer;
use crate::table::format::Header;
use crate::table::Table;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

pub const PARAMS_FILE: &str = "params.engram";
pub const STATE_FILE: &str = "state.engram";

#[derive(Debug)]
pub struct EmbeddingTable {
    dir: PathBuf,
    params: Table,
    state: Option<Table>,
    optimizer: Optimizer,
    allow_non_finite: bool,
    step: AtomicU64,
    /// Serialises pushes (and checkpoints) so that steps are applied in the order counted.
    push_lock: Mutex<()>,
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushOutcome {
    /// Distinct rows updated (duplicate keys are summed first).
    pub rows: usize,
    /// The step the optimizer applied.
    pub step: u64,
}

impl EmbeddingTable {
    /// Creates the table's files in `dir` (which must not exist yet).
    pub fn create(
        dir: impl AsRef<Path>,
        header: Header,
        optimizer: Optimizer,
        allow_non_finite: bool,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        header.validate()?;
        std::fs::create_dir(dir).map_err(|e| Error::io(dir, e))?;
        let created = (|| {
            let params = Table::create(dir.join(PARAMS_FILE), header.clone())?;
            let state = Self::state_header(&header, &optimizer)
                .map(|h| Table::create(dir.join(STATE_FILE), h))
                .transpose()?;
            Ok((params, state))
        })();
        match created {
            Ok((params, state)) => Ok(Self::assemble(
                dir,
                params,
                state,
                optimizer,
                allow_non_finite,
                0,
            )),
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
        let dir = dir.as_ref();
        let params = Table::open(dir.join(PARAMS_FILE))?;
        let expected_state = Self::state_header(params.header(), &optimizer);
        let state = match expected_state {
            None => None,
            Some(expected) => {
                let state = Table::open(dir.join(STATE_FILE))?;
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
        Ok(Self::assemble(
            dir,
            params,
            state,
            optimizer,
            allow_non_finite,
            step,
        ))
    }

    fn assemble(
        dir: &Path,
        params: Table,
        state: Option<Table>,
        optimizer: Optimizer,
        allow_non_finite: bool,
        step: u64,
    ) -> Self {
        EmbeddingTable {
            dir: dir.to_path_buf(),
            params,
            state,
            optimizer,
            allow_non_finite,
            step: AtomicU64::new(step),
            push_lock: Mutex::new(()),
        }
    }

    fn state_header(params: &Header, optimizer: &Optimizer) -> Option<Header> {
        let state_dim = optimizer.state_dim(params.dim as usize);
        (state_dim > 0).then(|| Header {
            dtype: crate::codec::DType::F32,
            num_rows: params.num_rows,
            dim: state_dim as u64,
            init: optimizer.state_initializer(),
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
        self.optimizer
    }
    pub fn allow_non_finite(&self) -> bool {
        self.allow_non_finite
    }
    pub fn step(&self) -> u64 {
        self.step.load(Ordering::Acquire)
    }

    /// Holds off pushes while the caller works on a consistent view (checkpoints).
    pub fn pause_pushes(&self) -> MutexGuard<'_, ()> {
        self.push_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the step count (restores).
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Release);
    }

    /// Applies `grads` (`keys.len() x dim`) with the optimizer, summing the gradients of
    /// repeated keys first. Without `step`, the table's step count advances by one; with it,
    /// the optimizer uses that step and the count becomes at least `step`. Everything is
    /// validated before any row changes.
    pub fn push(&self, keys: &[u64], grads: &[f32], step: Option<u64>) -> Result<PushOutcome> {
        let dim = self.params.dim();
        if grads.len() != keys.len() * dim {
            return Err(Error::invalid(format!(
                "gradients hold {} values, expected {} keys x dim {dim}",
                grads.len(),
                keys.len()
            )));
        }
        if keys.is_empty() {
            return Err(Error::invalid("push has no keys"));
        }
        if step == Some(0) {
            return Err(Error::invalid("step counts from 1, got 0"));
        }
        self.params.check_keys(keys)?;
        if !self.allow_non_finite {
            if let Some(i) = grads.iter().position(|g| !g.is_finite()) {
                return Err(Error::invalid(format!(
                    "gradient of keys[{}] is {} (column {}); this table rejects non-finite gradients",
                    i / dim,
                    grads[i],
                    i % dim
                )));
            }
        }
        let (unique, summed) = sum_duplicates(keys, grads, dim);
        let _serialised = self.pause_pushes();
        let step = match step {
            Some(s) => {
                self.step.fetch_max(s, Ordering::AcqRel);
                s
            }
            None => self.step.fetch_add(1, Ordering::AcqRel) + 1,
        };
        let optimizer = self.optimizer;
        self.params
            .update_rows_with_state(self.state.as_ref(), &unique, |i, row, state| {
                optimizer.apply(row, state, &summed[i * dim..(i + 1) * dim], step)
            })?;
        Ok(PushOutcome {
            rows: unique.len(),
            step,
        })
    }

    /// Keys whose rows or state changed since the dirty marks were last cleared.
    pub fn dirty_keys(&self) -> Vec<u64> {
        merge_sorted(
            self.params.dirty_keys(),
            self.state.as_ref().map(Table::dirty_keys),
        )
    }

    /// Keys of every stored row or state row.
    pub fn written_keys(&self) -> Vec<u64> {
        merge_sorted(
            self.params.written_keys(),
            self.state.as_ref().map(Table::written_keys),
        )
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

/// Distinct keys in first-seen order and the sum of each key's gradients.
fn sum_duplicates(keys: &[u64], grads: &[f32], dim: usize) -> (Vec<u64>, Vec<f32>) {
    let mut slot_of: HashMap<u64, usize> = HashMap::with_capacity(keys.len());
    let mut unique = Vec::with_capacity(keys.len());
    let mut summed: Vec<f32> = Vec::with_capacity(grads.len());
    for (&key, grad) in keys.iter().zip(grads.chunks_exact(dim)) {
        match slot_of.get(&key) {
            Some(&slot) => {
                for (s, g) in summed[slot * dim..(slot + 1) * dim].iter_mut().zip(grad) {
                    *s += g;
                }
            }
            None => {
                slot_of.insert(key, unique.len());
                unique.push(key);
                summed.extend_from_slice(grad);
            }
        }
    }
    (unique, summed)
}

#[cfg(test)]
mod tests;
