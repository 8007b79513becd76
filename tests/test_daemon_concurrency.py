"""Concurrent clients against one daemon process: no lost update, no torn row."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from daemon import daemon_process, local_channel
from store_helpers import keys, push, rows_of, spec

from store._proto.engram.store.v1 import store_pb2 as pb
from store._proto.engram.store.v1 import store_pb2_grpc as pb_grpc

ROWS, DIM, LR = 300, 8, 0.01


def client_keys(client: int, step: int) -> np.ndarray:
    rng = np.random.default_rng([client, step])
    return rng.integers(0, ROWS, 400).astype(np.uint64)


def client_grads(client: int, step: int) -> np.ndarray:
    rng = np.random.default_rng([client, step, 1])
    return rng.standard_normal((400, DIM)).astype(np.float32)


def test_concurrent_clients_lose_no_update(tmp_path: Path) -> None:
    clients, pushes = 4, 25
    with daemon_process(tmp_path / "data") as (daemon, _):
        daemon.stub.CreateTable(
            pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM, lr=LR))
        )
        initial = rows_of(daemon.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(ROWS)))))
        errors: list[BaseException] = []

        def run(client: int) -> None:
            try:
                with local_channel(daemon.address) as channel:
                    stub = pb_grpc.EngramStoreStub(channel)
                    for step in range(pushes):
                        stub.Push(
                            push(
                                "t",
                                client_keys(client, step),
                                client_grads(client, step),
                                client_id=f"c{client}",
                                sequence=step + 1,
                            ),
                            timeout=30,
                        )
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        got = rows_of(daemon.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(ROWS)))))
        info = daemon.stub.DescribeTable(pb.DescribeTableRequest(name="t"))

    expected = initial.astype(np.float64)
    for client in range(clients):
        for step in range(pushes):
            np.subtract.at(
                expected,
                client_keys(client, step).astype(np.int64),
                LR * client_grads(client, step),
            )
    assert info.step == clients * pushes
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_lookups_never_see_half_a_push(tmp_path: Path) -> None:
    """Each push moves every row by the same amount; a lookup racing it must see all rows
    before or all after, never a mixture."""
    with daemon_process(tmp_path / "data") as (daemon, _):
        daemon.stub.CreateTable(
            pb.CreateTableRequest(spec=spec("t", num_rows=20_000, dim=4, init="zeros", lr=1.0))
        )
        all_keys = np.arange(20_000, dtype=np.uint64)
        stop = threading.Event()
        torn: list[np.ndarray] = []
        seen_states: set[float] = set()

        def watch() -> None:
            with local_channel(daemon.address) as channel:
                stub = pb_grpc.EngramStoreStub(channel)
                while not stop.is_set():
                    rows = rows_of(stub.Lookup(pb.LookupRequest(table="t", keys=keys(all_keys))))
                    seen_states.add(float(rows[0, 0]))
                    if not (rows == rows[0, 0]).all():
                        torn.append(rows)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            for _ in range(30):
                daemon.stub.Push(push("t", all_keys, np.full((20_000, 4), -1.0, np.float32)))
        finally:
            stop.set()
            watcher.join()
        assert not torn, f"{len(torn)} lookups saw a partly applied push"
        # Besides the first and last states, at least one in between: the race happened.
        assert len(seen_states) >= 3, "the lookups must actually have raced the pushes"
        final = rows_of(daemon.stub.Lookup(pb.LookupRequest(table="t", keys=keys([0, 19_999]))))
        assert (final == 30.0).all()
