//! Bindings of the hashing kernel.

use super::{detached, invalid_argument, owned, to_py_err};
use crate::hash::{self, primes};
use numpy::{
    IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray4,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

/// Hash kernel for one model configuration (every Engram layer).
#[pyclass(frozen, module = "store._native")]
pub(crate) struct NgramHasher {
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
    /// `token_mask` (`[B, T]` bool, true where a token takes part) blocks n-grams at masked
    /// tokens (see `hash/mod.rs`).
    #[pyo3(signature = (input_ids, out, token_mask=None))]
    fn hash_into(
        &self,
        py: Python<'_>,
        input_ids: PyReadonlyArray2<'_, i64>,
        mut out: PyReadwriteArray4<'_, i64>,
        token_mask: Option<PyReadonlyArray2<'_, bool>>,
    ) -> PyResult<()> {
        let (batch, seq) = (input_ids.shape()[0], input_ids.shape()[1]);
        let ids: Vec<i64> = input_ids.as_array().iter().copied().collect();
        let mask: Option<Vec<bool>> = match token_mask {
            Some(mask) if mask.shape() != input_ids.shape() => {
                return Err(invalid_argument(format!(
                    "token_mask must have the shape of input_ids {:?}, got {:?}",
                    input_ids.shape(),
                    mask.shape()
                )));
            }
            Some(mask) => Some(mask.as_array().iter().copied().collect()),
            None => None,
        };
        let out = out.as_slice_mut()?;
        detached(py, || {
            self.inner.hash_into(&ids, mask.as_deref(), batch, seq, out)
        })
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
pub(crate) fn table_sizes(
    py: Python<'_>,
    vocab_sizes: Vec<u64>,
    n_head_per_ngram: usize,
    n_layers: usize,
) -> PyResult<Vec<Vec<Vec<u64>>>> {
    if let Some(bad) = vocab_sizes.iter().find(|&&v| v < 1) {
        return Err(invalid_argument(format!(
            "engram_vocab_size entries must be positive, got {bad}"
        )));
    }
    py.detach(|| primes::table_sizes(&vocab_sizes, n_head_per_ngram, n_layers))
        .ok_or_else(|| invalid_argument("no 64-bit prime table size above engram_vocab_size"))
}

/// Raw token ids -> compressed ids through `lookup`; negative ids pass through.
#[pyfunction]
pub(crate) fn compress_ids<'py>(
    py: Python<'py>,
    ids: PyReadonlyArray1<'py, i64>,
    lookup: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (ids, lookup) = (owned(&ids), owned(&lookup));
    let out = detached(py, || hash::compress_ids(&ids, &lookup))?;
    Ok(out.into_pyarray(py))
}
