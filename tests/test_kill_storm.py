"""SIGKILL at random moments while clients push and checkpoints are taken, over and over:
after every restart each published checkpoint is whole, every acknowledged one is still
there, and each equals, bit for bit (rows, optimizer state and step), a replay of exactly
the pushes its manifest says it holds; an acknowledged checkpoint holds every push
acknowledged before it was asked for."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from daemon import Daemon, daemon_process, local_channel
from store_helpers import push, spec

from store._proto.engram.store.v1 import store_pb2 as pb
from store._proto.engram.store.v1 import store_pb2_grpc as pb_grpc
from store.checkpoints import (
    ManifestChain,
    checkpoints_dir,
    published_ids,
    read_manifest,
    restore_table,
    spec_of,
)
from store.idempotency import WINDOW
from store.served_table import ServedTable

KILLS = 22
CLIENTS = 3
ROWS = 20_000
KEYS_PER_PUSH = 300
TABLES = {"sgd": ("sgd", 1.0, 8), "adagrad": ("adagrad", 0.5, 4)}
PACK_HEADER = 56  # rust/src/checkpoint.rs: magic .. count
STEP_AT = slice(40, 48)

Push = tuple[str, int]  # client id, sequence


def table_of(sequence: int) -> str:
    return list(TABLES)[sequence % len(TABLES)]


def keys_of(client: str, sequence: int) -> np.ndarray:
    """Distinct keys, so that each row's history is the same gradient n times: its value
    and optimizer state depend only on n, not on the order of pushes."""
    rng = np.random.default_rng([int(client[1:]), sequence])
    return rng.choice(ROWS, KEYS_PER_PUSH, replace=False).astype(np.uint64)


def request(client: str, sequence: int) -> pb.PushRequest:
    grads = -np.ones((KEYS_PER_PUSH, TABLES[table_of(sequence)][2]), np.float32)
    return push(
        table_of(sequence), keys_of(client, sequence), grads, client_id=client, sequence=sequence
    )


def pushes_held(manifest: dict[str, object]) -> set[Push]:
    held = set()
    for client, window in manifest["clients"].items():  # type: ignore[attr-defined]
        assert window["highest"] <= WINDOW, "every push of the test fits in its window"
        held |= {(client, s) for s in window["recent"]}
    return held


def full_pack(table: ServedTable, path: Path) -> bytes:
    table.native.write_pack(str(path), False)
    return path.read_bytes()


def check_checkpoint(data: Path, checkpoint_id: int, scratch: Path) -> set[Push]:
    """Rebuilds the checkpoint from its packs and a replay of the pushes it holds; both
    must pack to the same rows, state and step. Returns those pushes."""
    manifest = read_manifest(str(data), checkpoint_id)
    held = pushes_held(manifest)
    for entry in manifest["tables"]:
        name = entry["name"]
        work = scratch / f"{checkpoint_id}-{name}"
        work.mkdir(parents=True)
        restored = restore_table(ManifestChain(str(data), manifest), name, str(work / "restored"))
        replayed = ServedTable.create(str(work / "replayed"), spec_of(entry), "replay")
        mine = [p for p in held if table_of(p[1]) == name]
        counts = np.zeros(ROWS, np.int64)
        for client, sequence in mine:
            counts[keys_of(client, sequence).astype(np.int64)] += 1
        dim = TABLES[name][2]
        for n in range(1, int(counts.max(initial=0)) + 1):
            rows = np.flatnonzero(counts >= n).astype(np.uint64)
            replayed.native.push(rows, -np.ones((len(rows), dim), np.float32))
        got = full_pack(restored, work / "restored.pack")
        want = full_pack(replayed, work / "replayed.pack")
        assert int.from_bytes(got[STEP_AT], "little") == len(mine), f"{checkpoint_id}/{name}"
        assert got[PACK_HEADER:-4] == want[PACK_HEADER:-4], f"checkpoint {checkpoint_id}/{name}"
    return held


def test_sigkill_during_pushes_and_checkpoints_never_breaks_a_checkpoint(tmp_path: Path) -> None:
    data = tmp_path / "data"
    scratch = tmp_path / "scratch"
    rng = random.Random(7)
    attempted = {f"c{i}": 0 for i in range(CLIENTS)}
    acknowledged: set[Push] = set()
    lock = threading.Lock()
    # Acknowledged checkpoints: (id, pushes acknowledged before it was asked for, pushes
    # attempted before its answer came).
    checkpoints: list[tuple[int, set[Push], set[Push]]] = []

    def attempted_pushes() -> set[Push]:
        return {(c, s) for c, n in attempted.items() for s in range(1, n + 1)}

    def pusher(address: str, client: str, stop: threading.Event) -> None:
        with local_channel(address) as channel:
            stub = pb_grpc.EngramStoreStub(channel)
            while not stop.is_set():
                with lock:
                    attempted[client] += 1
                    sequence = attempted[client]
                try:
                    stub.Push(request(client, sequence))
                except grpc.RpcError:
                    return
                with lock:
                    acknowledged.add((client, sequence))

    def checkpointer(address: str, stop: threading.Event) -> None:
        with local_channel(address) as channel:
            stub = pb_grpc.EngramStoreStub(channel)
            while not stop.is_set():
                with lock:
                    before = set(acknowledged)
                try:
                    info = stub.Checkpoint(pb.CheckpointRequest(full=rng.random() < 0.1))
                except grpc.RpcError:
                    return
                with lock:
                    checkpoints.append((info.id, before, attempted_pushes()))
                time.sleep(0.02)

    with daemon_process(data) as (d, _):
        for name, (optimizer, lr, dim) in TABLES.items():
            table = spec(name, num_rows=ROWS, dim=dim, optimizer=optimizer, lr=lr, init="zeros")
            d.stub.CreateTable(pb.CreateTableRequest(spec=table))

    def check_restart(d: Daemon, kill: int) -> None:
        """What the daemon restarted after kill `kill` serves and holds on disk."""
        listed = [c.id for c in d.stub.ListCheckpoints(pb.ListCheckpointsRequest()).checkpoints]
        published = published_ids(str(data))
        assert listed == published, f"kill {kill}: the catalog and the directory disagree"
        leftovers = [n for n in os.listdir(checkpoints_dir(str(data))) if not n.isdigit()]
        assert not leftovers, f"kill {kill}: half-written checkpoints left: {leftovers}"
        acked_ids = {c[0] for c in checkpoints}
        assert acked_ids <= set(published), f"kill {kill}: an acknowledged checkpoint is gone"
        to_check = {published[-1]} if published else set()
        if checkpoints:
            to_check.add(checkpoints[-1][0])
        for checkpoint_id in sorted(to_check):
            held = check_checkpoint(data, checkpoint_id, scratch / str(kill))
            for acked_id, before, attempted_by_then in checkpoints:
                if acked_id == checkpoint_id:
                    assert before <= held, f"checkpoint {acked_id} lost acknowledged pushes"
                    assert held <= attempted_by_then, f"checkpoint {acked_id} holds the future"

    # Each daemon is checked as the last kill left it, before its own load starts: one
    # start per kill.
    for kill in range(KILLS):
        with daemon_process(data) as (d, process):
            if kill:
                check_restart(d, kill - 1)
            stop = threading.Event()
            workers = [
                threading.Thread(target=pusher, args=(d.address, c, stop)) for c in attempted
            ]
            workers.append(threading.Thread(target=checkpointer, args=(d.address, stop)))
            for w in workers:
                w.start()
            time.sleep(rng.uniform(0.15, 0.6))
            process.send_signal(signal.SIGKILL)
            process.wait()
            stop.set()
            for w in workers:
                w.join()
    with daemon_process(data) as (d, _):
        check_restart(d, KILLS - 1)
    assert len(checkpoints) >= KILLS, f"only {len(checkpoints)} checkpoints were acknowledged"
    # Every checkpoint ever published, once more at the end.
    for checkpoint_id in published_ids(str(data)):
        check_checkpoint(data, checkpoint_id, scratch / "final")
