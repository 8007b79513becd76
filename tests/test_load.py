"""Load: 8 client processes mixing lookups and pushes against one daemon for a bounded time.
No request may fail, and the daemon's memory stays under a stated bound; the latencies and
throughput are reported (in the test's output) for the record, not asserted."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon import daemon_process

from client import EngramClient

# Timing-sensitive (bounds, timeouts): run alone, after the parallel run (scripts/test.sh).
pytestmark = [pytest.mark.slow, pytest.mark.serial]
CLIENTS, SECONDS, ROWS, DIM = 8, 8.0, 200_000, 32
# The daemon's peak resident memory under this load (its tables are 200k x 32 float32 rows
# with Adam state, about 77 MB if every row were written).
MEMORY_BOUND_BYTES = 1 << 30


def client_load(address: str, seed: int, start_at: float) -> dict[str, Any]:
    """Lookups of 1024 keys and pushes of 256 keys, in turn, until the time is up."""
    rng = np.random.default_rng(seed)
    latencies: dict[str, list[float]] = {"lookup": [], "push": []}
    failures: list[str] = []
    with EngramClient(address) as client:
        time.sleep(max(start_at - time.time(), 0))
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            for kind in ("lookup", "push"):
                began = time.perf_counter()
                try:
                    if kind == "lookup":
                        client.lookup("t", rng.integers(0, ROWS, 1024, dtype=np.uint64))
                    else:
                        keys = rng.integers(0, ROWS, 256, dtype=np.uint64)
                        client.push("t", keys, rng.standard_normal((256, DIM), np.float32))
                except Exception as error:  # counted: no request may fail
                    failures.append(f"{kind}: {error}")
                latencies[kind].append(time.perf_counter() - began)
    return {"latencies": latencies, "failures": failures}


def peak_memory_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    return int(kilobytes) * 1024


def test_eight_clients_mixing_lookups_and_pushes(tmp_path: Path) -> None:
    with daemon_process(tmp_path / "data") as (daemon, process):
        with EngramClient(daemon.address) as admin:
            admin.create_table("t", ROWS, DIM, optimizer="adam")
        context = multiprocessing.get_context("spawn")
        start_at = time.time() + 3  # every client connected first
        with context.Pool(CLIENTS) as pool:
            results = pool.starmap(
                client_load, [(daemon.address, seed, start_at) for seed in range(CLIENTS)]
            )
        memory = peak_memory_bytes(process.pid)
        with EngramClient(daemon.address) as admin:
            pushes = admin.stats()[0].tables[0].pushes
    failures = [f for r in results for f in r["failures"]]
    report: dict[str, Any] = {"clients": CLIENTS, "seconds": SECONDS, "peak_rss_bytes": memory}
    for kind in ("lookup", "push"):
        times = np.concatenate([r["latencies"][kind] for r in results])
        report[kind] = {
            "count": len(times),
            "per_s": len(times) / SECONDS,
            "p50_ms": float(np.percentile(times, 50) * 1e3),
            "p99_ms": float(np.percentile(times, 99) * 1e3),
        }
    print(json.dumps(report))
    (tmp_path / "load.json").write_text(json.dumps(report, indent=1))
    assert not failures, failures[:5]
    assert pushes == report["push"]["count"]  # every push acknowledged was applied once
    assert memory < MEMORY_BOUND_BYTES, report
