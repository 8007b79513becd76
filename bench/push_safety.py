"""What data safety costs a push: the undo log and journal record that make a push exactly
once through a crash, the disk reserved for new rows, and the row checksums kept as rows
change.

In one run, on the same tables and keys, taking turns round after round:
- a push through the journal (what the daemon does) against the same push without one
  (no undo log, no record), on a table kept without row checksums, and with neither;
- with `--baseline-python PY` (an interpreter whose `store._native` is an older build, e.g.
  from `bench/build_baseline.sh 808b243`), the same pushes in that build, in a second
  process that takes turns with this one: the whole cost of this version's safety;
- a scrub (`verify`) of the written rows against a gather of as many rows.
Prints one JSON line of ratios (and the times behind them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import compared, report

DIM, BATCHES = 64, 8


def _create(
    native: Any, path: str, rows: int, optimizer: str, args: tuple[float, ...], checksums: bool
) -> Any:
    """A table in `path`, through whichever binding this process has: a spec object (read by
    attribute) since the typed specs, positional arguments before them."""
    lr, eps, beta1, beta2, accumulator = args
    spec = SimpleNamespace(
        num_rows=rows,
        dim=DIM,
        dtype="float32",
        init="normal",
        init_std=0.02,
        seed=1,
        optimizer=SimpleNamespace(
            name=optimizer,
            lr=lr,
            eps=eps,
            beta1=beta1,
            beta2=beta2,
            initial_accumulator_value=accumulator,
            weight_decay=0.0,
        ),
        allow_non_finite=False,
        first_row=0,
        row_checksums=checksums,
    )
    # Older builds, run by bench/compare_builds.py, named it EmbeddingTable.
    trainable = getattr(native, "TrainableTable", None) or native.EmbeddingTable
    try:
        return trainable.create(path, spec)
    except TypeError:  # an older build
        extra = {} if checksums else {"row_checksums": False}
        return trainable.create(
            path, rows, DIM, "float32", "normal", 0.02, 1, optimizer, *args, False, **extra
        )


def _worker(directory: str, rows: int, batch: int) -> None:
    """Builds the tables, then answers each line on stdin with one round's best times."""
    from store import _native

    rng = np.random.default_rng(0)
    key_sets = [rng.integers(0, rows, batch).astype(np.uint64) for _ in range(BATCHES)]
    grads = rng.standard_normal((batch, DIM)).astype(np.float32)
    journal = None
    if hasattr(_native, "Journal"):
        journal, _ = _native.Journal.open(os.path.join(directory, "journal"))
    tables: dict[str, Any] = {}
    for name, optimizer, args in (
        ("sgd", "sgd", (0.01, 0.0, 0.0, 0.0, 0.0)),
        ("adam", "adam", (0.01, 1e-8, 0.9, 0.999, 0.0)),
    ):
        # journal: as the daemon runs; plain: no journal; unchecked: no row checksums;
        # bare: neither.
        variants = ("journal", "plain", "unchecked", "bare") if journal else ("plain",)
        for variant in variants:
            checksums = variant not in ("unchecked", "bare")
            path = os.path.join(directory, f"{name}-{variant}")
            table = _create(_native, path, rows, optimizer, args, checksums)
            if variant in ("journal", "unchecked") and journal is not None:
                table.attach_journal(journal)
            for keys in key_sets:  # every row written once: rounds measure updates
                table.push(keys, grads)
            tables[f"{name}_{variant}"] = table
    out = np.empty((batch, DIM), np.float32)
    print("ready", flush=True)
    for _ in sys.stdin:
        times: dict[str, float] = {}
        for name, table in tables.items():
            start = time.perf_counter()
            for keys in key_sets:
                table.push(keys, grads)
            times[f"push_{name}"] = (time.perf_counter() - start) / BATCHES
        gather_table = tables["sgd_journal" if journal else "sgd_plain"]
        start = time.perf_counter()
        for keys in key_sets:
            if hasattr(gather_table, "gather_into"):  # an older build
                gather_table.gather_into(keys, out)
            else:
                gather_table.lookup(keys, "float32", into=out)
        times["gather"] = (time.perf_counter() - start) / BATCHES
        if hasattr(gather_table, "verify"):
            start = time.perf_counter()
            assert gather_table.verify() == []
            times["verify"] = time.perf_counter() - start
            times["written_rows"] = gather_table.written_count()
        print(json.dumps(times), flush=True)
    if journal:
        journal.reset()


class Worker:
    def __init__(self, python: str, directory: str, rows: int, batch: int) -> None:
        self.process = subprocess.Popen(
            [python, __file__, "--worker", directory, "--rows", str(rows), "--batch", str(batch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{python}: the worker did not start")

    def round(self) -> dict[str, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        result: dict[str, float] = json.loads(self.process.stdout.readline())
        return result

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline-python", help="interpreter of an older build")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the tables go (default: a temp dir)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of each table")
    parser.add_argument("--batch", type=int, default=65_536, help="keys of each push")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.rows, args.batch)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        os.makedirs(os.path.join(root, "new"))
        sizes = (args.rows, args.batch)
        workers = {"new": Worker(sys.executable, os.path.join(root, "new"), *sizes)}
        if args.baseline_python:
            os.makedirs(os.path.join(root, "old"))
            workers["old"] = Worker(args.baseline_python, os.path.join(root, "old"), *sizes)
        best: dict[str, dict[str, float]] = {name: {} for name in workers}
        for _ in range(args.rounds):
            for name, worker in workers.items():
                for key, value in worker.round().items():
                    best[name][key] = min(best[name].get(key, float("inf")), value)
        for worker in workers.values():
            worker.close()
    new = best["new"]
    result: dict[str, Any] = {
        "benchmark": "push_safety",
        "batch_rows": args.batch,
        "dim": DIM,
        "journal_over_plain_sgd": new["push_sgd_plain"] / new["push_sgd_journal"],
        "journal_over_plain_adam": new["push_adam_plain"] / new["push_adam_journal"],
        "checksums_over_unchecked_sgd": new["push_sgd_unchecked"] / new["push_sgd_journal"],
        "checksums_over_unchecked_adam": new["push_adam_unchecked"] / new["push_adam_journal"],
        "verify_rows_per_s_over_gather": (new["written_rows"] / new["verify"])
        / (args.batch / new["gather"]),
        "seconds": best,
    }
    for name in ("sgd", "adam"):
        # Journal and checksums together (reservation and counters stay in both).
        result[f"journal_over_bare_{name}"] = new[f"push_{name}_bare"] / new[f"push_{name}_journal"]
    if "old" in best:
        old = best["old"]
        result["new_bare_over_old_sgd"] = old["push_sgd_plain"] / new["push_sgd_bare"]
        result["new_bare_over_old_adam"] = old["push_adam_plain"] / new["push_adam_bare"]
        # Throughput of this build over the baseline's (1.0: no cost; 0.8: 20% slower).
        result["new_over_old_sgd"] = old["push_sgd_plain"] / new["push_sgd_journal"]
        result["new_over_old_adam"] = old["push_adam_plain"] / new["push_adam_journal"]
        result["new_over_old_gather"] = old["gather"] / new["gather"]
    rate = {key: 1 / seconds for key, seconds in new.items() if key.startswith("push_")}
    results = [
        compared(
            f"{name} push, {what}",
            rate[f"push_{name}_journal"],
            "pushes/s",
            baseline,
            rate[f"push_{name}_{variant}"],
        )
        for name in ("sgd", "adam")
        for what, baseline, variant in (
            ("journal", "no journal", "plain"),
            ("row checksums", "no row checksums", "unchecked"),
            ("journal and row checksums", "neither", "bare"),
        )
    ]
    results.append(
        compared(
            "verify (scrub)",
            new["written_rows"] / new["verify"],
            "rows/s",
            "gather",
            args.batch / new["gather"],
        )
    )
    if "old" in best:
        old = best["old"]
        results += [
            compared(
                f"{name} push",
                1 / new[f"push_{name}_journal"],
                "pushes/s",
                "older build",
                1 / old[f"push_{name}_plain"],
            )
            for name in ("sgd", "adam")
        ]
    report({**result, "results": results})


if __name__ == "__main__":
    main()
