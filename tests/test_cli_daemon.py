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

from engram_cli import EXIT_FAILURE, EXIT_STARTUP_FAILURE, EXIT_USAGE, main
from store import _native
from store.config import ConfigError, ServeConfig
from store.local_token import RUNTIME_DIR_VARIABLE


def test_serve_with_no_arguments_uses_the_defaults_and_stops_cleanly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "serve"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        # Only where the test run's daemons publish their local tokens is kept.
        env={
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ENGRAM_STORE_") or k == RUNTIME_DIR_VARIABLE
        },
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
        assert main(["restore", "--yes"]) == 0
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
    # One line, naming the port, and nothing created (it used to print grpc's add_port.cc
    # line and leave LOCK, the catalog, the journal and tables/ behind).
    assert second.stderr.strip().endswith(f"port {port} on 127.0.0.1 is in use")
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert not (tmp_path / "second").exists()


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


BAD_SERVE_FLAGS = {
    # A port beyond 65535 bound that port modulo 65536 (70000 -> 4464).
    ("--port", "70000"): "--port must be from 0 to 65535, got 70000",
    ("--port", "-1"): "--port must be from 0 to 65535, got -1",
    ("--metrics-port", "65536"): "--metrics-port must be from 0 to 65535",
    ("--workers", "0"): "--workers must be at least 1, got 0",
    ("--max-concurrent-requests", "0"): "--max-concurrent-requests must be at least 1",
    ("--max-lookup-rows", "-5"): "--max-lookup-rows must be at least 1, got -5",
    ("--max-pending-step-bytes", "-1"): "--max-pending-step-bytes must be at least 1",
    ("--max-tables", "0"): "--max-tables must be at least 1, got 0",
    ("--threads", "-2"): "--threads must be at least 0, got -2",
    ("--max-message-bytes", "10"): "--max-message-bytes must be from 131072 to 2147483647",
    ("--max-message-bytes", str(1 << 31)): "--max-message-bytes must be from 131072",
    ("--grace", "nan"): "--grace must be a finite number of seconds >= 0, got nan",
    ("--flush-interval", "-1"): "--flush-interval must be a finite number of seconds >= 0",
    # Crashed with OverflowError: timestamp out of range.
    ("--flush-interval", "inf"): "--flush-interval must be a finite number of seconds >= 0",
    ("--follow-wait", "-3"): "--follow-wait must be a finite number of seconds >= 0",
    ("--restore", "abc"): "--restore must be 'latest' or a checkpoint id, got 'abc'",
    ("--host", ""): "--host must not be empty",
    # Accepted, then a warning every few seconds that catching up failed.
    ("--follow", "leader"): "--follow must be the leader's HOST:PORT, got 'leader'",
    ("--follow", "leader:0"): "--follow must be the leader's HOST:PORT",
}


@pytest.mark.parametrize("flag", BAD_SERVE_FLAGS)
def test_a_serve_flag_out_of_range_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: tuple[str, str]
) -> None:
    data = tmp_path / "data"
    assert main(["serve", "--data-dir", str(data), "--port", "0", *flag]) == EXIT_USAGE
    assert BAD_SERVE_FLAGS[flag] in capsys.readouterr().err
    assert not data.exists()


def test_serve_settings_are_checked_when_made() -> None:
    with pytest.raises(ConfigError, match="max_lookup_rows must be at least 1, got 0") as bad:
        ServeConfig(max_lookup_rows=0)
    assert bad.value.field == "max_lookup_rows"
    with pytest.raises(ConfigError, match=r"workers must be an integer, got 2\.5"):
        ServeConfig(workers=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="port must be an integer, got True"):
        ServeConfig(port=True)
    assert ServeConfig(port=0, threads=0, flush_interval_s=0, max_message_bytes=1 << 17)
