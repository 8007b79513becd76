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
Target: at least 0.9x the oracle at 1% of the rows.

Then what the cache's bookkeeping costs a read: a table of `--speed-rows` FP8 rows of 256
values (V4.1's rows, resident in the page cache), read in the same steps through a cache of
10% of its rows (warmed by one pass) and without one, taking turns. While the rows are
resident a hit saves little, so this is the price of the cache where it cannot pay. Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import best_interleaved, compared, corpus_ids, layer_hashing, report

from store import HotRowCache, Table

# FP8 E4M3 rows with a scale per 32 values, as V4.1 ships them, but of 32 values (a hit rate
# depends on how many rows fit, not on their width; the table is written whole, since rows never
# written are computed, not cached).
DIM, ROW_BYTES = 32, 33
# The rows of the bookkeeping measurement: V4.1's.
SPEED_DIM, SPEED_ROW_BYTES = 256, 264


def oracle_hit_rate(keys: np.ndarray, capacity_rows: int) -> float:
    """Hits of a cache that holds the `capacity_rows` most frequent keys from the start."""
    _, counts = np.unique(keys, return_counts=True)
    top = np.sort(counts)[::-1][:capacity_rows]
    return float(top.sum() / len(keys))


def written_fp8_table(path: str, rows: int, dim: int) -> Table:
    """An FP8 table of `rows` rows of `dim` values, every row written (zeros): rows never
    written are computed, not cached."""
    table = Table.create(path, rows, dim, dtype="fp8_e4m3")
    chunk = 1 << 16
    zeros = np.zeros((chunk, dim + dim // 32), np.uint8)
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        table.write_packed(np.arange(start, stop), zeros[: stop - start])
    return table


def bookkeeping_cost(
    tmp: str, ids: np.ndarray, args: argparse.Namespace
) -> tuple[dict[str, object], dict[str, float]]:
    """Steps/s of the same n-gram steps read through a warmed cache of 10% of the rows and
    without one, from a resident table of V4.1's rows."""
    mapping = layer_hashing(args.speed_rows, dim=SPEED_DIM)
    rows = mapping.layer_table_rows(1)
    table = written_fp8_table(os.path.join(tmp, "speed.engram"), rows, SPEED_DIM)
    keys = mapping.row_keys(ids[None, :])[1][0].astype(np.uint64)
    steps = [keys[i : i + args.step_tokens] for i in range(0, len(keys), args.step_tokens)]
    out = np.empty((args.step_tokens, keys.shape[1], SPEED_DIM), np.uint16)
    cache = HotRowCache(rows // 10 * SPEED_ROW_BYTES)

    def read(cached: bool) -> None:
        for step in steps:
            table.gather(
                step, out=out[: len(step)], dtype="bfloat16", cache=cache if cached else None
            )

    seconds = best_interleaved({"uncached": partial(read, False), "cached": partial(read, True)}, 3)
    rate = {name: len(steps) / s for name, s in seconds.items()}
    result = compared(
        "reads through a cache of 10% of rows, all rows resident",
        rate["cached"],
        "decode steps/s",
        "the same reads without it",
        rate["uncached"],
    )
    raw = {
        "bookkeeping_table_rows": rows,
        "bookkeeping_hit_rate": cache.stats.hit_rate,
        "cached_steps_per_s": rate["cached"],
        "uncached_steps_per_s": rate["uncached"],
    }
    return result, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4_000_000, help="rows of the table")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="tokens of the corpus")
    parser.add_argument("--step-tokens", type=int, default=128, help="tokens read per gather")
    parser.add_argument(
        "--percents", default="0.1,0.3,1,3,10", help="cache sizes, in percent of the rows"
    )
    parser.add_argument(
        "--speed-rows", type=int, default=4_000_000, help="rows of the bookkeeping table"
    )
    parser.add_argument("--speed-tokens", type=int, default=200_000, help="tokens it reads")
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
        table = written_fp8_table(os.path.join(tmp, "layer.engram"), rows, DIM)
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
        speed, speed_raw = bookkeeping_cost(tmp, ids[: args.speed_tokens], args)
        results.append(speed)
        raw |= speed_raw
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
