"""Tables are bounded: each holds files open, so a daemon creates at most `--max-tables`,
lifts its soft open-file limit to the hard one at start, and warns when even that could not
hold its tables. Before, a client could create tables until the process ran out of files,
after which every call that opens a file (a checkpoint, a shared buffer, a connection)
failed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import REPO_ROOT
from daemon import daemon_thread, local_channel

from client import EngramClient, RequestTooLargeError
from store.local import LocalDaemon
from store.server import FILES_PER_TABLE


def test_a_daemon_creates_at_most_max_tables(tmp_path: Path) -> None:
    with (
        daemon_thread(tmp_path / "data", max_tables=3) as daemon,
        EngramClient(daemon.address) as client,
    ):
        for name in ("a", "b", "c"):
            client.create_table(name, 10, 2)
        with pytest.raises(
            RequestTooLargeError, match=r"serves 3 tables, its limit \(--max-tables\)"
        ):
            client.create_table("d", 10, 2)
        assert client.tables() == ["a", "b", "c"]
        client.checkpoint()  # still working
        client.drop_table("b")
        client.create_table("d", 10, 2)
        assert sorted(client.tables()) == ["a", "c", "d"]


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts files through /proc")
def test_a_table_holds_at_most_files_per_table_open(tmp_path: Path) -> None:
    tables = 8
    with LocalDaemon(str(tmp_path / "data"), log_level="WARNING") as daemon:
        assert daemon.process is not None
        with EngramClient(daemon.address, shared_memory=False) as client:
            client.create_table("warm", 10, 4)
            client.push("warm", [1], np.ones((1, 4), np.float32))
            client.checkpoint()
            before = open_files(daemon.process.pid)
            for i in range(tables):
                # Adam keeps state; checksums and a push open every file a table has.
                client.create_table(f"t{i}", 100, 4, optimizer="adam")
                client.push(f"t{i}", [1], np.ones((1, 4), np.float32))
            client.checkpoint()
            grown = open_files(daemon.process.pid) - before
    assert FILES_PER_TABLE * (tables - 1) < grown <= FILES_PER_TABLE * tables, grown


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc/PID/limits")
def test_serve_lifts_its_open_file_limit_and_warns_when_the_hard_one_is_too_low(
    tmp_path: Path,
) -> None:
    port_file = tmp_path / "port"
    # A soft limit of 256 under a hard one of 512: lifted to 512, which cannot hold 1024
    # tables of five files. (Limits are only lowered here: no privilege needed.)
    command = (
        "ulimit -Sn 256 && ulimit -Hn 512 && exec "
        f"{sys.executable} -m engram_cli --log-level WARNING serve --port 0 "
        f"--data-dir {tmp_path / 'data'} --port-file {port_file}"
    )
    daemon = subprocess.Popen(
        ["bash", "-c", command], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert daemon.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        limits = Path(f"/proc/{daemon.pid}/limits").read_text()
        files = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert files.split()[3:5] == ["512", "512"], files
        with local_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
    finally:
        daemon.terminate()
        _, stderr = daemon.communicate(timeout=60)
    assert "the open-file limit (512) is below the 6144 that --max-tables 1024" in stderr
