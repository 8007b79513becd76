"""What a push's acknowledgement promises through a crash of the daemon
(docs/reference/acknowledgements.md): killed anywhere, a plain restart holds every acknowledged push
exactly once, with the step count and idempotency windows that go with the rows. Every
crash point of pushes, checkpoints, restores and flushes is visited, and the daemon is also
killed at random times in a push storm."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon import Daemon, daemon_process, local_channel, serve_command
from store_helpers import keys, push, rows_of, spec

from store import _native
from store._proto.engram.store.v1 import store_pb2 as pb
from store._proto.engram.store.v1 import store_pb2_grpc as pb_grpc
from store.catalog import Catalog
from store.checkpoints import ManifestChain, read_manifest, restore_table
from store.crash_points import ENV, POINTS

ROWS, DIM = 50_000, 16
EXIT_STARTUP_FAILURE = 4


def add_one(key_values: object, client: str, sequence: int) -> pb.PushRequest:
    """SGD with lr 1 and gradients of -1: each application adds exactly 1 to each row."""
    n = len(np.asarray(key_values))
    return push(
        "t", key_values, -np.ones((n, DIM), np.float32), client_id=client, sequence=sequence
    )


def table_rows(d: Daemon, name: str = "t", rows: int = ROWS) -> np.ndarray:
    return rows_of(d.stub.Lookup(pb.LookupRequest(table=name, keys=keys(range(rows)))))


def step_of(d: Daemon, name: str = "t") -> int:
    step: int = d.stub.DescribeTable(pb.DescribeTableRequest(name=name)).step
    return step


def create(d: Daemon, name: str = "t") -> None:
    table = spec(name, num_rows=ROWS, dim=DIM, init="zeros", lr=1.0)
    d.stub.CreateTable(pb.CreateTableRequest(spec=table))


@contextmanager
def crashing_daemon(data: Path, point: str) -> Iterator[tuple[Daemon, subprocess.Popen[bytes]]]:
    with daemon_process(data, env={ENV: point}) as (d, process):
        yield d, process
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL, f"the daemon did not die at {point}"


def leftovers(data: Path) -> list[str]:
    return sorted(n for n in os.listdir(data) if n.startswith((".restore", ".retired")))


@pytest.mark.parametrize("point", _native.PUSH_CRASH_POINTS)
def test_a_push_killed_at_each_crash_point_is_applied_once(tmp_path: Path, point: str) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        create(d)
        d.stub.Push(add_one([1, 2, 2], "c", 1))
    with crashing_daemon(data, point) as (d, _), pytest.raises(grpc.RpcError):
        d.stub.Push(add_one([2, 3], "c", 2))
    with daemon_process(data) as (d, _):
        assert d.stub.Push(add_one([1, 2, 2], "c", 1)).duplicate, "acknowledged before"
        # Killed after its rows changed but before its record: undone, so new now. Killed
        # after the record: applied, so a duplicate.
        retry = d.stub.Push(add_one([2, 3], "c", 2))
        assert retry.duplicate == (point == "push:journal-appended")
        rows = table_rows(d)[:, 0]
        assert list(rows[:5]) == [0, 1, 3, 1, 0]
        assert step_of(d) == 2


def test_a_first_write_undone_after_a_crash_is_not_in_the_next_checkpoint(tmp_path: Path) -> None:
    """Row 5's first write, killed before its record and put back at start-up, leaves the
    row never-written: the next (incremental) checkpoint restores it never-written too."""
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        create(d)
        d.stub.Push(add_one([1], "c", 1))
        d.stub.Checkpoint(pb.CheckpointRequest())
    with crashing_daemon(data, "push:rows-applied") as (d, _), pytest.raises(grpc.RpcError):
        d.stub.Push(add_one([5], "c", 2))
    with daemon_process(data) as (d, _):
        d.stub.Push(add_one([2], "c", 3))
        latest = d.stub.Checkpoint(pb.CheckpointRequest()).id
        live = d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).written_rows
    manifest = read_manifest(str(data), latest)
    restored = restore_table(ManifestChain(str(data), manifest), "t", str(tmp_path / "restored"))
    assert live == 2
    assert restored.native.written_count() == live


def test_sigkill_in_a_push_storm_then_plain_restarts_keep_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    clients, kills, keys_per_push = 3, 3, 4000
    attempted = dict.fromkeys(range(clients), 0)

    def keys_of(client: int, sequence: int) -> np.ndarray:
        rng = np.random.default_rng([client, sequence])
        return rng.integers(0, ROWS, keys_per_push).astype(np.uint64)

    def storm(address: str, client: int, stop: threading.Event) -> None:
        with local_channel(address) as channel:
            stub = pb_grpc.EngramStoreStub(channel)
            while not stop.is_set():
                sequence = attempted[client] + 1
                attempted[client] = sequence
                try:
                    stub.Push(add_one(keys_of(client, sequence), f"c{client}", sequence))
                except grpc.RpcError:
                    return  # killed; this push may or may not have been applied

    with daemon_process(data) as (d, _):
        create(d)
    for kill in range(kills):
        with daemon_process(data) as (d, process):
            # Every push sent before (acknowledged or not) is sent again: an acknowledged
            # one must be a duplicate; the one in flight at the kill is either.
            for client in range(clients):
                for sequence in range(1, attempted[client] + 1):
                    request = add_one(keys_of(client, sequence), f"c{client}", sequence)
                    answer = d.stub.Push(request)
                    if sequence < attempted[client]:
                        assert answer.duplicate, f"push {client}/{sequence} applied twice"
            stop = threading.Event()
            workers = [
                threading.Thread(target=storm, args=(d.address, c, stop)) for c in range(clients)
            ]
            for w in workers:
                w.start()
            time.sleep(0.3 + 0.2 * kill)
            process.send_signal(signal.SIGKILL)
            process.wait()
            stop.set()
            for w in workers:
                w.join()
    with daemon_process(data) as (d, process):
        for client in range(clients):
            for sequence in range(1, attempted[client] + 1):
                d.stub.Push(add_one(keys_of(client, sequence), f"c{client}", sequence))
        expected = np.zeros(ROWS)
        for client in range(clients):
            for sequence in range(1, attempted[client] + 1):
                np.add.at(expected, keys_of(client, sequence).astype(np.int64), 1)
        np.testing.assert_array_equal(table_rows(d)[:, 0], expected)
        assert step_of(d) == sum(attempted.values()), "one step per push, none lost or doubled"


def prepare_for_restore(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Table t at checkpoint 1 and later; table u created after it. Returns t's rows at the
    checkpoint and now."""
    with daemon_process(data) as (d, _):
        create(d)
        d.stub.Push(add_one([1, 2], "c", 1))
        d.stub.Checkpoint(pb.CheckpointRequest())
        at_checkpoint = table_rows(d)
        d.stub.Push(add_one([2, 3], "c", 2))
        create(d, "u")
        d.stub.Push(push("u", [5], np.ones((1, DIM), np.float32)))
        return at_checkpoint, table_rows(d)


@pytest.mark.parametrize("point", [p for p in POINTS if p.startswith("restore:")])
def test_a_restore_killed_at_each_crash_point_is_all_or_nothing(tmp_path: Path, point: str) -> None:
    data = tmp_path / "data"
    at_checkpoint, latest = prepare_for_restore(data)
    with crashing_daemon(data, point) as (d, _), pytest.raises(grpc.RpcError):
        d.stub.Restore(pb.RestoreRequest(id=1))
    committed = point != "restore:staged"
    with daemon_process(data) as (d, _):
        tables = [t.spec.name for t in d.stub.ListTables(pb.ListTablesRequest()).tables]
        assert tables == (["t"] if committed else ["t", "u"])
        np.testing.assert_array_equal(table_rows(d), at_checkpoint if committed else latest)
        assert step_of(d) == (1 if committed else 2)
        assert d.stub.Push(add_one([2, 3], "c", 2)).duplicate != committed
        assert [c.id for c in d.stub.ListCheckpoints(pb.ListCheckpointsRequest()).checkpoints] == [
            1
        ]
    assert leftovers(data) == [], "nothing of the restore is left behind"


def test_a_restore_killed_midway_is_finished_by_restore_latest_too(tmp_path: Path) -> None:
    data = tmp_path / "data"
    at_checkpoint, _ = prepare_for_restore(data)
    with (
        crashing_daemon(data, "restore:old-tables-retired") as (d, _),
        pytest.raises(grpc.RpcError),
    ):
        d.stub.Restore(pb.RestoreRequest(id=1))
    with daemon_process(data, "--restore", "latest") as (d, _):
        np.testing.assert_array_equal(table_rows(d), at_checkpoint)
        assert step_of(d) == 1
    assert leftovers(data) == []


@pytest.mark.parametrize("point", [p for p in POINTS if p.startswith("checkpoint:")])
def test_a_checkpoint_killed_at_each_crash_point_is_all_or_nothing(
    tmp_path: Path, point: str
) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        create(d)
        d.stub.Push(add_one([1, 2], "c", 1))
        before = table_rows(d)
    with crashing_daemon(data, point) as (d, _), pytest.raises(grpc.RpcError):
        d.stub.Checkpoint(pb.CheckpointRequest())
    published = point in ("checkpoint:published", "checkpoint:recorded")
    with daemon_process(data) as (d, _):
        listed = [c.id for c in d.stub.ListCheckpoints(pb.ListCheckpointsRequest()).checkpoints]
        assert listed == ([1] if published else [])
        assert d.stub.Push(add_one([1, 2], "c", 1)).duplicate
        d.stub.Push(add_one([7], "c", 2))
        d.stub.Restore(pb.RestoreRequest()) if published else d.stub.Checkpoint(
            pb.CheckpointRequest()
        )
        np.testing.assert_array_equal(table_rows(d)[:7], before[:7])
    assert not [n for n in os.listdir(data / "checkpoints") if n.startswith(".tmp")]


@pytest.mark.parametrize("point", [p for p in POINTS if p.startswith("flush:")])
def test_a_flush_killed_at_each_crash_point_loses_nothing(tmp_path: Path, point: str) -> None:
    data = tmp_path / "data"
    with daemon_process(data, "--flush-interval", "0") as (d, process):
        create(d)
        d.stub.Push(add_one([1, 2], "c", 1))
        process.send_signal(signal.SIGKILL)  # the journal alone holds the push's step
        process.wait()
    # Start-up flushes what it recovered: killed there, the next start recovers again.
    port_file = tmp_path / "port"
    died = subprocess.run(
        serve_command(data, port_file), env={**os.environ, ENV: point}, timeout=60
    )
    assert died.returncode == -signal.SIGKILL
    with daemon_process(data) as (d, _):
        assert d.stub.Push(add_one([1, 2], "c", 1)).duplicate
        assert step_of(d) == 1
        assert list(table_rows(d)[:3, 0]) == [0, 1, 1]


def test_after_a_machine_crash_the_daemon_serves_only_a_restored_checkpoint(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, process):
        create(d)
        d.stub.Push(add_one([1], "c", 1))
        d.stub.Checkpoint(pb.CheckpointRequest())
        at_checkpoint = table_rows(d)
        d.stub.Push(add_one([2], "c", 2))
        process.send_signal(signal.SIGKILL)
        process.wait()
    # As after a reboot: the page cache (and rows not yet written back) is gone.
    catalog = Catalog(data / "catalog.lmdb")
    catalog.put_meta("running_boot", "another-boot")
    catalog.close()
    port_file = tmp_path / "port"
    refused = subprocess.run(
        serve_command(data, port_file), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == EXIT_STARTUP_FAILURE
    assert "--restore latest" in refused.stderr
    refused_again = subprocess.run(serve_command(data, port_file), capture_output=True, timeout=60)
    assert refused_again.returncode == EXIT_STARTUP_FAILURE, "still refused until restored"
    with daemon_process(data, "--restore", "latest") as (d, _):
        np.testing.assert_array_equal(table_rows(d), at_checkpoint)
    with daemon_process(data) as (d, _):
        assert step_of(d) == 1


def test_a_second_daemon_on_the_same_data_directory_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, first):
        create(d)
        second = subprocess.run(
            serve_command(data, tmp_path / "port2"), capture_output=True, text=True, timeout=60
        )
        assert second.returncode == EXIT_STARTUP_FAILURE
        assert f"another daemon (pid {first.pid}) is using data directory {data}" in second.stderr
        assert step_of(d) == 0


def test_a_killed_daemon_leaves_no_stale_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, first):
        create(d)
        first.kill()
        first.wait()
    assert (data / "LOCK").read_text().strip() == str(first.pid), "the dead holder's pid"
    with daemon_process(data) as (d, second):
        assert step_of(d) == 0
        assert (data / "LOCK").read_text().strip() == str(second.pid)


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_catalog_beside_tables_refuses_to_start(tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        create(d)
    catalog = data / "catalog.lmdb"
    if damage == "deleted":
        for f in catalog.iterdir():
            f.unlink()
        catalog.rmdir()
    else:
        (catalog / "data.mdb").write_bytes(b"")
    refused = subprocess.run(
        serve_command(data, tmp_path / "port"), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == EXIT_STARTUP_FAILURE
    assert "catalog" in refused.stderr and "1 tables" in refused.stderr
    assert (data / "tables" / "t" / "params.engram").exists(), "nothing was removed"
