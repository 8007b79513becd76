"""The daemon's memory for lookup answers is bounded by the server, not by what clients ask
(`serve --max-answer-bytes`, `--max-chunk-bytes`): concurrent maximal lookups, each asking
for its rows in one chunk of up to the message limit, leave the daemon's peak resident
memory under its idle footprint plus the answer budget. Measured in a subprocess daemon."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from daemon import daemon_process
from store_helpers import keys, rows_of, spec

from store._proto.engram.store.v1 import store_pb2 as pb

# Timing-sensitive (bounds, timeouts): run alone, after the parallel run (scripts/test.sh).
pytestmark = pytest.mark.serial

ROWS, DIM, LOOKUP_KEYS, CONCURRENT = 1_000_000, 64, 200_000, 6
BUDGET = 32 << 20
# What the allocator and gRPC keep beside the answers themselves.
SLACK = 64 << 20


def resident_peak_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    return int(kilobytes) * 1024


def test_concurrent_maximal_lookups_stay_under_the_answer_budget(tmp_path: Path) -> None:
    budget = ("--max-answer-bytes", str(BUDGET), "--max-chunk-bytes", str(1 << 20))
    with daemon_process(tmp_path / "data", *budget) as (d, process):
        # Never-written rows are made on the fly from the table's init: answering them maps
        # no page of the table's file, so resident memory is the answers'.
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM)))
        rng = np.random.default_rng(0)
        wanted = [rng.integers(0, ROWS, LOOKUP_KEYS, dtype=np.uint64) for _ in range(CONCURRENT)]
        expected = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(wanted[0][:10]))))
        idle_peak = resident_peak_bytes(process.pid)
        results: list[np.ndarray] = [np.empty(0)] * CONCURRENT
        chunk_counts = [0] * CONCURRENT

        def maximal_lookup(i: int) -> None:
            request = pb.LookupRequest(table="t", keys=keys(wanted[i]), rows_per_chunk=2**32 - 1)
            chunks = list(d.stub.Lookup(request, timeout=120))
            chunk_counts[i] = len(chunks)
            results[i] = rows_of(chunks)

        threads = [threading.Thread(target=maximal_lookup, args=(i,)) for i in range(CONCURRENT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        grown = resident_peak_bytes(process.pid) - idle_peak
    answers = CONCURRENT * LOOKUP_KEYS * DIM * 4
    assert all(r.shape == (LOOKUP_KEYS, DIM) for r in results)
    np.testing.assert_array_equal(results[0][:10], expected)
    assert grown < BUDGET + SLACK, (
        f"the daemon's peak grew by {grown >> 20} MiB answering {answers >> 20} MiB of rows, "
        f"over the budget of {BUDGET >> 20} MiB plus {SLACK >> 20} MiB"
    )
    assert min(chunk_counts) >= LOOKUP_KEYS * DIM * 4 // (1 << 20), "the server chose the chunks"
