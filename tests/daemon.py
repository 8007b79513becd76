"""Running store daemons for tests: in a thread of the test process, or as a subprocess
that can be killed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from client.security import Security
from store._proto.engram.store.v1 import store_pb2_grpc as pb_grpc
from store.config import ServeConfig
from store.server import serve


@dataclass
class Daemon:
    address: str
    data_dir: Path
    stub: pb_grpc.EngramStoreStub
    channel: grpc.Channel


def _wait_for_port(port_file: Path, alive: Callable[[], bool], timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if not alive():
            raise RuntimeError("daemon exited before listening")
        time.sleep(0.02)
    raise TimeoutError("daemon did not start listening")


def local_channel(address: str) -> grpc.Channel:
    """A plaintext channel to a daemon on this machine, sending the token it published for
    this user (store/local_token.py), as every client does by default."""
    channel = grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_receive_message_length", 512 << 20),
            ("grpc.max_send_message_length", 512 << 20),
        ],
    )
    return grpc.intercept_channel(channel, *Security().interceptors(address))


def _connect(port: int, data_dir: Path) -> Daemon:
    address = f"127.0.0.1:{port}"
    channel = local_channel(address)
    return Daemon(address, data_dir, pb_grpc.EngramStoreStub(channel), channel)


@contextmanager
def daemon_thread(data_dir: Path, **overrides: object) -> Iterator[Daemon]:
    """A daemon serving in a background thread; stopped gracefully on exit."""
    port_file = data_dir.parent / f"{data_dir.name}.port"
    port_file.unlink(missing_ok=True)
    settings: dict[str, object] = {"flush_interval_s": 0, "grace_s": 5, **overrides}
    config = ServeConfig(
        data_dir=str(data_dir),
        port=0,
        port_file=str(port_file),
        **settings,  # type: ignore[arg-type]
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve(config, stop)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        d = _connect(_wait_for_port(port_file, thread.is_alive), data_dir)
    except RuntimeError:
        raise errors[0] if errors else RuntimeError("daemon failed") from None
    try:
        yield d
    finally:
        d.channel.close()
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "daemon did not stop"
        if errors:
            raise errors[0]


def serve_command(data_dir: Path, port_file: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "engram_cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--flush-interval",
        "0",
        *extra,
    ]


@contextmanager
def daemon_process(
    data_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    wrapper: Sequence[str] = (),
) -> Iterator[tuple[Daemon, subprocess.Popen[bytes]]]:
    """`engram-store serve` in a subprocess (killable); terminated on exit. `env` adds to
    the environment; `wrapper` runs the command through another (e.g. setpriv). Its log
    goes to `<data_dir>.log` beside the data directory (a pipe nobody reads would block a
    daemon that logs much)."""
    port_file = data_dir.parent / f"{data_dir.name}.port"
    port_file.unlink(missing_ok=True)
    with open(data_dir.parent / f"{data_dir.name}.log", "ab") as log:
        process = subprocess.Popen(
            [*wrapper, *serve_command(data_dir, port_file, *extra)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    try:
        d = _connect(_wait_for_port(port_file, lambda: process.poll() is None), data_dir)
        try:
            yield d, process
        finally:
            d.channel.close()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
