"""Hash a sentence with the reference tokenizer and gather its Engram rows from a new table.

Runs on what ships with the repository: the reference tokenizer and the demo configuration
of the published Engram reference (2- and 3-grams, 8 heads each, layers 1 and 15).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from client import NgramHashMapping
from store import Table

REFERENCE_TOKENIZER = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "reference", "engram-hash", "tokenizer.json"
)
SENTENCE = "Only Alexander the Great could tame the horse Bucephalus."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", default=REFERENCE_TOKENIZER)
    parser.add_argument("--text", default=SENTENCE)
    parser.add_argument("--dim", type=int, default=32, help="embedding width per head")
    parser.add_argument("--data-dir", help="where to create the tables (default: temporary)")
    args = parser.parse_args()

    mapping = NgramHashMapping(
        engram_vocab_size=[40960, 40960],
        max_ngram_size=3,
        n_embed_per_ngram=args.dim * 8,
        n_head_per_ngram=8,
        layer_ids=[1, 15],
        tokenizer_name_or_path=args.tokenizer,
        pad_id=0,
        seed=0,
    )
    tokenizer = mapping.compressed_tokenizer.tokenizer
    ids = np.array([tokenizer.encode(args.text, add_special_tokens=False).ids])
    print(f"text: {args.text!r}")
    print(f"{ids.shape[1]} tokens -> compressed vocabulary of {len(mapping.compressed_tokenizer)}")

    with tempfile.TemporaryDirectory(dir=args.data_dir) as data_dir:
        for layer, keys in mapping.row_keys(ids).items():
            table = Table.create(
                os.path.join(data_dir, f"layer{layer}.engram"),
                num_rows=mapping.layer_table_rows(layer),
                dim=args.dim,
                dtype="bfloat16",
                seed=layer,
            )
            start = time.perf_counter()
            rows = table.gather(keys)
            elapsed = time.perf_counter() - start
            print(
                f"layer {layer:>2}: table {table.num_rows} x {table.dim} {table.dtype}, "
                f"keys {keys.shape} -> rows {rows.shape} in {elapsed * 1e3:.2f} ms; "
                f"first token, head 0: {np.array2string(rows[0, 0, 0, :4], precision=4)}"
            )
            # One step of plain SGD on the rows this sentence touched, then read them back.
            grads = np.ones_like(rows).reshape(-1, args.dim)
            table.scatter_add(keys, -0.01 * grads)
            table.flush()
            moved = np.abs(table.gather(keys) - rows).max()
            print(
                f"          after one SGD step: {table.written_count()} rows stored, "
                f"max change {moved:.4f}"
            )


if __name__ == "__main__":
    main()
