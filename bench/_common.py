"""Shared helpers of the benchmark scripts: timing, the JSON result line, optional plots."""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import sysconfig
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from client.hashing import NgramHashMapping

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


def corpus_ids(tokens: int) -> np.ndarray:
    """The first `tokens` token ids of the standard library's top-level modules (in name
    order) under the reference tokenizer: a real corpus's n-gram stream, hot and long-tailed."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(REFERENCE_DIR, "tokenizer.json"))
    ids: list[np.ndarray] = []
    got = 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            encoded = tokenizer.encode(f.read(), add_special_tokens=False).ids
        ids.append(np.array(encoded, dtype=np.int64))
        got += len(encoded)
        if got >= tokens:
            break
    return np.concatenate(ids)[:tokens]


def layer_hashing(
    max_rows: int, max_ngram_size: int = 4, heads: int = 8, dim: int = 256
) -> NgramHashMapping:
    """Engram hashing of one layer (2- to `max_ngram_size`-grams x `heads` heads of `dim`
    values; the defaults are DeepSeek-V4.1-Flash's shape) over the reference tokenizer, its
    vocabulary sized so that the layer's head tables together fit in `max_rows` rows."""
    from client.hashing import NgramHashMapping

    orders = max_ngram_size - 1
    vocab = max(max_rows // (orders * heads) - 64, 64)
    tokenizer = os.path.join(REFERENCE_DIR, "tokenizer.json")
    while True:
        mapping = NgramHashMapping(
            [vocab] * orders, max_ngram_size, heads * dim, heads, [1], tokenizer, 2, 0
        )
        if mapping.layer_table_rows(1) <= max_rows:
            return mapping
        vocab -= max(vocab // 1000, 1)


def compared(
    name: str,
    value: float,
    unit: str,
    baseline: str,
    baseline_value: float,
    *,
    x: float | None = None,
    series: str | None = None,
    x_unit: str | None = None,
    target: float | None = None,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """One result for `bench/results/`: a measured value beside its baseline's, measured in
    the same run. `ratio` is value / baseline_value; `higher_is_better` says which way is
    good (False for latencies), and `target`, where the project set one, is the ratio to reach
    (at least, or at most for latencies). `x` places the result on a sweep (rows, tokens,
    cache size; in `x_unit`) as a point of the line `series` in the charts."""
    result: dict[str, Any] = {
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": value / baseline_value if baseline_value else float("nan"),
        "higher_is_better": higher_is_better,
    }
    if x is not None:
        result["x"] = x
        result["series"] = series or name
        result["x_unit"] = x_unit or ""
    if target is not None:
        result["target"] = target
    return result


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


def release_processes(
    target: Callable[..., None], arguments: list[tuple[Any, ...]]
) -> tuple[list[SpawnProcess], Any]:
    """Starts a process per tuple of `arguments` (spawned: no state shared by forking), each
    running `target(*arguments, start, results)`: ready, it waits at the barrier `start`,
    and this returns once all are released together, with the processes and the queue on
    which each puts what it measured."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(arguments) + 1)
    results = context.Queue()
    processes = [context.Process(target=target, args=(*a, start, results)) for a in arguments]
    for process in processes:
        process.start()
    start.wait(timeout=120)
    return processes, results


def gather_processes(
    processes: list[SpawnProcess], results: Any, timeout_s: float, what: str
) -> tuple[list[Any], float]:
    """What each of `processes` put on `results` (one item each) and when the last came
    (`time.perf_counter()`, before the processes' exits), once every one has exited cleanly
    (a failure ends the benchmark, naming `what` failed)."""
    gathered = [results.get(timeout=timeout_s) for _ in processes]
    last_at = time.perf_counter()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"{what} failed (exit code {process.exitcode})")
    return gathered, last_at


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


def sequential_write(path: str, nbytes: int) -> None:
    """Writes `nbytes` to a new file at `path` in 4 MiB blocks, fsyncs it, removes it: what
    the disk takes for bytes written in order (the baseline of imports and exports)."""
    block = np.random.default_rng(1).integers(0, 256, 1 << 22, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        for _ in range(0, nbytes, len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    os.unlink(path)
