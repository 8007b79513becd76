"""Pushes racing restores: a push is applied to the table that is live after it returns, or
refused; never acknowledged into a table that a restore has just replaced."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from daemon import Daemon, daemon_thread
from store_helpers import keys, push, rows_of, spec

from store._proto.engram.store.v1 import store_pb2 as pb

PUSHERS, ROUNDS, RESTORES_PER_ROUND = 4, 3, 5
ROWS, DIM = 100_000, 2


def increment(key: int, client: str, sequence: int) -> pb.PushRequest:
    # SGD with lr 1 and gradient -1: the row goes up by one each time the push is applied.
    return push("t", [key], -np.ones((1, DIM), np.float32), client_id=client, sequence=sequence)


def row(d: Daemon, key: int) -> float:
    return float(rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys([key]))))[0, 0])


def pushes_racing_restores(d: Daemon, round_: int, fresh_keys: Iterator[int]) -> None:
    acknowledged: list[tuple[int, str, int]] = []
    stop = threading.Event()

    def pusher(p: int) -> None:
        client = f"pusher-{round_}-{p}"
        for sequence in itertools.count(1):
            if stop.is_set():
                return
            key = next(fresh_keys)
            d.stub.Push(increment(key, client, sequence))
            acknowledged.append((key, client, sequence))

    threads = [threading.Thread(target=pusher, args=(p,)) for p in range(PUSHERS)]
    for t in threads:
        t.start()
    # The last restore races the pushers; none after it could hide what it lost.
    for _ in range(RESTORES_PER_ROUND):
        d.stub.Restore(pb.RestoreRequest())
    stop.set()
    for t in threads:
        t.join()
    # A restore brings the rows back to the checkpoint and forgets the pushes since; so
    # re-sending an acknowledged push finds it applied (a duplicate) or applies it. One
    # answered "duplicate" whose row is not there was acknowledged and lost.
    lost = [
        (key, client, sequence)
        for key, client, sequence in acknowledged
        if row(d, key) != 1 and d.stub.Push(increment(key, client, sequence)).duplicate
    ]
    assert not lost, f"acknowledged pushes lost, refused on retry: {lost[:5]}"
    assert all(row(d, key) == 1 for key, _, _ in acknowledged), "applied exactly once"


def test_pushes_during_restores_are_kept_or_retried(tmp_path: Path) -> None:
    with daemon_thread(tmp_path / "data", workers=16) as d:
        table = spec("t", num_rows=ROWS, dim=DIM, init="zeros", lr=1.0)
        d.stub.CreateTable(pb.CreateTableRequest(spec=table))
        d.stub.Checkpoint(pb.CheckpointRequest())
        fresh_keys = itertools.count()
        for round_ in range(ROUNDS):
            pushes_racing_restores(d, round_, fresh_keys)


def test_a_push_after_a_drop_is_not_acknowledged(tmp_path: Path) -> None:
    with daemon_thread(tmp_path / "data") as d:
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=10, dim=DIM)))
        d.stub.DropTable(pb.DropTableRequest(name="t"))
        try:
            d.stub.Push(push("t", [1], np.ones((1, DIM), np.float32)))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("a push to a dropped table was acknowledged")
