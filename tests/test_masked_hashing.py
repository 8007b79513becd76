"""Masked hashing (DeepSeek-V4.1's image spans): a token mask blocks the n-grams that reach
a masked token. Checked against a per-position transcription of the rule as V4.1's
inference code states it, over random masks and several configs; an all-true mask (or none)
gives the published reference's ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from test_hashing_reference import mapping_for

from client import CompressedTokenizer, NgramHashMapping


@pytest.fixture(scope="module")
def compressed(tokenizer_path: Path) -> CompressedTokenizer:
    return CompressedTokenizer(tokenizer_path)


def masked_oracle(
    mapping: NgramHashMapping,
    ids: npt.NDArray[np.int64],
    mask: npt.NDArray[np.bool_],
    layer: int,
) -> npt.NDArray[np.int64]:
    """The rule, slot by slot: walking back from t with shift s = 0, 1, ..., the slot is
    blocked when t - s < 0, when the token at t - s is masked, or when a smaller shift was
    blocked; a blocked slot takes the compressed pad id; the mixing is the reference's."""
    x = mapping.compressed_tokenizer(ids)
    mults = [int(m) for m in mapping.layer_multipliers[layer]]
    batch, seq = x.shape
    out = np.zeros((batch, seq, mapping.heads_per_layer), dtype=np.int64)

    def wrap(v: int) -> int:
        return (v + 2**63) % 2**64 - 2**63

    for b in range(batch):
        for t in range(seq):
            slots, blocked = [], False
            for s in range(mapping.max_ngram_size):
                blocked = blocked or t - s < 0 or not mask[b, t - s]
                slots.append(mapping.pad_id if blocked else int(x[b, t - s]))
            col = 0
            for n in range(2, mapping.max_ngram_size + 1):
                mix = 0
                for k in range(n):
                    mix = wrap(mix ^ wrap(slots[k] * mults[k]))
                for prime in mapping.vocab_size_across_layers[layer][n - 2]:
                    out[b, t, col] = mix % prime
                    col += 1
    return out


def make(compressed: CompressedTokenizer, **overrides: Any) -> NgramHashMapping:
    config: dict[str, Any] = {
        "engram_vocab_size": [1000, 1000, 1000],
        "max_ngram_size": 4,
        "n_embed_per_ngram": 64,
        "n_head_per_ngram": 2,
        "layer_ids": [1, 14],
        "tokenizer_name_or_path": compressed,
        "pad_id": 2,
        "seed": 0,
    }
    config.update(overrides)
    return NgramHashMapping(**config)


CONFIGS = [
    {},
    {"max_ngram_size": 2, "engram_vocab_size": [500], "n_head_per_ngram": 3},
    {"max_ngram_size": 3, "engram_vocab_size": [700, 900], "layer_ids": [0], "seed": 7},
    {"n_head_per_ngram": 8, "engram_vocab_size": [16_000, 16_000, 16_000]},
]


@pytest.mark.parametrize(
    "overrides", CONFIGS, ids=lambda o: ",".join(map(str, o.values())) or "v4.1-like"
)
@pytest.mark.parametrize("masked_share", [0.0, 0.2, 0.7, 1.0])
def test_masked_hashing_follows_the_rule(
    compressed: CompressedTokenizer, overrides: dict[str, Any], masked_share: float
) -> None:
    mapping = make(compressed, **overrides)
    rng = np.random.default_rng(len(overrides) + int(masked_share * 10))
    ids = rng.integers(0, compressed.vocab_size, (3, 23), dtype=np.int64)
    mask = rng.random(ids.shape) >= masked_share
    hashes = mapping.hash(ids, token_mask=mask)
    for layer in mapping.layer_ids:
        np.testing.assert_array_equal(hashes[layer], masked_oracle(mapping, ids, mask, layer))
    row_keys = mapping.row_keys(ids, token_mask=mask)
    for layer in mapping.layer_ids:
        np.testing.assert_array_equal(row_keys[layer], hashes[layer] + mapping.head_offsets(layer))


def test_a_masked_position_hashes_as_all_pads_and_no_ngram_crosses_a_span(
    compressed: CompressedTokenizer,
) -> None:
    mapping = make(compressed)
    ids = np.array([[10, 11, 12, 13, 14, 15, 16]], np.int64)
    mask = np.array([[True, True, False, False, True, True, True]])
    hashes = mapping.hash(ids, token_mask=mask)[1][0]
    pads = mapping.hash(np.full((1, 1), 2, np.int64))[1][0, 0]  # position 0 of all pads
    assert (hashes[2] == pads).all() and (hashes[3] == pads).all()
    # After the span, position 4 hashes as a sequence starting at 14.
    np.testing.assert_array_equal(hashes[4], mapping.hash(ids[:, 4:])[1][0, 0])
    np.testing.assert_array_equal(hashes[6], mapping.hash(ids[:, 4:])[1][0, 2])


def test_an_all_true_mask_gives_the_reference_ids(
    compressed: CompressedTokenizer, reference_dir: Path, reference_cases: dict[str, Any]
) -> None:
    ids = np.load(reference_dir / "text_ids.npy")
    for case in reference_cases["cases"]:
        mapping = mapping_for(case, compressed)
        masked = mapping.hash(ids, token_mask=np.ones(ids.shape, bool))
        for layer in case["config"]["layer_ids"]:
            expected = np.load(reference_dir / f"hash_{case['name']}_L{layer}_text.npy")
            np.testing.assert_array_equal(masked[layer], expected)


def test_long_sequences_hash_in_parallel_spans_with_the_mask(
    compressed: CompressedTokenizer,
) -> None:
    """Long inputs are hashed in spans on several threads: a span's history respects the
    mask across the span's start."""
    mapping = make(compressed)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, compressed.vocab_size, (1, 20_000), dtype=np.int64)
    mask = rng.random(ids.shape) >= 0.3
    whole = mapping.hash(ids, token_mask=mask)[1]
    for start in (8189, 8190, 8191, 8192, 16384):
        window = slice(start - 3, start + 3)
        piece = mapping.hash(ids[:, window], token_mask=mask[:, window])[1]
        # From the fourth position of the window on, its history is all inside the window.
        np.testing.assert_array_equal(whole[:, start : start + 3], piece[:, 3:])


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (np.ones((2, 5), np.int64), TypeError, "token_mask must hold booleans"),
        (
            np.ones((2, 4), bool),
            ValueError,
            r"token_mask must have the shape of the token ids \[2, 5\]",
        ),
        ([[True] * 5], ValueError, "token_mask must have the shape"),
    ],
)
def test_a_bad_mask_is_refused_naming_it(
    compressed: CompressedTokenizer, mask: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        make(compressed).hash(np.zeros((2, 5), np.int64), token_mask=mask)
