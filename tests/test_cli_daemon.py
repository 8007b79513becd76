"""`engram-store serve` and the verbs that talk to a running daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon import daemon_process

from engram_cli import EXIT_FAILURE, EXIT_STARTUP_FAILURE, main
from store import _native


def test_serve_with_no_arguments_uses_the_defaults_and_stops_cleanly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "serve"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_STORE_")},
    )
    assert process.stderr is not None
    try:
        deadline = time.monotonic() + 30
        line = ""
        while "listening on" not in line and time.monotonic() < deadline:
            line = process.stderr.readline()
        assert "listening on 127.0.0.1:50051" in line
        assert (tmp_path / "engram-data" / "catalog.lmdb").is_dir()
        assert main(["tables", "--json"]) == 0
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=30) == 0
        assert "stopped; tables flushed" in rest
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()


def test_verbs_against_a_running_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with daemon_process(tmp_path / "data") as (daemon, _):
        address = ["--address", daemon.address]
        assert (
            main(
                [
                    "create-table",
                    "emb",
                    "--rows",
                    "1000",
                    "--dim",
                    "8",
                    "--optimizer",
                    "adam",
                    "--lr",
                    "0.01",
                    *address,
                ]
            )
            == 0
        )
        assert "emb: 1000 x 8 float32, adam lr=0.01" in capsys.readouterr().out
        assert main(["tables", "--json", *address]) == 0
        tables = json.loads(capsys.readouterr().out)["tables"]
        assert [t["name"] for t in tables] == ["emb"]
        # Flags also come from ENGRAM_STORE_* variables.
        monkeypatch.setenv("ENGRAM_STORE_ADDRESS", daemon.address)
        assert main(["describe", "emb", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["dim"] == 8
        assert main(["checkpoint"]) == 0
        assert "checkpoint 1 (full, " in capsys.readouterr().out
        assert main(["checkpoints", "--json"]) == 0
        [shard] = json.loads(capsys.readouterr().out)["shards"]
        assert shard["checkpoints"][0]["id"] == 1
        assert main(["restore"]) == 0
        assert "restored checkpoint 1" in capsys.readouterr().out
        assert main(["stats"]) == 0
        assert "  emb: 0 lookups" in capsys.readouterr().out
        assert main(["describe", "missing"]) == EXIT_FAILURE
        assert main(["create-table", "emb", "--rows", "5", "--dim", "2"]) == EXIT_FAILURE


def test_a_port_in_use_is_a_startup_failure(tmp_path: Path) -> None:
    with daemon_process(tmp_path / "first") as (daemon, _):
        port = daemon.address.rsplit(":", 1)[1]
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "engram_cli",
                "serve",
                "--data-dir",
                str(tmp_path / "second"),
                "--port",
                port,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert second.returncode == EXIT_STARTUP_FAILURE
    assert "cannot listen on 127.0.0.1:" in second.stderr


def test_engine_threads_can_be_limited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with daemon_process(tmp_path / "data", "--threads", "1") as (daemon, _):
        assert (
            main(
                ["create-table", "t", "--rows", "100000", "--dim", "4", "--address", daemon.address]
            )
            == 0
        )
        assert "t: 100000 x 4" in capsys.readouterr().out
    with pytest.raises(ValueError, match="threads must be positive"):
        _native.set_thread_count(0)
