"""Hashing throughput: the Rust kernel against the reference's numpy formulation.

The baseline is `NgramHashMapping._get_ngram_hashes` of the published reference, restated
here so both run on the same ids in the same process, for id arrays from 1 x 128 to
64 x 4096 (3-grams, 8 heads per order), the kernel writing into fresh arrays and into a
reused buffer. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from functools import partial

import numpy as np
import numpy.typing as npt

sys.path.insert(0, os.path.dirname(__file__))
from _common import REFERENCE_DIR, best_interleaved, compared, report

from client import NgramHashMapping


def reference_numpy_hashes(
    mapping: NgramHashMapping, input_ids: npt.NDArray[np.int64], layer_id: int
) -> npt.NDArray[np.int64]:
    """The reference's numpy path (compression, shifts, XOR mix, `%` per head)."""
    x = mapping.compressed_tokenizer.lookup_table[input_ids]
    _, seq = x.shape
    multipliers = mapping.layer_multipliers[layer_id]
    shifts = [x] + [
        np.pad(x, ((0, 0), (k, 0)), mode="constant", constant_values=mapping.pad_id)[:, :seq]
        for k in range(1, mapping.max_ngram_size)
    ]
    heads = []
    for n in range(2, mapping.max_ngram_size + 1):
        mix = shifts[0] * multipliers[0]
        for k in range(1, n):
            mix = np.bitwise_xor(mix, shifts[k] * multipliers[k])
        for prime in mapping.vocab_size_across_layers[layer_id][n - 2]:
            heads.append(mix % int(prime))
    return np.stack(heads, axis=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--shapes", default="1x128,1x4096,8x512,64x4096", help="BATCHxSEQ id arrays to hash"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--png", help="also draw the result as a bar chart")
    args = parser.parse_args()

    mapping = NgramHashMapping(
        engram_vocab_size=[129280 * 5, 129280 * 5],
        max_ngram_size=3,
        n_embed_per_ngram=512,
        n_head_per_ngram=8,
        layer_ids=[1],
        tokenizer_name_or_path=os.path.join(REFERENCE_DIR, "tokenizer.json"),
        pad_id=0,
        seed=0,
    )
    rng = np.random.default_rng(0)
    results = []
    raw: dict[str, float] = {}
    for shape in args.shapes.split(","):
        batch, seq = (int(n) for n in shape.split("x"))
        ids = rng.integers(0, mapping.compressed_tokenizer.vocab_size, (batch, seq))
        if not np.array_equal(mapping.hash(ids)[1], reference_numpy_hashes(mapping, ids, 1)):
            raise SystemExit("kernel and numpy formulation disagree")
        tokens = batch * seq
        # Small arrays take microseconds: repeat them more, so the best time is a real one.
        repeats = args.repeats * max(1, 4096 // tokens)
        reused = np.empty(mapping.output_shape(batch, seq), np.int64)
        runs: dict[str, Callable[[], object]] = {
            "numpy": partial(reference_numpy_hashes, mapping, ids, 1),
            # `hash` returns a fresh array: the kernel faults in new memory every call.
            "fresh": partial(mapping.hash, ids),
            # `hash_into` a reused buffer: how a prefetcher hashing batch after batch runs.
            "reused": partial(mapping.hash_into, ids, reused),
        }
        seconds = best_interleaved(runs, repeats)
        numpy_rate = tokens / seconds["numpy"]
        raw[f"numpy_{shape}_tokens_per_s"] = numpy_rate
        for name, label in (("fresh", "fresh output"), ("reused", "reused output")):
            raw[f"kernel_{name}_{shape}_tokens_per_s"] = tokens / seconds[name]
            results.append(
                compared(
                    f"kernel, {label}, {shape}",
                    tokens / seconds[name],
                    "tokens/s",
                    "reference numpy",
                    numpy_rate,
                    x=tokens,
                    series=f"kernel, {label}",
                    x_unit="tokens per call",
                )
            )
    report(
        {
            "benchmark": "hashing",
            "heads_per_layer": mapping.heads_per_layer,
            "threads": os.cpu_count(),
            **raw,
            "results": results,
        },
        args.png,
    )


if __name__ == "__main__":
    main()
