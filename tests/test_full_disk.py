"""A full disk refuses what does not fit and the daemon lives: rows are reserved on disk
before they are first written (a store into a hole of a mapped file on a full disk would
kill the daemon with SIGBUS), and a restore that does not fit changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon import Daemon, daemon_process, serve_command
from store_helpers import keys, push, rows_of, spec

from store._proto.engram.store.v1 import store_pb2 as pb
from store.checkpoints import (
    ManifestChain,
    checkpoints_dir,
    published_ids,
    read_manifest,
    restore_table,
)

ROWS, DIM = 1_000_000, 64  # 256 MB of rows, on a 24 MB disk: only the written ones fit
OVERCOMMIT = "--overcommit-disk"  # without it, such a table is refused at creation
BATCH = 4096


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs mounted for the test (needs root: mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill_until_refused(d: Daemon) -> tuple[int, grpc.RpcError]:
    """Pushes batches of new rows until the disk refuses one; returns the rows written."""
    for batch in range(ROWS // BATCH):
        batch_keys = np.arange(batch * BATCH, (batch + 1) * BATCH, dtype=np.uint64)
        try:
            d.stub.Push(push("t", batch_keys, np.ones((BATCH, DIM), np.float32)))
        except grpc.RpcError as error:
            return batch * BATCH, error
    raise AssertionError("the disk never filled")


def test_a_full_disk_refuses_new_rows_and_the_daemon_lives(small_disk: Path) -> None:
    with daemon_process(small_disk / "data", OVERCOMMIT) as (d, process):
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM)))
        written, error = fill_until_refused(d)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert "No space left" in (error.details() or "")
        assert process.poll() is None, "the daemon died"
        info = d.stub.DescribeTable(pb.DescribeTableRequest(name="t"))
        assert info.written_rows == written and info.step == written // BATCH
        # What was acknowledged is there; rows already on disk still train.
        rows = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys([0, written - 1]))))
        before = rows.copy()
        d.stub.Push(push("t", [0, written - 1], np.ones((2, DIM), np.float32)))
        after = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys([0, written - 1]))))
        np.testing.assert_allclose(after, before - 0.1, rtol=1e-6)
        assert d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step == info.step + 1
    assert process.returncode == 0


def test_a_restore_that_does_not_fit_changes_nothing(small_disk: Path, tmp_path: Path) -> None:
    data = small_disk / "data"
    filler = small_disk / "filler"
    with daemon_process(data, OVERCOMMIT) as (d, _):
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM)))
        d.stub.Push(push("t", np.arange(8192, dtype=np.uint64), np.ones((8192, DIM), np.float32)))
        d.stub.Checkpoint(pb.CheckpointRequest())
        d.stub.Push(push("t", [1], np.ones((1, DIM), np.float32)))
        latest = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(8192)))))
        # Leave too little room for a second copy of the table.
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler.write_bytes(b"\1" * (free - (1 << 20)))
        with pytest.raises(grpc.RpcError) as error:
            d.stub.Restore(pb.RestoreRequest())
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value.details()
        now = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(8192)))))
        np.testing.assert_array_equal(now, latest)
        assert d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step == 2
        assert [n for n in os.listdir(data) if n.startswith(".restore")] == []

    # At start-up too: the daemon does not start, and the data stays as it was.
    failed = subprocess.run(
        serve_command(data, tmp_path / "port", "--restore", "latest", OVERCOMMIT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 4, failed.stderr
    assert failed.returncode != -signal.SIGBUS
    filler.unlink()
    with daemon_process(data, OVERCOMMIT) as (d, _):
        now = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(8192)))))
        np.testing.assert_array_equal(now, latest)
        d.stub.Restore(pb.RestoreRequest())
        assert d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step == 1


def test_a_checkpoint_that_does_not_fit_fails_cleanly_and_the_next_holds_everything(
    small_disk: Path, tmp_path: Path
) -> None:
    data = small_disk / "data"
    filler = small_disk / "filler"
    batch = np.arange(8192, dtype=np.uint64)
    with daemon_process(data, OVERCOMMIT) as (d, process):
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM)))
        d.stub.Push(push("t", batch, np.ones((8192, DIM), np.float32)))
        first = d.stub.Checkpoint(pb.CheckpointRequest()).id
        d.stub.Push(push("t", batch, np.ones((8192, DIM), np.float32)))
        latest = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(batch))))
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler.write_bytes(b"\1" * (free - (256 << 10)))  # less than the 2 MB pack needs
        with pytest.raises(grpc.RpcError) as error:
            d.stub.Checkpoint(pb.CheckpointRequest())
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value.details()
        assert "No space left" in (error.value.details() or "")
        assert process.poll() is None, "the daemon died"
        assert published_ids(str(data)) == [first]
        assert [n for n in os.listdir(checkpoints_dir(str(data))) if not n.isdigit()] == []
        now = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(batch))))
        np.testing.assert_array_equal(now, latest)
        filler.unlink()
        second = d.stub.Checkpoint(pb.CheckpointRequest()).id
    manifest = read_manifest(str(data), second)
    assert manifest["tables"][0]["rows"] == 8192, "the rows the failed one missed"
    table = restore_table(ManifestChain(str(data), manifest), "t", str(tmp_path / "restored"))
    got = np.frombuffer(table.native.lookup(batch, "float32"), np.float32).reshape(-1, DIM)
    np.testing.assert_array_equal(got, latest)


def test_a_table_that_could_not_be_written_whole_is_refused_at_creation(small_disk: Path) -> None:
    with daemon_process(small_disk / "data") as (d, process):
        with pytest.raises(grpc.RpcError) as error:
            d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM)))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value.details()
        assert f"takes {ROWS * DIM * 4} bytes once every row is written" in (
            error.value.details() or ""
        )
        assert not d.stub.ListTables(pb.ListTablesRequest()).tables
        # Two tables that fit one by one but not together: the first one's unwritten rows
        # are promised to it.
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        rows = int(free * 0.6) // (DIM * 4 * 2)  # Adam: rows and two state values per value
        half = spec("a", num_rows=rows, dim=DIM, optimizer="adam")
        d.stub.CreateTable(pb.CreateTableRequest(spec=half))
        with pytest.raises(grpc.RpcError) as error:
            d.stub.CreateTable(pb.CreateTableRequest(spec=spec("b", num_rows=rows, dim=DIM * 2)))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "promised to the unwritten rows" in (error.value.details() or "")
        assert process.poll() is None
