"""A data directory the daemon cannot write: what needs a new file (a checkpoint, a table) is
refused with FAILED_PRECONDITION naming the path, nothing published is damaged, lookups and
pushes into the open files go on, and writing works again once the directory does; a daemon
started on such a directory exits with its start-up status, saying why, and changes nothing.

Run as root, the daemon is started without the capabilities that override file permissions
(setpriv), so that a directory's mode binds it as it binds any other user."""

from __future__ import annotations

import hashlib
import os
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

EXIT_STARTUP_FAILURE = 4


def unwritable(*directories: Path) -> None:
    for directory in directories:
        directory.chmod(0o555)


def writable(*directories: Path) -> None:
    for directory in directories:
        directory.chmod(0o755)


def rows(d: Daemon, count: int = 64) -> np.ndarray:
    return rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(count)))))


def refused(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request)  # type: ignore[operator]
    return error.value


def test_an_unwritable_data_directory_refuses_new_files_and_serves_on(
    tmp_path: Path, as_a_user: list[str]
) -> None:
    data = tmp_path / "data"
    ones = np.ones((64, 8), np.float32)
    with daemon_process(data, wrapper=as_a_user) as (d, process):
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=100_000, dim=8)))
        d.stub.Push(push("t", range(64), ones))
        first = d.stub.Checkpoint(pb.CheckpointRequest()).id
        directories = [
            data,
            data / "tables",
            data / "tables" / "t",
            Path(checkpoints_dir(str(data))),
        ]
        unwritable(*directories)
        try:
            error = refused(d.stub.Checkpoint, pb.CheckpointRequest())
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            assert "Permission denied" in (error.details() or "")
            assert "checkpoints" in (error.details() or ""), "the path is named"
            error = refused(d.stub.CreateTable, pb.CreateTableRequest(spec=spec("u")))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            # The open files still take pushes (acknowledged: in the journal) and serve rows.
            d.stub.Push(push("t", range(64), ones))
            d.stub.Push(push("t", range(50_000, 50_064), ones))
            now = rows(d)
            assert process.poll() is None, "the daemon died"
        finally:
            writable(*directories)
        assert published_ids(str(data)) == [first]
        assert [n for n in os.listdir(checkpoints_dir(str(data))) if not n.isdigit()] == []
        second = d.stub.Checkpoint(pb.CheckpointRequest()).id
        d.stub.Push(push("t", range(64), ones))
        d.stub.Restore(pb.RestoreRequest(id=second))
        np.testing.assert_array_equal(rows(d), now)
        assert d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step == 3
    restored = restore_table(
        ManifestChain(str(data), read_manifest(str(data), first)), "t", str(tmp_path / "r")
    )
    assert restored.native.step == 1, "the first checkpoint is as it was"


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


def all_paths(directory: Path) -> Iterator[Path]:
    yield directory
    yield from directory.rglob("*")


def test_a_daemon_on_an_unwritable_data_directory_does_not_start(
    tmp_path: Path, as_a_user: list[str]
) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=1000, dim=8)))
        d.stub.Push(push("t", [1, 2], np.ones((2, 8), np.float32)))
        d.stub.Checkpoint(pb.CheckpointRequest())
    before = digest(data)
    paths = list(all_paths(data))
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(modes[p] & ~0o222)
    try:
        failed = subprocess.run(
            [*as_a_user, *serve_command(data, tmp_path / "port")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        for p in paths:
            p.chmod(modes[p])
    assert failed.returncode == EXIT_STARTUP_FAILURE, failed.stderr
    assert f"cannot open data directory {data}" in failed.stderr
    assert "Permission denied" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert digest(data) == before, "a refused start changed the data"
    with daemon_process(data) as (d, _):
        assert d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step == 1
