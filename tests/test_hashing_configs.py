"""Hashing beyond the reference's own cases: other orders, tiny tables, many layers, long
sequences, and the errors of bad configurations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from client import CompressedTokenizer, NgramHashMapping


@pytest.fixture(scope="module")
def compressed(tokenizer_path: Path) -> CompressedTokenizer:
    return CompressedTokenizer(tokenizer_path)


def numpy_oracle(
    mapping: NgramHashMapping, ids: npt.NDArray[np.int64], layer: int
) -> npt.NDArray[np.int64]:
    """The reference's formulation, in Python integers position by position."""
    x = mapping.compressed_tokenizer(ids)
    mults = [int(m) for m in mapping.layer_multipliers[layer]]
    batch, seq = x.shape
    out = np.zeros((batch, seq, mapping.heads_per_layer), dtype=np.int64)

    def wrap(v: int) -> int:
        return (v + 2**63) % 2**64 - 2**63

    for b in range(batch):
        for t in range(seq):
            col = 0
            for n in range(2, mapping.max_ngram_size + 1):
                mix = 0
                for k in range(n):
                    tok = int(x[b, t - k]) if t - k >= 0 else mapping.pad_id
                    mix = wrap(mix ^ wrap(tok * mults[k]))
                for prime in mapping.vocab_size_across_layers[layer][n - 2]:
                    out[b, t, col] = mix % prime
                    col += 1
    return out


def make(compressed: CompressedTokenizer, **overrides: Any) -> NgramHashMapping:
    config: dict[str, Any] = {
        "engram_vocab_size": [1000, 1000],
        "max_ngram_size": 3,
        "n_embed_per_ngram": 64,
        "n_head_per_ngram": 4,
        "layer_ids": [2],
        "tokenizer_name_or_path": compressed,
        "pad_id": 0,
        "seed": 0,
    }
    config.update(overrides)
    return NgramHashMapping(**config)


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_ngram_size": 4, "engram_vocab_size": [700, 900, 1100]},
        {"engram_vocab_size": [2, 3], "n_head_per_ngram": 3},
        {"layer_ids": [0, 3, 7, 30], "seed": 1234},
        {"max_ngram_size": 2, "engram_vocab_size": [50], "n_head_per_ngram": 1, "pad_id": 7},
    ],
    ids=["4-grams", "tiny-tables", "several-layers", "bigrams-only"],
)
def test_matches_oracle(compressed: CompressedTokenizer, overrides: dict[str, Any]) -> None:
    mapping = make(compressed, **overrides)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, compressed.vocab_size, (3, 41))
    ids[1, 5] = -1  # negative ids pass compression unchanged and still hash
    hashes = mapping.hash(ids)
    assert list(hashes) == mapping.layer_ids
    for layer, got in hashes.items():
        assert got.shape == (3, 41, (mapping.max_ngram_size - 1) * mapping.n_head_per_ngram)
        np.testing.assert_array_equal(got, numpy_oracle(mapping, ids, layer))
        sizes = np.array(mapping.table_sizes(layer))
        assert ((got >= 0) & (got < sizes)).all()


def test_table_sizes_are_distinct_primes(compressed: CompressedTokenizer) -> None:
    mapping = make(compressed, layer_ids=[1, 2, 3], engram_vocab_size=[10, 10])
    primes = [p for layer in mapping.layer_ids for p in mapping.table_sizes(layer)]
    assert len(set(primes)) == len(primes)
    assert all(p > 9 and all(p % d for d in range(2, int(p**0.5) + 1)) for p in primes)
    offsets = mapping.head_offsets(1)
    assert offsets[0] == 0
    assert offsets[-1] + mapping.table_sizes(1)[-1] == mapping.layer_table_rows(1)


def test_long_sequences_cross_kernel_work_items(compressed: CompressedTokenizer) -> None:
    mapping = make(compressed)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, compressed.vocab_size, (1, 20_000))
    got = mapping.hash(ids)[2]
    # Each position depends only on itself and its two predecessors: hashing any window
    # (with the true predecessors) must reproduce the same rows, wherever work items split.
    for start in (8190, 8191, 8192, 16_383, 19_990):
        window = mapping.hash(ids[:, start - 2 : start + 10])[2][:, 2:]
        np.testing.assert_array_equal(got[:, start : start + 10], window)
    np.testing.assert_array_equal(got[:, :50], numpy_oracle(mapping, ids[:, :50], 2))


def test_hash_into_reuses_a_buffer(compressed: CompressedTokenizer) -> None:
    mapping = make(compressed, layer_ids=[1, 5])
    ids = np.random.default_rng(5).integers(0, compressed.vocab_size, (2, 30))
    out = np.full(mapping.output_shape(2, 30), -1, dtype=np.int64)
    mapping.hash_into(ids, out)
    expected = mapping.hash(ids)
    np.testing.assert_array_equal(out[0], expected[1])
    np.testing.assert_array_equal(out[1], expected[5])
    with pytest.raises(ValueError, match="out must be"):
        mapping.hash_into(ids, np.empty((2, 2, 30, 8), np.int32))


def test_inputs_as_lists_and_empty_batches(compressed: CompressedTokenizer) -> None:
    mapping = make(compressed)
    from_list = mapping.hash([[1, 2, 3]])[2]
    np.testing.assert_array_equal(from_list, mapping.hash(np.array([[1, 2, 3]]))[2])
    assert mapping.hash(np.zeros((0, 5), np.int64))[2].shape == (0, 5, 8)
    assert mapping.hash(np.zeros((2, 0), np.int64))[2].shape == (2, 0, 8)


def test_torch_tensors_hash_like_arrays(compressed: CompressedTokenizer) -> None:
    torch = pytest.importorskip("torch", reason="torch is a development dependency")
    mapping = make(compressed)
    ids = np.random.default_rng(6).integers(0, compressed.vocab_size, (2, 17))
    np.testing.assert_array_equal(mapping.hash(torch.from_numpy(ids))[2], mapping.hash(ids)[2])


def test_deterministic_across_instances(compressed: CompressedTokenizer) -> None:
    ids = np.arange(64).reshape(2, 32)
    a = make(compressed, seed=9).hash(ids)[2]
    b = make(compressed, seed=9).hash(ids)[2]
    c = make(compressed, seed=10).hash(ids)[2]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_ngram_size": 1, "engram_vocab_size": []}, "max_ngram_size must be at least 2"),
        ({"engram_vocab_size": [1000]}, "engram_vocab_size needs one size per n-gram order"),
        ({"engram_vocab_size": [1000, 1000, 1000]}, "engram_vocab_size needs one size"),
        ({"engram_vocab_size": [1000, 0]}, "engram_vocab_size entries must be a positive"),
        ({"n_head_per_ngram": 0}, "n_head_per_ngram must be a positive integer"),
        ({"n_head_per_ngram": -2}, "n_head_per_ngram must be a positive integer"),
        ({"n_embed_per_ngram": 0}, "n_embed_per_ngram must be a positive integer"),
        ({"layer_ids": []}, "layer_ids must name at least one layer"),
        ({"layer_ids": [1, 1]}, "layer_ids must be distinct"),
        ({"pad_id": 8192}, "pad_id 8192 is outside the tokenizer vocabulary"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_configs_raise_value_error(
    compressed: CompressedTokenizer, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make(compressed, **overrides)


def test_bad_inputs_are_rejected(compressed: CompressedTokenizer) -> None:
    mapping = make(compressed)
    with pytest.raises(ValueError, match=r"input_ids\[4\] = 8192 is outside the tokenizer"):
        mapping.hash(np.array([[0, 1, 2], [3, 8192, 5]]))
    with pytest.raises(ValueError, match=r"input_ids must have shape \[batch, seq\]"):
        mapping.hash(np.arange(5))
    with pytest.raises(TypeError, match="input_ids must hold integers"):
        mapping.hash(np.ones((2, 2)))
