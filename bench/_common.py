"""Shared helpers of the benchmark scripts: timing, the JSON result line, optional plots."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

REFERENCE_DIR = os.environ.get(
    "ENGRAM_REFERENCE_DIR",
    os.path.join(os.path.dirname(__file__), "..", "data", "engram-hash"),
)


def trained_fp8_rows(directory: str, rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """`[rows, dim + dim / 32]` packed FP8 rows (codes then E8M0 scales) quantized as
    `export` does from normally distributed values, as a trained table's roughly are: codes
    cluster near the group's largest value, and few are subnormal (uniformly random codes
    would make one in eighteen subnormal)."""
    from store import Table

    path = os.path.join(directory, f"to-quantize-{seed}.engram")
    table = Table.create(path, rows, dim, init="normal", std=0.02, seed=seed)
    packed = table.gather(np.arange(rows, dtype=np.uint64), dtype="fp8_e4m3")
    del table
    os.unlink(path)
    return packed


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call (the least disturbed run)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def best_interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over `repeats` rounds that call each once in turn
    (after one warm-up round): a disturbance of the machine hits all of them alike, so their
    ratios hold better than those of back-to-back `best_seconds` runs."""
    best = dict.fromkeys(fns, float("inf"))
    for round_number in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_number:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def report(result: dict[str, Any], png: str | None = None) -> None:
    """Prints the JSON line; with `png`, draws the throughput bars (matplotlib if installed)."""
    print(json.dumps(result))
    if not png:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed; {png} not drawn")
        return
    bars = {k: v for k, v in result.items() if k.endswith("_per_s")}
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(list(bars), list(bars.values()))
    ax.set_xlabel("per second")
    ax.set_title(result.get("benchmark", ""))
    fig.tight_layout()
    fig.savefig(png)
