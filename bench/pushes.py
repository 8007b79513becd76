"""Pushes per second into a store daemon on this machine: SGD, row-wise Adagrad and Adam,
from 1 client and from 4 concurrent client processes, against the same pushes applied in
process.

Each optimizer has its own table of `--rows` x `--dim` float32 rows (row checksums kept,
as by default). A push carries `--batch` random keys with their gradients, as a trainer's
step does. Measured in one run:
- `in process`: `TrainableTable.push` with the journal attached, what the daemon does for a
  push once it has the request (the baseline of one client);
- `1 client`: `EngramClient.push` (exactly once, as a trainer sends it), through shared
  buffers (a same-machine client) and through the messages (a remote one);
- `4 clients`: 4 processes, each with its own client, pushing into the same table at once
  (pushes to one table are serialized by its write lock); total pushes/s against 1 client's.
Every row is pushed once before anything is measured, so the pushes measured update rows, as
in a trainer's steady state. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import compared, gather_processes, release_processes, report

from client import EngramClient
from store import _native
from store.local import LocalDaemon
from store.spec import OptimizerSpec, TableSpec

OPTIMIZERS = ("sgd", "rowwise_adagrad", "adam")
TRANSPORTS = {"shared buffers": True, "messages": False}


def batches(rows: int, batch: int, dim: int, count: int, seed: int) -> list[tuple[Any, Any]]:
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(0, rows, batch, dtype=np.uint64),
            rng.standard_normal((batch, dim), np.float32),
        )
        for _ in range(count)
    ]


def every_row(rows: int, dim: int) -> list[tuple[Any, Any]]:
    """Pushes that write every row once: a row's first push reserves its disk and creates its
    optimizer state, so without them the first pushes measured would pay for that and the
    later ones not (a trainer's steady state is updates)."""
    chunk = 1 << 16
    grads = np.full((chunk, dim), 1e-3, np.float32)
    return [
        (
            np.arange(start, min(rows, start + chunk), dtype=np.uint64),
            grads[: min(chunk, rows - start)],
        )
        for start in range(0, rows, chunk)
    ]


def in_process_seconds(directory: str, args: argparse.Namespace, optimizer: str) -> float:
    """Seconds per push of the same batches into a table in this process, journal attached."""
    spec = TableSpec(optimizer, args.rows, args.dim, optimizer=OptimizerSpec(optimizer, lr=0.01))
    table = _native.TrainableTable.create(
        os.path.join(directory, optimizer), spec.check().resolved()
    )
    journal, _ = _native.Journal.open(os.path.join(directory, f"journal-{optimizer}"))
    table.attach_journal(journal)
    for keys, grads in every_row(args.rows, args.dim):
        table.push(keys, grads)
    work = batches(args.rows, args.batch, args.dim, args.pushes, seed=0)
    began = time.perf_counter()
    for keys, grads in work:
        table.push(keys, grads)
    return (time.perf_counter() - began) / len(work)


def client_pushes(
    address: str,
    table: str,
    shared_memory: bool,
    args: argparse.Namespace,
    seed: int,
    start: Any,
    ended: Any,
) -> None:
    """Pushes `args.pushes` batches through one client once every client is ready, and puts
    the moments it began and finished on `ended` (perf_counter is the machine's monotonic
    clock, the same in every process)."""
    work = batches(args.rows, args.batch, args.dim, args.pushes, seed)
    with EngramClient(address, shared_memory=shared_memory) as client:
        client.push(table, *work[0])  # connect and map buffers, untimed
        start.wait()
        began = time.perf_counter()
        for keys, grads in work:
            client.push(table, keys, grads)
    ended.put((began, time.perf_counter()))


def concurrent_seconds(
    address: str, table: str, shared_memory: bool, args: argparse.Namespace, clients: int
) -> float:
    """Wall seconds for `clients` processes to push `args.pushes` batches each, all released
    at once."""
    processes, ended = release_processes(
        client_pushes,
        [(address, table, shared_memory, args, seed) for seed in range(1, clients + 1)],
    )
    # Timed in the clients: this process may be scheduled after a quick client has finished
    # (in tiny runs that made the time negative).
    spans, _ = gather_processes(processes, ended, 600, "a pushing client")
    return float(max(end for _, end in spans) - min(begin for begin, _ in spans))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of each table")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8192, help="keys of each push")
    parser.add_argument("--pushes", type=int, default=40, help="pushes per client and run")
    parser.add_argument("--png")
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    raw: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("ENGRAM_BENCH_DIR")) as tmp:
        local = {name: in_process_seconds(tmp, args, name) for name in OPTIMIZERS}
        with (
            LocalDaemon(os.path.join(tmp, "store"), log_level="WARNING") as daemon,
            EngramClient(daemon.address) as admin,
        ):
            for name in OPTIMIZERS:
                admin.create(TableSpec(name, args.rows, args.dim, optimizer=OptimizerSpec(name)))
                for keys, grads in every_row(args.rows, args.dim):
                    admin.push(name, keys, grads)
            for name in OPTIMIZERS:
                in_process = 1 / local[name]
                raw[f"in_process_{name}_pushes_per_s"] = in_process
                for transport, shared in TRANSPORTS.items():
                    one = args.pushes / concurrent_seconds(daemon.address, name, shared, args, 1)
                    four = (
                        4 * args.pushes / concurrent_seconds(daemon.address, name, shared, args, 4)
                    )
                    label = transport.replace(" ", "_")
                    raw[f"{name}_{label}_1_client_pushes_per_s"] = one
                    raw[f"{name}_{label}_4_clients_pushes_per_s"] = four
                    unit = "pushes/s"
                    results += [
                        compared(
                            f"{name}, 1 client, {transport}", one, unit, "in process", in_process
                        ),
                        compared(f"{name}, 4 clients, {transport}", four, unit, "1 client", one),
                    ]
    report(
        {
            "benchmark": "pushes",
            "table": [args.rows, args.dim],
            "batch_rows": args.batch,
            **raw,
            "results": results,
        },
        args.png,
    )


if __name__ == "__main__":
    main()
