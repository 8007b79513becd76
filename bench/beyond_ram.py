"""A table larger than this machine's memory, served: decode-shaped lookups cold, warm, and
with the hot-row cache, against a table that fits in memory.

- The table: FP8 rows of 256 values (264 bytes, as DeepSeek-V4.1-Flash ships them), at
  least `--ram-multiple` (1.5) times this machine's RAM, every row written (materialized on
  disk, flushed a slice at a time). Where the disk lacks the room, the benchmark says so
  and reports nothing else.
- The keys: the standard library's sources, tokenized with the reference tokenizer and
  hashed by an Engram config of 2/3/4-grams x 8 heads (24 rows a token) whose head tables
  together span the table: the n-gram stream of a real corpus, hot rows and a long tail.
- A decode step reads 128 tokens' rows (3072 keys: 64 sequences at 48 rows a token) as
  bfloat16, in process, through the page cache.
- The stream's first half of steps (`seen`) is read twice, then its second half
  (`fresh`, later text: the same hot rows, a tail partly new) once, three ways: warm, the
  table's pages dropped from the page cache first (posix_fadvise DONTNEED), its first pass
  reported as cold; cached, the same with a hot-row cache (`store.HotRowCache`) of 1% of
  the rows in front; in RAM, a table of 10% of RAM hashed alike, read whole into the page
  cache first. Reported:
  each second pass (the working set resident) and each fresh pass (rows never read before
  come from disk) against in RAM's. Target: cached at least 0.5x in RAM.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import compared, corpus_ids, layer_hashing, report, trained_fp8_rows

from store import HotRowCache, Table

DIM, ROW_BYTES, ROWS_PER_TOKEN, TOKENS_PER_STEP = 256, 264, 24, 128


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def key_stream(rows: int, ids: np.ndarray) -> np.ndarray:
    """Row keys `[tokens, 24]` of `ids` under an Engram config whose heads span `rows`."""
    keys: np.ndarray = layer_hashing(rows).row_keys(ids[None, :])[1][0]
    return keys.astype(np.uint64)


def materialize(path: str, rows: int) -> None:
    """The table written whole, none of it left in the page cache."""
    table = Table.create(path, rows, DIM, dtype="fp8_e4m3", init="zeros")
    slice_rows = 1 << 16
    packed = trained_fp8_rows(os.path.dirname(path), slice_rows, DIM)
    flushed = 0
    for start in range(0, rows, slice_rows):
        stop = min(rows, start + slice_rows)
        table.write_packed(np.arange(start, stop), packed[: stop - start])
        if (stop - flushed) * ROW_BYTES >= 1 << 30 or stop == rows:
            table.flush()  # dirty pages never pile up in memory
            drop_cached_pages(path)
            flushed = stop
    del table
    drop_cached_pages(path)


def opened_cold(path: str) -> Table:
    """The table opened with none of it in the page cache (pages a live mapping of it holds
    cannot be dropped: close every other `Table` of it first)."""
    drop_cached_pages(path)
    return Table.open(path)


def opened_in_ram(path: str) -> Table:
    """The table opened with all of it in the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    return Table.open(path)


def drop_cached_pages(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def steps_per_s(read: Any, steps: list[np.ndarray]) -> float:
    began = time.perf_counter()
    for keys in steps:
        read(keys)
    return len(steps) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ram-multiple", type=float, default=1.5)
    parser.add_argument("--rows", type=int, help="table rows instead of --ram-multiple x RAM")
    parser.add_argument("--steps", type=int, default=400, help="decode steps per pass")
    parser.add_argument("--dir", help="where the table goes (default: a temporary directory)")
    args = parser.parse_args()
    ram = ram_bytes()
    rows = args.rows or int(args.ram_multiple * ram / ROW_BYTES) + 1
    directory = args.dir or tempfile.gettempdir()
    free = shutil.disk_usage(directory).free
    result: dict[str, Any] = {
        "benchmark": "beyond_ram",
        "ram_bytes": ram,
        "table_rows": rows,
        "table_bytes": rows * ROW_BYTES,
        "table_over_ram": rows * ROW_BYTES / ram,
    }
    if rows * ROW_BYTES * 1.05 > free:
        result["skipped"] = (
            f"{directory} has {free / 2**30:.1f} GiB free; the table needs "
            f"{rows * ROW_BYTES / 2**30:.1f} GiB (pass --dir elsewhere or fewer --rows)"
        )
        print(result["skipped"], file=sys.stderr)
        print(json.dumps(result))
        return
    ids = corpus_ids(2 * args.steps * TOKENS_PER_STEP + 8)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        began = time.perf_counter()
        big_path = os.path.join(tmp, "big.engram")
        materialize(big_path, rows)
        result["materialize_s"] = time.perf_counter() - began
        small_rows = max(min(rows, int(0.1 * ram / ROW_BYTES)), 10_000)
        small_path = os.path.join(tmp, "small.engram")
        materialize(small_path, small_rows)

        def steps_of(keys: np.ndarray) -> list[np.ndarray]:
            return [
                keys[i : i + TOKENS_PER_STEP]
                for i in range(0, len(keys) - TOKENS_PER_STEP + 1, TOKENS_PER_STEP)
            ]

        # `seen` steps are read first; `fresh` ones, later text, share its hot rows but not
        # all of its tail.
        big_steps = steps_of(key_stream(rows, ids))
        small_steps = steps_of(key_stream(small_rows, ids))
        half = len(big_steps) // 2
        out = np.empty((TOKENS_PER_STEP, ROWS_PER_TOKEN, DIM), np.uint16)
        cache = HotRowCache(max(rows // 100, 1) * ROW_BYTES)
        for way in ("warm", "cached", "in_ram"):
            # Each way starts from the same page cache: the big table's pages dropped (its
            # earlier mapping closed first), or all of the small table's read in.
            table = opened_in_ram(small_path) if way == "in_ram" else opened_cold(big_path)
            steps = small_steps if way == "in_ram" else big_steps
            seen, fresh = steps[:half], steps[half:]

            def read(keys: np.ndarray, table: Table = table, way: str = way) -> None:
                table.gather(
                    keys, out=out, dtype="bfloat16", cache=cache if way == "cached" else None
                )

            first_pass = steps_per_s(read, seen)
            if way == "warm":
                result["cold_steps_per_s"] = first_pass
            result[f"{way}_steps_per_s"] = steps_per_s(read, seen)
            result[f"{way}_fresh_steps_per_s"] = steps_per_s(read, fresh)
            del table, read
        result["cache_hit_rate"] = cache.stats.hit_rate
        in_ram, in_ram_fresh = result["in_ram_steps_per_s"], result["in_ram_fresh_steps_per_s"]
        result["cached_vs_in_ram"] = result["cached_steps_per_s"] / in_ram
        result["warm_vs_in_ram"] = result["warm_steps_per_s"] / in_ram
        result["cold_vs_in_ram"] = result["cold_steps_per_s"] / in_ram
        result["cached_fresh_vs_in_ram"] = result["cached_fresh_steps_per_s"] / in_ram_fresh
        result["warm_fresh_vs_in_ram"] = result["warm_fresh_steps_per_s"] / in_ram_fresh
        result["results"] = [
            compared(
                name, result[f"{way}_steps_per_s"], "decode steps/s", baseline, base, target=target
            )
            for name, way, baseline, base, target in (
                ("cold (first read from disk)", "cold", "in RAM", in_ram, None),
                ("warm", "warm", "in RAM", in_ram, None),
                ("HotRowCache of 1% of rows", "cached", "in RAM", in_ram, 0.5),
                ("warm, fresh steps", "warm_fresh", "in RAM, fresh steps", in_ram_fresh, None),
                (
                    "HotRowCache, fresh steps",
                    "cached_fresh",
                    "in RAM, fresh steps",
                    in_ram_fresh,
                    None,
                ),
            )
        ]
    report(result)


if __name__ == "__main__":
    main()
