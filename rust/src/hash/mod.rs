//! Engram n-gram hashing, bit for bit the published reference (`engram_demo_v1.py`).
//!
//! For each position t and n-gram order n, the reference computes
//! `mix = tok[t]*m[0] ^ tok[t-1]*m[1] ^ ... ^ tok[t-n+1]*m[n-1]` in wrapping int64 (tokens
//! before the start are the compressed pad id) and, for each head, `mix mod prime`.
//! Layer multipliers come from numpy's generator and are computed by the Python caller;
//! the table primes come from [`primes::table_sizes`].
//!
//! A token mask (DeepSeek-V4.1's image spans: true where the token takes part) blocks
//! slots: walking back from t with shift s = 0, 1, ..., a slot is blocked when t - s < 0,
//! when the token at t - s is masked, or when a smaller shift was blocked, and a blocked slot
//! takes the compressed pad id. So a masked position hashes as all pads, and no n-gram
//! reaches across a masked span; without a mask (or with every token taking part) the ids
//! are the reference's.

mod modulus;
pub mod primes;

pub use modulus::Modulus;

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Positions per parallel work item: large enough to amortise scheduling, small enough that
/// a single long sequence still spreads over every core.
const POSITIONS_PER_TASK: usize = 8192;

#[derive(Clone, Debug)]
struct LayerHashing {
    multipliers: Vec<i64>,
    /// `[(order - 2) * n_head + head]`.
    moduli: Vec<Modulus>,
}

/// The hashing of every Engram layer of one model configuration.
#[derive(Clone, Debug)]
pub struct NgramHasher {
    max_ngram: usize,
    n_head: usize,
    pad_id: i64,
    layers: Vec<LayerHashing>,
    /// Raw token id -> compressed id; without it, inputs are taken as already compressed.
    lookup: Option<Vec<i64>>,
}

impl NgramHasher {
    /// `multipliers[layer]` has `max_ngram` entries; `primes[layer]` has
    /// `(max_ngram - 1) * n_head` entries ordered by n-gram order, then head. `pad_id` is a
    /// compressed id.
    pub fn new(
        max_ngram: usize,
        n_head: usize,
        pad_id: i64,
        multipliers: Vec<Vec<i64>>,
        primes: Vec<Vec<u64>>,
        lookup: Option<Vec<i64>>,
    ) -> Result<Self> {
        if max_ngram < 2 {
            return Err(Error::invalid(format!(
                "max_ngram_size must be at least 2, got {max_ngram}"
            )));
        }
        if n_head == 0 {
            return Err(Error::invalid("n_head_per_ngram must be positive, got 0"));
        }
        if multipliers.len() != primes.len() {
            return Err(Error::invalid(format!(
                "multipliers cover {} layers but primes cover {}",
                multipliers.len(),
                primes.len()
            )));
        }
        let heads_per_layer = (max_ngram - 1) * n_head;
        let mut layers = Vec::with_capacity(primes.len());
        for (layer, (mults, layer_primes)) in multipliers.into_iter().zip(primes).enumerate() {
            if mults.len() != max_ngram {
                return Err(Error::invalid(format!(
                    "layer {layer}: expected {max_ngram} multipliers, got {}",
                    mults.len()
                )));
            }
            if layer_primes.len() != heads_per_layer {
                return Err(Error::invalid(format!(
                    "layer {layer}: expected {heads_per_layer} table sizes, got {}",
                    layer_primes.len()
                )));
            }
            let moduli = layer_primes
                .iter()
                .map(|&p| {
                    Modulus::new(p).ok_or_else(|| {
                        Error::invalid(format!("layer {layer}: table size {p} is below 2"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            layers.push(LayerHashing {
                multipliers: mults,
                moduli,
            });
        }
        Ok(NgramHasher {
            max_ngram,
            n_head,
            pad_id,
            layers,
            lookup,
        })
    }

    /// A 64-bit digest of everything that determines the hash ids (FNV-1a over the config,
    /// multipliers, table sizes and lookup table): equal digests mean interchangeable hashers,
    /// so a server can refuse token ids hashed under another configuration.
    pub fn fingerprint(&self) -> u64 {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut digest = FNV_OFFSET;
        let mut feed = |value: u64| {
            for byte in value.to_le_bytes() {
                digest = (digest ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
            }
        };
        feed(self.max_ngram as u64);
        feed(self.n_head as u64);
        feed(self.pad_id as u64);
        feed(self.layers.len() as u64);
        for layer in &self.layers {
            layer.multipliers.iter().for_each(|&m| feed(m as u64));
            layer.moduli.iter().for_each(|m| feed(m.value()));
        }
        match &self.lookup {
            Some(lookup) => {
                feed(lookup.len() as u64);
                lookup.iter().for_each(|&id| feed(id as u64));
            }
            None => feed(u64::MAX),
        }
        digest
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Hash ids per position and layer: `(max_ngram - 1) * n_head`.
    pub fn heads_per_layer(&self) -> usize {
        (self.max_ngram - 1) * self.n_head
    }

    /// Hashes `[batch, seq]` token ids for every layer into
    /// `[layers, batch, seq, heads_per_layer]`, row-major. Ids are compressed first when the
    /// hasher has a lookup table.
    pub fn hash(&self, ids: &[i64], batch: usize, seq: usize) -> Result<Vec<i64>> {
        let mut out = vec![0i64; self.output_len(batch, seq)?];
        self.hash_into(ids, None, batch, seq, &mut out)?;
        Ok(out)
    }

    /// Elements of the output of [`NgramHasher::hash`] for a `[batch, seq]` input.
    pub fn output_len(&self, batch: usize, seq: usize) -> Result<usize> {
        batch
            .checked_mul(seq)
            .and_then(|n| n.checked_mul(self.heads_per_layer() * self.layers.len()))
            .ok_or_else(|| Error::invalid(format!("input shape [{batch}, {seq}] overflows")))
    }

    /// [`NgramHasher::hash`] into a caller-provided buffer (fresh memory is costly to fault
    /// in, so callers that can reuse or specially allocate buffers should), with the token
    /// mask `mask` (`[batch, seq]`, true where a token takes part; None: every token does).
    pub fn hash_into(
        &self,
        ids: &[i64],
        mask: Option<&[bool]>,
        batch: usize,
        seq: usize,
        out: &mut [i64],
    ) -> Result<()> {
        let out_len = self.output_len(batch, seq)?;
        if ids.len() != batch * seq {
            return Err(Error::invalid(format!(
                "input_ids has {} elements, expected batch * seq = {}",
                ids.len(),
                batch * seq
            )));
        }
        if let Some(mask) = mask {
            if mask.len() != ids.len() {
                return Err(Error::invalid(format!(
                    "token_mask has {} elements, expected the {} of input_ids",
                    mask.len(),
                    ids.len()
                )));
            }
        }
        let row_mask = |row: usize| mask.map(|m| &m[row * seq..(row + 1) * seq]);
        if out.len() != out_len {
            return Err(Error::invalid(format!(
                "out has {} elements, expected {out_len}",
                out.len()
            )));
        }
        if out_len == 0 {
            return Ok(());
        }
        if let Some(lookup) = &self.lookup {
            check_vocabulary(ids, lookup.len())?;
        }
        let width = self.heads_per_layer();
        let layer_len = out_len / self.layers.len();
        for (layer, layer_out) in self.layers.iter().zip(out.chunks_mut(layer_len)) {
            if batch * seq < POSITIONS_PER_TASK {
                // A small batch (a training step's): waking other threads costs more than it
                // saves, and they would take cores from the model.
                for (row, (row_out, row_ids)) in layer_out
                    .chunks_mut(seq * width)
                    .zip(ids.chunks(seq))
                    .enumerate()
                {
                    self.hash_span(layer, row_ids, row_mask(row), 0, row_out);
                }
                continue;
            }
            layer_out
                .par_chunks_mut(seq * width)
                .zip(ids.par_chunks(seq))
                .enumerate()
                .for_each(|(row, (row_out, row_ids))| {
                    row_out
                        .par_chunks_mut(POSITIONS_PER_TASK * width)
                        .enumerate()
                        .for_each(|(task, task_out)| {
                            let first = task * POSITIONS_PER_TASK;
                            self.hash_span(layer, row_ids, row_mask(row), first, task_out)
                        });
                });
        }
        Ok(())
    }

    /// Hashes positions `first..first + out.len() / width` of one sequence, whose token mask
    /// is `row_mask` (None: every token takes part).
    fn hash_span(
        &self,
        layer: &LayerHashing,
        row_ids: &[i64],
        row_mask: Option<&[bool]>,
        first: usize,
        out: &mut [i64],
    ) {
        let width = self.heads_per_layer();
        let n_head = self.n_head;
        let mults = &layer.multipliers;
        let positions = out.len() / width;
        // The span's tokens, compressed, preceded by its n-gram history (pad before the start).
        let history = self.max_ngram - 1;
        let mut tokens = vec![self.pad_id; history + positions];
        let from = first.saturating_sub(history);
        let dst = &mut tokens[history - (first - from)..];
        for (d, &id) in dst.iter_mut().zip(&row_ids[from..first + positions]) {
            *d = match &self.lookup {
                Some(lookup) if id >= 0 => lookup[id as usize],
                _ => id,
            };
        }
        // Each position's count of unmasked tokens ending at it (up to max_ngram): the
        // shifts at and beyond it are blocked. Before the start, nothing takes part.
        let runs = row_mask.map(|mask| {
            let mut runs = vec![0usize; history + positions];
            let mut run = 0;
            let dst = &mut runs[history - (first - from)..];
            for (d, &takes_part) in dst.iter_mut().zip(&mask[from..first + positions]) {
                run = if takes_part {
                    (run + 1).min(self.max_ngram)
                } else {
                    0
                };
                *d = run;
            }
            runs
        });
        for (offset, heads_out) in out.chunks_exact_mut(width).enumerate() {
            let window = &tokens[offset..offset + history + 1];
            let unblocked = runs
                .as_ref()
                .map_or(self.max_ngram, |r| r[offset + history]);
            let token_at = |back: usize| match back < unblocked {
                true => window[history - back],
                false => self.pad_id,
            };
            let mut mix = token_at(0).wrapping_mul(mults[0]);
            for order in 2..=self.max_ngram {
                mix ^= token_at(order - 1).wrapping_mul(mults[order - 1]);
                let base = (order - 2) * n_head;
                let moduli = &layer.moduli[base..base + n_head];
                for (slot, modulus) in heads_out[base..base + n_head].iter_mut().zip(moduli) {
                    *slot = modulus.floor_mod(mix) as i64;
                }
            }
        }
    }
}

/// Fails naming the first id at or above the vocabulary size (and its flat position). A
/// value error, not an index error: the ids are bad input to the tokenizer's mapping.
fn check_vocabulary(ids: &[i64], vocab: usize) -> Result<()> {
    let vocab = vocab as i64;
    match ids.iter().position(|&id| id >= vocab) {
        None => Ok(()),
        Some(pos) => Err(Error::invalid(format!(
            "input_ids[{pos}] = {} is outside the tokenizer vocabulary of {vocab} ids",
            ids[pos]
        ))),
    }
}

/// Maps raw token ids through `lookup` (raw id -> compressed id). Negative ids pass through
/// unchanged, as in the reference; an id at or above the vocabulary is an error.
pub fn compress_ids(ids: &[i64], lookup: &[i64]) -> Result<Vec<i64>> {
    check_vocabulary(ids, lookup.len())?;
    Ok(ids
        .par_iter()
        .with_min_len(POSITIONS_PER_TASK)
        .map(|&id| if id >= 0 { lookup[id as usize] } else { id })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference formulation, position by position with `%` on i128: the oracle.
    fn naive(
        ids: &[i64],
        seq: usize,
        h: &NgramHasher,
        mults: &[Vec<i64>],
        primes: &[Vec<u64>],
    ) -> Vec<i64> {
        let mut out = Vec::new();
        for (layer_mults, layer_primes) in mults.iter().zip(primes) {
            for row in ids.chunks(seq) {
                for t in 0..seq {
                    for order in 2..=h.max_ngram {
                        let mut mix = 0i64;
                        for k in 0..order {
                            let tok = if k <= t { row[t - k] } else { h.pad_id };
                            mix ^= tok.wrapping_mul(layer_mults[k]);
                        }
                        for head in 0..h.n_head {
                            let p = layer_primes[(order - 2) * h.n_head + head] as i128;
                            out.push((i128::from(mix)).rem_euclid(p) as i64);
                        }
                    }
                }
            }
        }
        out
    }

    fn pseudo_random(n: usize, modulo: i64, seed: u64) -> Vec<i64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 17) as i64).rem_euclid(modulo)
            })
            .collect()
    }

    #[test]
    fn matches_naive_formulation_across_configs() {
        for &(max_ngram, n_head, n_layers, batch, seq) in &[
            (2usize, 1usize, 1usize, 1usize, 1usize),
            (3, 8, 2, 4, 193),
            (4, 3, 3, 2, 20_000),
            (5, 2, 1, 3, 7),
        ] {
            let vocab: Vec<u64> = (0..max_ngram - 1).map(|i| 97 + 1000 * i as u64).collect();
            let sizes = primes::table_sizes(&vocab, n_head, n_layers).unwrap();
            let flat: Vec<Vec<u64>> = sizes.iter().map(|l| l.concat()).collect();
            let mults: Vec<Vec<i64>> = (0..n_layers)
                .map(|l| {
                    pseudo_random(max_ngram, i64::MAX, 7 + l as u64)
                        .iter()
                        .map(|m| m | 1)
                        .collect()
                })
                .collect();
            let h =
                NgramHasher::new(max_ngram, n_head, 3, mults.clone(), flat.clone(), None).unwrap();
            let ids = pseudo_random(batch * seq, 5000, 11);
            let got = h.hash(&ids, batch, seq).unwrap();
            assert_eq!(
                got,
                naive(&ids, seq, &h, &mults, &flat),
                "config {max_ngram} {n_head}"
            );
        }
    }

    /// The masking rule as stated, slot by slot: the oracle for masked hashing.
    fn naive_masked(
        ids: &[i64],
        mask: &[bool],
        seq: usize,
        h: &NgramHasher,
        mults: &[Vec<i64>],
        primes: &[Vec<u64>],
    ) -> Vec<i64> {
        let mut out = Vec::new();
        for (layer_mults, layer_primes) in mults.iter().zip(primes) {
            for (row, row_mask) in ids.chunks(seq).zip(mask.chunks(seq)) {
                for t in 0..seq {
                    let mut blocked = false;
                    let slot: Vec<i64> = (0..h.max_ngram)
                        .map(|s| {
                            blocked = blocked || s > t || !row_mask[t - s];
                            if blocked {
                                h.pad_id
                            } else {
                                row[t - s]
                            }
                        })
                        .collect();
                    for order in 2..=h.max_ngram {
                        let mut mix = 0i64;
                        for (k, &tok) in slot.iter().enumerate().take(order) {
                            mix ^= tok.wrapping_mul(layer_mults[k]);
                        }
                        for head in 0..h.n_head {
                            let p = layer_primes[(order - 2) * h.n_head + head] as i128;
                            out.push((i128::from(mix)).rem_euclid(p) as i64);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn masked_hashing_follows_the_rule_slot_by_slot() {
        for (max_ngram, n_head, seq, batch) in [(2, 1, 7, 3), (3, 2, 40, 2), (4, 8, 9000, 2)] {
            let mults: Vec<Vec<i64>> = (0..2)
                .map(|l| {
                    pseudo_random(max_ngram, 1 << 40, 7 + l)
                        .iter()
                        .map(|m| m * 2 + 1)
                        .collect()
                })
                .collect();
            let primes = vec![
                vec![1_000_003u64; (max_ngram - 1) * n_head],
                vec![999_983u64; (max_ngram - 1) * n_head],
            ];
            let h = NgramHasher::new(max_ngram, n_head, 5, mults.clone(), primes.clone(), None)
                .unwrap();
            let ids = pseudo_random(batch * seq, 50_000, 3);
            let mask: Vec<bool> = pseudo_random(batch * seq, 4, 11)
                .iter()
                .map(|&v| v != 0)
                .collect();
            let mut out = vec![0; h.output_len(batch, seq).unwrap()];
            h.hash_into(&ids, Some(&mask), batch, seq, &mut out)
                .unwrap();
            assert_eq!(
                out,
                naive_masked(&ids, &mask, seq, &h, &mults, &primes),
                "{max_ngram} {seq}"
            );
            let everyone = vec![true; batch * seq];
            h.hash_into(&ids, Some(&everyone), batch, seq, &mut out)
                .unwrap();
            assert_eq!(
                out,
                h.hash(&ids, batch, seq).unwrap(),
                "a mask of all true changes nothing"
            );
            assert!(h
                .hash_into(&ids, Some(&mask[1..]), batch, seq, &mut out)
                .is_err());
        }
    }

    #[test]
    fn negative_ids_hash_like_the_reference() {
        let sizes = primes::table_sizes(&[50, 50], 2, 1).unwrap();
        let flat: Vec<Vec<u64>> = sizes.iter().map(|l| l.concat()).collect();
        let mults = vec![vec![
            1_437_098_346_217_757,
            90_763_247_887_703,
            674_359_547_590_645,
        ]];
        let h = NgramHasher::new(3, 2, 0, mults.clone(), flat.clone(), None).unwrap();
        let ids = vec![-5, 3, -1, 4];
        assert_eq!(
            h.hash(&ids, 1, 4).unwrap(),
            naive(&ids, 4, &h, &mults, &flat)
        );
    }

    #[test]
    fn rejects_bad_configs_and_shapes() {
        let ok_primes = vec![vec![5u64, 7]];
        assert!(NgramHasher::new(1, 2, 0, vec![vec![1]], vec![vec![]], None).is_err());
        assert!(NgramHasher::new(2, 0, 0, vec![vec![1, 3]], vec![vec![]], None).is_err());
        assert!(NgramHasher::new(2, 2, 0, vec![vec![1]], ok_primes.clone(), None).is_err());
        assert!(NgramHasher::new(2, 2, 0, vec![vec![1, 3]], vec![vec![5, 1]], None).is_err());
        let h = NgramHasher::new(2, 2, 0, vec![vec![1, 3]], ok_primes.clone(), None).unwrap();
        assert!(h.hash(&[1, 2, 3], 2, 2).is_err());
        assert_eq!(h.hash(&[], 0, 5).unwrap(), Vec::<i64>::new());
        let with_lookup =
            NgramHasher::new(2, 2, 0, vec![vec![1, 3]], ok_primes, Some(vec![0, 1])).unwrap();
        assert!(with_lookup
            .hash(&[0, 2], 1, 2)
            .unwrap_err()
            .to_string()
            .contains("input_ids[1] = 2"));
    }

    #[test]
    fn fingerprint_changes_with_every_input() {
        let make = |pad: i64, mult: i64, prime: u64, lookup: Option<Vec<i64>>| {
            NgramHasher::new(2, 1, pad, vec![vec![3, mult]], vec![vec![prime]], lookup)
                .unwrap()
                .fingerprint()
        };
        let base = make(0, 5, 11, Some(vec![0, 1]));
        assert_eq!(base, make(0, 5, 11, Some(vec![0, 1])));
        for other in [
            make(1, 5, 11, Some(vec![0, 1])),
            make(0, 7, 11, Some(vec![0, 1])),
            make(0, 5, 13, Some(vec![0, 1])),
            make(0, 5, 11, Some(vec![0, 0])),
            make(0, 5, 11, None),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn lookup_compresses_before_hashing() {
        let primes = vec![vec![11u64, 13]];
        let mults = vec![vec![3i64, 5]];
        let raw =
            NgramHasher::new(2, 2, 0, mults.clone(), primes.clone(), Some(vec![0, 0, 1])).unwrap();
        let pre = NgramHasher::new(2, 2, 0, mults, primes, None).unwrap();
        assert_eq!(
            raw.hash(&[2, 1, -4], 1, 3).unwrap(),
            pre.hash(&[1, 0, -4], 1, 3).unwrap()
        );
    }

    #[test]
    fn compression_maps_ids_and_rejects_out_of_vocabulary() {
        let lookup = vec![0i64, 0, 1, 2];
        assert_eq!(
            compress_ids(&[3, 2, -7, 1], &lookup).unwrap(),
            vec![2, 1, -7, 0]
        );
        let err = compress_ids(&[1, 4], &lookup).unwrap_err().to_string();
        assert!(err.contains("input_ids[1] = 4"), "{err}");
    }
}
