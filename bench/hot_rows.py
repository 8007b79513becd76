"""The hot-row cache's hit rate against the best static cache of the same size.

The keys are a real corpus's n-gram stream: the standard library's sources under the
reference tokenizer, hashed as one layer of DeepSeek-V4.1-Flash's shape (2/3/4-grams x 8
heads, 24 rows a token) into a table of `--rows` rows, read in order in steps of
`--step-tokens` tokens through `Table.gather(keys, cache=...)`. For each cache size (a share
of the table's rows), a fresh `store.HotRowCache` starts empty and sees the stream once; its
hit rate over the whole stream (its cold start included) is set beside the oracle's: the
static cache of the stream's most frequent rows, chosen knowing the whole stream in
advance. On a stream of independent draws no cache that learns as it reads could beat it;
a corpus is not one (each file has hot n-grams of its own), so an adaptive cache can.
Target: at least 0.9x the oracle at 1% of the rows. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import compared, corpus_ids, layer_hashing, report

from store import HotRowCache, Table

# FP8 E4M3 rows with a scale per 32 values, as V4.1 ships them, but of 32 values (a hit rate
# depends on how many rows fit, not on their width; the table is written whole, since rows never
# written are computed, not cached).
DIM, ROW_BYTES = 32, 33


def oracle_hit_rate(keys: np.ndarray, capacity_rows: int) -> float:
    """Hits of a cache that holds the `capacity_rows` most frequent keys from the start."""
    _, counts = np.unique(keys, return_counts=True)
    top = np.sort(counts)[::-1][:capacity_rows]
    return float(top.sum() / len(keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4_000_000, help="rows of the table")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="tokens of the corpus")
    parser.add_argument("--step-tokens", type=int, default=128, help="tokens read per gather")
    parser.add_argument(
        "--percents", default="0.1,0.3,1,3,10", help="cache sizes, in percent of the rows"
    )
    parser.add_argument("--png")
    args = parser.parse_args()
    percents = [float(p) for p in args.percents.split(",")]

    mapping = layer_hashing(args.rows, dim=DIM)
    rows = mapping.layer_table_rows(1)
    ids = corpus_ids(args.tokens)
    keys = mapping.row_keys(ids[None, :])[1][0].astype(np.uint64)  # [tokens, 24]
    flat = keys.reshape(-1)
    results = []
    raw: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("ENGRAM_BENCH_DIR")) as tmp:
        table = Table.create(os.path.join(tmp, "layer.engram"), rows, DIM, dtype="fp8_e4m3")
        chunk = 1 << 18
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            table.write_packed(
                np.arange(start, stop), np.zeros((stop - start, ROW_BYTES), np.uint8)
            )
        out = np.empty((args.step_tokens, keys.shape[1], DIM), np.uint16)
        for percent in percents:
            capacity_rows = max(int(rows * percent / 100), 1)
            cache = HotRowCache(capacity_rows * ROW_BYTES)
            began = time.perf_counter()
            for start in range(0, len(keys) - args.step_tokens + 1, args.step_tokens):
                table.gather(
                    keys[start : start + args.step_tokens], out=out, dtype="bfloat16", cache=cache
                )
            raw[f"cached_gather_s_{percent:g}pct"] = time.perf_counter() - began
            stats = cache.stats
            read = stats.hits + stats.misses
            oracle = oracle_hit_rate(flat[:read], capacity_rows)
            raw[f"hit_rate_{percent:g}pct"] = stats.hit_rate
            raw[f"oracle_hit_rate_{percent:g}pct"] = oracle
            results.append(
                compared(
                    f"hit rate, cache of {percent:g}% of rows",
                    stats.hit_rate,
                    "hit rate",
                    "oracle static cache",
                    oracle,
                    x=percent,
                    series="HotRowCache",
                    x_unit="cache size, % of the table's rows",
                    target=0.9 if percent == 1 else None,
                )
            )
    report(
        {
            "benchmark": "hot_rows",
            "table_rows": rows,
            "tokens": len(ids),
            "reads": len(flat),
            "distinct_rows_read": len(np.unique(flat)),
            **raw,
            "results": results,
        },
        args.png,
    )


if __name__ == "__main__":
    main()
