"""Kernels release the GIL: other Python threads keep running while one is in flight."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from store import Table
from store.arrays import as_keys

# Timing-sensitive (bounds, timeouts): run alone, after the parallel run (scripts/test.sh).
pytestmark = pytest.mark.serial


def test_python_threads_run_during_a_long_gather(tmp_path: Path) -> None:
    # Virtual rows are computed by the initializer: 2M of them take a good fraction of a second.
    table = Table.create(tmp_path / "t", 4_000_000, 64)
    keys = as_keys(np.random.default_rng(0).integers(0, table.num_rows, 2_000_000))
    out = np.empty((len(keys), 64), np.float32)
    window: list[float] = []

    def gather() -> None:
        window.append(time.perf_counter())
        table._native.gather_into(keys, out, "float32")
        window.append(time.perf_counter())

    worker = threading.Thread(target=gather)
    ticks: list[float] = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    start, end = window
    assert end - start > 0.05, "the gather must be long enough to observe"
    middle = (start + 0.25 * (end - start), start + 0.75 * (end - start))
    inside = [t for t in ticks if middle[0] < t < middle[1]]
    # Had the native call held the GIL, this thread could not run at all in the middle of it.
    assert len(inside) > 100, f"main thread ran {len(inside)} times in mid-gather"
    np.testing.assert_array_equal(out[:5], table.gather(keys[:5]))
