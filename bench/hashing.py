"""Hashing throughput: the Rust kernel against the reference's numpy formulation.

The baseline is `NgramHashMapping._get_ngram_hashes` of the published reference, restated
here so both run on the same ids in the same process. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import numpy.typing as npt

sys.path.insert(0, os.path.dirname(__file__))
from _common import REFERENCE_DIR, best_seconds, report

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
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=4096)
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
    ids = rng.integers(0, mapping.compressed_tokenizer.vocab_size, (args.batch, args.seq))
    if not np.array_equal(mapping.hash(ids)[1], reference_numpy_hashes(mapping, ids, 1)):
        raise SystemExit("kernel and numpy formulation disagree")

    tokens = args.batch * args.seq
    reused = np.empty(mapping.output_shape(args.batch, args.seq), np.int64)
    numpy_s = best_seconds(lambda: reference_numpy_hashes(mapping, ids, 1), args.repeats)
    fresh_s = best_seconds(lambda: mapping.hash(ids), args.repeats)
    reused_s = best_seconds(lambda: mapping.hash_into(ids, reused), args.repeats)
    report(
        {
            "benchmark": "hashing",
            "shape": [args.batch, args.seq],
            "heads_per_layer": mapping.heads_per_layer,
            "numpy_tokens_per_s": tokens / numpy_s,
            # `hash` returns a fresh array: the kernel must fault in new memory every call.
            "kernel_fresh_output_tokens_per_s": tokens / fresh_s,
            # `hash_into` a reused buffer: how a prefetcher hashing batch after batch runs.
            "kernel_reused_output_tokens_per_s": tokens / reused_s,
            "speedup_fresh_output": numpy_s / fresh_s,
            "speedup_reused_output": numpy_s / reused_s,
            "threads": os.cpu_count(),
        },
        args.png,
    )


if __name__ == "__main__":
    main()
