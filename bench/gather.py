"""Gather throughput: `Table.gather` against numpy fancy indexing on an `np.memmap` of the
same file, both reading 1M random keys from a fully written 10M x 64 float32 table, with the
machine's sequential copy bandwidth beside them. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import best_seconds, compared, report

from store import Table
from store._native import TABLE_FORMAT_VERSION

HEADER_BYTES = 4096  # where row data starts in a table file (rust/src/table/format.rs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", help="where to put the table file (default: a temp dir)")
    parser.add_argument("--png", help="also draw the result as a bar chart")
    args = parser.parse_args()
    assert TABLE_FORMAT_VERSION == 1, "HEADER_BYTES describes format version 1"

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "bench.engram")
        table = Table.create(path, args.rows, args.dim)
        chunk = 1 << 20
        for start in range(0, args.rows, chunk):
            stop = min(start + chunk, args.rows)
            values = np.arange(start, stop, dtype=np.float32)[:, None] * np.ones(
                args.dim, np.float32
            )
            table.write_rows(np.arange(start, stop, dtype=np.uint64), values)

        memmap = np.memmap(
            path, dtype=np.float32, mode="r", offset=HEADER_BYTES, shape=(args.rows, args.dim)
        )
        keys = np.random.default_rng(0).integers(0, args.rows, args.keys, dtype=np.uint64)
        if not np.array_equal(table.gather(keys), memmap[keys]):
            raise SystemExit("Table.gather and the memmap disagree")

        out = np.empty((args.keys, args.dim), np.float32)
        src = np.ones_like(out)
        memmap_s = best_seconds(lambda: memmap[keys], args.repeats)
        gather_s = best_seconds(lambda: table.gather(keys), args.repeats)
        gather_out_s = best_seconds(lambda: table.gather(keys, out=out), args.repeats)
        copy_s = best_seconds(lambda: np.copyto(out, src), args.repeats)

    row_bytes = args.dim * 4
    report(
        {
            "benchmark": "gather",
            "table": [args.rows, args.dim],
            "keys": args.keys,
            "memmap_fancy_index_rows_per_s": args.keys / memmap_s,
            "gather_rows_per_s": args.keys / gather_s,
            "gather_into_out_rows_per_s": args.keys / gather_out_s,
            "speedup_vs_memmap": memmap_s / gather_s,
            "speedup_into_out_vs_memmap": memmap_s / gather_out_s,
            "gather_gb_per_s": args.keys * row_bytes / gather_out_s / 1e9,
            "sequential_copy_gb_per_s": args.keys * row_bytes / copy_s / 1e9,
            "threads": os.cpu_count(),
            "results": [
                compared(
                    "gather, new array",
                    args.keys / gather_s,
                    "rows/s",
                    "numpy fancy index on np.memmap",
                    args.keys / memmap_s,
                ),
                compared(
                    "gather into out",
                    args.keys / gather_out_s,
                    "rows/s",
                    "numpy fancy index on np.memmap",
                    args.keys / memmap_s,
                ),
                compared(
                    "gather into out",
                    args.keys * row_bytes / gather_out_s / 1e9,
                    "GB/s",
                    "sequential copy",
                    args.keys * row_bytes / copy_s / 1e9,
                ),
            ],
        },
        args.png,
    )


if __name__ == "__main__":
    main()
