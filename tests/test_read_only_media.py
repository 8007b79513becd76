"""`serve --read-only` on a read-only data directory (a snapshot on a ReadOnlyMany volume
shared by many pods): it starts, serves lookups, refuses changes, writes nothing, lets
several daemons serve one snapshot, and refuses a directory that only recovery could vouch
for (store/read_only_media.py). The daemons run with file permissions binding them, as a
read-only mount would bind root."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon import daemon_process, serve_command
from store_helpers import keys, push, rows_of, spec

from client import EngramClient
from store._proto.engram.store.v1 import store_pb2 as pb

EXIT_STARTUP_FAILURE = 4


def every_file(root: Path) -> dict[str, str]:
    """Each path under `root` with its mode and the digest of its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(root))] = f"{oct(path.stat().st_mode)} {digest}"
    return found


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


@pytest.fixture
def snapshot(tmp_path: Path) -> Iterator[Path]:
    """A data directory with two tables, written by a daemon that then stopped cleanly, its
    files made read-only."""
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=1000, dim=8, lr=1.0)))
        d.stub.CreateTable(
            pb.CreateTableRequest(spec=spec("q", num_rows=64, dim=32, dtype="fp8_e4m3"))
        )
        d.stub.Push(push("t", [1, 2], np.ones((2, 8), np.float32)))
        d.stub.Checkpoint(pb.CheckpointRequest())
        d.stub.Push(push("t", [3], np.ones((1, 8), np.float32)))
    make_read_only(data)
    yield data
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_snapshot_serves_lookups_and_writes_nothing(
    snapshot: Path, as_a_user: list[str]
) -> None:
    before = every_file(snapshot)
    with (
        daemon_process(snapshot, "--read-only", wrapper=as_a_user) as (a, _),
        daemon_process(snapshot, "--read-only", wrapper=as_a_user) as (b, _),
    ):
        for d in (a, b):  # two daemons on one snapshot: no lock keeps the second out
            rows = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys([0, 1, 3]))))
            assert (rows[1:] == rows[1, 0]).all() and rows[1, 0] != rows[0, 0]
            assert d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step == 2
            with EngramClient(d.address) as client:
                assert client.lookup("q", np.arange(4, dtype=np.uint64)).shape == (4, 32)
            listed = d.stub.ListCheckpoints(pb.ListCheckpointsRequest()).checkpoints
            assert [c.id for c in listed] == [1]
            for call, request in (
                (d.stub.Push, push("t", [1], np.ones((1, 8), np.float32))),
                (d.stub.Checkpoint, pb.CheckpointRequest()),
                (d.stub.DropTable, pb.DropTableRequest(name="t")),
                (d.stub.CreateTable, pb.CreateTableRequest(spec=spec("new"))),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    call(request)
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert every_file(snapshot) == before, "a read-only daemon changed its snapshot"


def test_a_snapshot_of_a_running_daemon_is_refused_naming_why(
    tmp_path: Path, as_a_user: list[str]
) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=100, dim=4)))
        d.stub.Push(push("t", [1], np.ones((1, 4), np.float32)))
        copy = tmp_path / "copy"
        shutil.copytree(data, copy)  # as a volume snapshot of a live daemon would be
    make_read_only(copy)
    try:
        refused = subprocess.run(
            [*as_a_user, *serve_command(copy, tmp_path / "port", "--read-only")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == EXIT_STARTUP_FAILURE, refused.stderr
        assert "a daemon was running" in refused.stderr
        assert "its push journal holds pushes not yet flushed" in refused.stderr
    finally:
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
