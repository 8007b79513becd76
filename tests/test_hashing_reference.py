"""Bit-exact compatibility with the published Engram reference's outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from client import CompressedTokenizer, NgramHashMapping


@pytest.fixture(scope="module")
def compressed(tokenizer_path: Path) -> CompressedTokenizer:
    return CompressedTokenizer(tokenizer_path)


def mapping_for(case: dict[str, Any], tokenizer: CompressedTokenizer) -> NgramHashMapping:
    config = case["config"]
    return NgramHashMapping(
        engram_vocab_size=config["engram_vocab_size"],
        max_ngram_size=config["max_ngram_size"],
        n_embed_per_ngram=512,
        n_head_per_ngram=config["n_head_per_ngram"],
        layer_ids=config["layer_ids"],
        tokenizer_name_or_path=tokenizer,
        pad_id=config["pad_id"],
        seed=config["seed"],
    )


def test_lookup_table_matches_reference(
    compressed: CompressedTokenizer, reference_dir: Path, reference_cases: dict[str, Any]
) -> None:
    expected = np.load(reference_dir / "compress_lookup.npy")
    assert compressed.lookup_table.dtype == np.int64
    np.testing.assert_array_equal(compressed.lookup_table, expected)
    assert len(compressed) == reference_cases["compressed_vocab"]
    assert compressed.vocab_size == reference_cases["tokenizer_vocab"]


def test_tokenizer_encodes_reference_text(
    compressed: CompressedTokenizer, reference_dir: Path, reference_cases: dict[str, Any]
) -> None:
    ids = compressed.tokenizer.encode(reference_cases["text"], add_special_tokens=False).ids
    np.testing.assert_array_equal([ids], np.load(reference_dir / "text_ids.npy"))


def test_every_reference_case_matches(
    compressed: CompressedTokenizer, reference_dir: Path, reference_cases: dict[str, Any]
) -> None:
    checked = 0
    for case in reference_cases["cases"]:
        mapping = mapping_for(case, compressed)
        assert mapping.pad_id == case["compressed_pad"]
        for layer in case["config"]["layer_ids"]:
            assert mapping.vocab_size_across_layers[layer] == case["primes"][str(layer)]
            np.testing.assert_array_equal(
                mapping.layer_multipliers[layer], case["multipliers"][str(layer)]
            )
        for inputs in ("random", "text"):
            ids = np.load(reference_dir / f"{inputs}_ids.npy")
            hashes = mapping.hash(ids)
            assert list(hashes) == case["config"]["layer_ids"]
            for layer, got in hashes.items():
                expected = np.load(reference_dir / f"hash_{case['name']}_L{layer}_{inputs}.npy")
                assert got.dtype == np.int64
                np.testing.assert_array_equal(got, expected)
                checked += 1
    arrays = list(reference_dir.glob("hash_*.npy"))
    assert checked == len(arrays) > 0, "every reference hash array is checked"


@pytest.mark.parametrize("form", ["file", "directory", "tokenizer"])
def test_tokenizer_accepted_in_every_form(
    form: str, tokenizer_path: Path, compressed: CompressedTokenizer
) -> None:
    source: Any = {
        "file": tokenizer_path,
        "directory": tokenizer_path.parent,
        "tokenizer": Tokenizer.from_file(str(tokenizer_path)),
    }[form]
    np.testing.assert_array_equal(CompressedTokenizer(source).lookup_table, compressed.lookup_table)


def test_compression_maps_ids_and_passes_negatives(compressed: CompressedTokenizer) -> None:
    ids = np.array([[5, -1, 8191], [0, 17, -100]])
    got = compressed(ids)
    assert got.shape == ids.shape
    expected = np.where(ids >= 0, compressed.lookup_table[np.maximum(ids, 0)], ids)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(compressed([3, 4]), compressed.lookup_table[[3, 4]])


def test_ids_outside_the_vocabulary_are_rejected(compressed: CompressedTokenizer) -> None:
    with pytest.raises(ValueError, match=r"input_ids\[1\] = 8192"):
        compressed(np.array([1, 8192]))
    with pytest.raises(TypeError, match="input_ids must hold integers"):
        compressed(np.array([1.5]))


def test_missing_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        CompressedTokenizer(tmp_path)
    with pytest.raises(TypeError, match="tokenizer must be"):
        CompressedTokenizer(42)
