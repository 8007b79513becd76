"""Restoring many tables: seconds per table of a restore of `--tables` tables against one of
`--base-tables`, in one run. Each restore is of a full checkpoint and an incremental one on
it (a third of the tables changed between them), as `serve --restore latest` restores after
a day of checkpoints. A restore that reads each manifest once per table grows quadratically
and its per-table time with the table count; a linear one keeps the ratio near 1. Prints one
JSON line."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import compared, report

from store.engine import StoreEngine
from store.requests import Packed, Push
from store.spec import TableSpec


def seconds_per_table(directory: str, tables: int) -> float:
    engine = StoreEngine(directory, max_tables=tables)
    try:
        grad = Packed("float32", (1, 4), np.ones((1, 4), np.float32).tobytes())
        for i in range(tables):
            engine.create_table(TableSpec(f"t{i}", 16, 4))
            engine.push(
                Push(f"t{i}", Packed("uint64", (1,), np.array([1], np.uint64).tobytes()), grad)
            )
        engine.checkpoint(full=True)
        for i in range(0, tables, 3):
            engine.push(
                Push(f"t{i}", Packed("uint64", (1,), np.array([2], np.uint64).tobytes()), grad)
            )
        engine.checkpoint(full=False)
        began = time.perf_counter()
        engine.restore(0)
        return (time.perf_counter() - began) / tables
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", type=int, default=3000)
    parser.add_argument("--base-tables", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("ENGRAM_BENCH_DIR")) as tmp:
        base = seconds_per_table(os.path.join(tmp, "base"), args.base_tables)
        many = seconds_per_table(os.path.join(tmp, "many"), args.tables)
    report(
        {
            "benchmark": "restore_scale",
            "tables": [args.base_tables, args.tables],
            "results": [
                compared(
                    f"restore seconds per table, {args.tables} tables",
                    many,
                    "s",
                    f"{args.base_tables} tables",
                    base,
                    higher_is_better=False,
                )
            ],
        }
    )


if __name__ == "__main__":
    main()
