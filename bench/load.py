"""A store daemon under load: 8 client processes, each mixing lookups and pushes into one
training table for a bounded time while checkpoints are taken, against 1 client doing the
same in the same run.

Each client loops: `--lookups-per-push` lookups of `--lookup-keys` random keys, then one
push (exactly once, as a trainer sends it) of `--push-keys` keys with their gradients,
through the messages (the path remote clients use, and the one that holds the most of the
daemon's memory). Every `--checkpoint-every` seconds the driver takes a checkpoint. Measured:
- requests/s of all clients together, 8 clients against 1;
- p50 and p99 latency of lookups and of pushes, 8 clients against 1;
- the daemon's peak anonymous memory (resident pages not backed by a file: request buffers,
  Python, gRPC; the tables' mapped pages are page cache the kernel reclaims) against a
  stated bound: its idle footprint plus, for every request that can be in flight at once,
  `BUFFER_COPIES` copies of the largest request's bytes, plus `SLACK_BYTES`.
The daemon's own figures say how long its checkpoints held pushes off. Then what a periodic
flush costs: the same 8 clients without checkpoints, on the daemon
restarted with a flush every `--flush-every` seconds, against the same load with no flush:
push and lookup p99 with flushes against without them, and the longest time a flush held
pushes off (the daemon's own figure) against the bound the docs state (100 ms plus the
slowest push of the load without flushes).
A failed request, a push acknowledged but not applied exactly once (the daemon's count
against the clients'), memory over the bound, or a flush holding pushes off for longer than
its bound fails the benchmark (exit code 1). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import compared, gather_processes, release_processes, report

from client import EngramClient
from store.local import LocalDaemon
from store.spec import OptimizerSpec, TableSpec

TABLE = "load"
CLIENTS = 8
# Copies of a request's bytes the daemon may hold while serving it (the message received,
# the arrays decoded from it, the response built, the response serialized), and what the
# allocator may keep on top (per-thread arenas of gRPC's worker threads).
BUFFER_COPIES = 4
SLACK_BYTES = 256 << 20
# The docs' bound on a flush's hold on pushes, beside the pushes already in flight.
FLUSH_HOLD_BOUND_S = 0.1


def client_loop(
    address: str,
    args: argparse.Namespace,
    seed: int,
    start: Any,
    results: Any,
) -> None:
    """Mixes lookups and pushes for `args.seconds` once every client is ready, and puts its
    latencies (seconds, by kind) and failures on `results`."""
    rng = np.random.default_rng(seed)
    latencies: dict[str, list[float]] = {"lookup": [], "push": []}
    failures: list[str] = []
    with EngramClient(address, shared_memory=False) as client:
        client.lookup(TABLE, np.zeros(1, np.uint64))  # connect, untimed
        start.wait()
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline:
            for _ in range(args.lookups_per_push):
                keys = rng.integers(0, args.rows, args.lookup_keys, dtype=np.uint64)
                timed(latencies["lookup"], failures, client.lookup, TABLE, keys)
            keys = rng.integers(0, args.rows, args.push_keys, dtype=np.uint64)
            grads = rng.standard_normal((args.push_keys, args.dim), np.float32) * 1e-3
            timed(latencies["push"], failures, client.push, TABLE, keys, grads)
    results.put((latencies, failures))


def timed(into: list[float], failures: list[str], call: Any, *args: Any) -> None:
    began = time.perf_counter()
    try:
        call(*args)
    except Exception as error:  # every failure is reported, none is expected
        failures.append(f"{type(error).__name__}: {error}")
        return
    into.append(time.perf_counter() - began)


class MemoryWatch:
    """Samples a process's anonymous and file-backed resident memory until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_anon = 0
        self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def resident(self) -> tuple[int, int]:
        """(RssAnon, RssFile) in bytes, from /proc/PID/status."""
        fields: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("RssAnon", "RssFile", "RssShmem"):
                    fields[name] = int(value.split()[0]) * 1024
        return fields["RssAnon"], fields["RssFile"] + fields.get("RssShmem", 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            anon, file = self.resident()
            self.peak_anon = max(self.peak_anon, anon)
            self.peak_file = max(self.peak_file, file)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_phase(
    address: str,
    args: argparse.Namespace,
    clients: int,
    admin: EngramClient,
    checkpoints_taken: bool = True,
) -> dict[str, Any]:
    """`clients` processes under load at once, checkpoints taken meanwhile; their latencies,
    failures, request count and wall seconds."""
    processes, results = release_processes(
        client_loop, [(address, args, seed) for seed in range(1, clients + 1)]
    )
    began = time.perf_counter()
    checkpoints = 0
    while time.perf_counter() - began < args.seconds:
        every = args.checkpoint_every if checkpoints_taken else 0
        wait = every or args.seconds
        time.sleep(max(0.0, min(wait, args.seconds - (time.perf_counter() - began))))
        if every and time.perf_counter() - began < args.seconds:
            admin.checkpoint()
            checkpoints += 1
    gathered, gathered_at = gather_processes(
        processes, results, args.seconds + 600, "a load client"
    )
    seconds = gathered_at - began
    latencies = {
        kind: np.concatenate([np.asarray(got[0][kind], np.float64) for got in gathered])
        for kind in ("lookup", "push")
    }
    failures = [failure for got in gathered for failure in got[1]]
    requests = sum(len(values) for values in latencies.values()) + len(failures)
    return {
        "latencies": latencies,
        "failures": failures,
        "requests": requests,
        "seconds": seconds,
        "checkpoints": checkpoints,
    }


def percentile_ms(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if len(values) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=500_000, help="rows of the table")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--lookup-keys", type=int, default=4096, help="keys of each lookup")
    parser.add_argument("--push-keys", type=int, default=1024, help="keys of each push")
    parser.add_argument("--lookups-per-push", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--checkpoint-every", type=float, default=5.0, help="0: none")
    parser.add_argument(
        "--flush-every", type=float, default=2.0, help="seconds between flushes, flush phase"
    )
    parser.add_argument("--png")
    args = parser.parse_args()

    spec = TableSpec(TABLE, args.rows, args.dim, optimizer=OptimizerSpec("rowwise_adagrad"))
    largest_request = max(args.lookup_keys, args.push_keys) * (args.dim * 4 + 8)
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("ENGRAM_BENCH_DIR")) as tmp,
        LocalDaemon(
            os.path.join(tmp, "store"), "--flush-interval", "0", log_level="WARNING"
        ) as daemon,
        EngramClient(daemon.address) as admin,
    ):
        assert daemon.process is not None
        admin.create(spec)
        chunk = 1 << 16
        first_pushes = range(0, args.rows, chunk)
        for first in first_pushes:
            keys = np.arange(first, min(args.rows, first + chunk), dtype=np.uint64)
            admin.push(TABLE, keys, np.full((len(keys), args.dim), 1e-3, np.float32))
        admin.checkpoint()
        watch = MemoryWatch(daemon.process.pid)
        idle_anon, _ = watch.resident()
        bound = idle_anon + CLIENTS * BUFFER_COPIES * largest_request + SLACK_BYTES
        one = run_phase(daemon.address, args, 1, admin)
        with watch:
            many = run_phase(daemon.address, args, CLIENTS, admin)
        quiet = run_phase(daemon.address, args, CLIENTS, admin, checkpoints_taken=False)
        before_restart = admin.stats()[0]
        applied = before_restart.tables[0].pushes
        checkpoints_taken = before_restart.checkpoints_taken
        admin.close()
        daemon.stop()
        with (
            LocalDaemon(
                os.path.join(tmp, "store"),
                "--flush-interval",
                str(args.flush_every),
                log_level="WARNING",
            ) as flushing_daemon,
            EngramClient(flushing_daemon.address) as flushing_admin,
        ):
            flushing = run_phase(
                flushing_daemon.address, args, CLIENTS, flushing_admin, checkpoints_taken=False
            )
            after = flushing_admin.stats()[0]
            applied += after.tables[0].pushes
            flushes = after.flushes
    phases = (one, many, quiet, flushing)
    acknowledged = len(first_pushes) + sum(len(p["latencies"]["push"]) for p in phases)
    hold_bound = FLUSH_HOLD_BOUND_S + float(max(quiet["latencies"]["push"], default=0.0))

    failures = [failure for phase in phases for failure in phase["failures"]]
    results: list[dict[str, Any]] = []
    one_rate = one["requests"] / one["seconds"]
    many_rate = many["requests"] / many["seconds"]
    results.append(
        compared(f"requests/s, {CLIENTS} clients", many_rate, "requests/s", "1 client", one_rate)
    )
    for kind in ("lookup", "push"):
        for q in (50, 99):
            results.append(
                compared(
                    f"{kind} p{q}, {CLIENTS} clients",
                    percentile_ms(many["latencies"][kind], q),
                    "ms",
                    "1 client",
                    percentile_ms(one["latencies"][kind], q),
                    higher_is_better=False,
                )
            )
    for kind in ("lookup", "push"):
        results.append(
            compared(
                f"{kind} p99 with a flush every {args.flush_every:g} s, {CLIENTS} clients",
                percentile_ms(flushing["latencies"][kind], 99),
                "ms",
                "no flush",
                percentile_ms(quiet["latencies"][kind], 99),
                higher_is_better=False,
            )
        )
    results.append(
        compared(
            "longest push hold-off by a flush",
            flushes.longest_hold_s * 1e3,
            "ms",
            "stated bound",
            hold_bound * 1e3,
            target=1.0,
            higher_is_better=False,
        )
    )
    results.append(
        compared(
            f"daemon peak anonymous memory, {CLIENTS} clients",
            watch.peak_anon / 2**20,
            "MiB",
            "stated bound",
            bound / 2**20,
            target=1.0,
            higher_is_better=False,
        )
    )
    report(
        {
            "benchmark": "load",
            "table": [args.rows, args.dim],
            "clients": CLIENTS,
            "lookup_keys": args.lookup_keys,
            "push_keys": args.push_keys,
            "lookups_per_push": args.lookups_per_push,
            "seconds_per_phase": args.seconds,
            "checkpoints": [one["checkpoints"], many["checkpoints"]],
            "requests": [one["requests"], many["requests"]],
            "failed_requests": len(failures),
            "pushes_acknowledged": acknowledged,
            "pushes_applied": applied,
            "first_failures": failures[:5],
            "idle_anonymous_mib": idle_anon / 2**20,
            "peak_anonymous_mib": watch.peak_anon / 2**20,
            "peak_file_backed_mib": watch.peak_file / 2**20,
            "memory_bound_mib": bound / 2**20,
            "flushes": flushes.count,
            "longest_flush_s": flushes.longest_total_s,
            "longest_flush_hold_s": flushes.longest_hold_s,
            # A checkpoint holds pushes off (never lookups) for all of its time.
            "checkpoints_taken": checkpoints_taken.count,
            "longest_checkpoint_s": checkpoints_taken.longest_total_s,
            "results": results,
        },
        args.png,
    )
    if failures:
        raise SystemExit(f"{len(failures)} requests failed under load, first: {failures[0]}")
    if applied != acknowledged:
        raise SystemExit(f"{acknowledged} pushes were acknowledged but {applied} applied")
    if flushes.longest_hold_s > hold_bound:
        raise SystemExit(
            f"a flush held pushes off for {flushes.longest_hold_s:.3f} s, over the stated "
            f"bound of {hold_bound:.3f} s"
        )
    if watch.peak_anon > bound:
        raise SystemExit(
            f"the daemon's anonymous memory peaked at {watch.peak_anon >> 20} MiB, over the "
            f"stated bound of {bound >> 20} MiB"
        )


if __name__ == "__main__":
    main()
