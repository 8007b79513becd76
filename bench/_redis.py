"""What users would otherwise reach for: a real `redis-server` (from the OS packages) on
loopback, rows stored as binary strings under their 8-byte keys, read by pipelined `MGET`
with redis-py (and hiredis's parser where installed)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Any

import numpy as np

KEYS_PER_COMMAND = 10_000


class RedisServer:
    """A private `redis-server` on a free loopback port, without persistence, stopped on
    exit."""

    def __init__(self, executable: str = "redis-server") -> None:
        path = shutil.which(executable)
        if path is None:
            raise FileNotFoundError(
                f"{executable} is not installed (Debian/Ubuntu: apt-get install redis-server); "
                "pass --skip-redis to measure without it"
            )
        import redis

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.directory = tempfile.mkdtemp(prefix="engram-bench-redis-")
        self.process = subprocess.Popen(
            [path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.directory],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def store_rows(self, rows: np.ndarray) -> None:
        """Row i under the key i (8 bytes, little-endian)."""
        for start in range(0, len(rows), KEYS_PER_COMMAND):
            chunk = rows[start : start + KEYS_PER_COMMAND]
            keys = np.arange(start, start + len(chunk), dtype="<u8")
            self.client.mset({k.tobytes(): r.tobytes() for k, r in zip(keys, chunk, strict=True)})

    def lookup(self, keys: np.ndarray, out: np.ndarray) -> None:
        """Rows of `keys` into `out`, in pipelined MGETs of 10k keys."""
        pipe = self.client.pipeline(transaction=False)
        flat = keys.astype("<u8")
        for start in range(0, len(flat), KEYS_PER_COMMAND):
            pipe.mget([k.tobytes() for k in flat[start : start + KEYS_PER_COMMAND]])
        values: list[Any] = [v for answer in pipe.execute() for v in answer]
        out.reshape(-1)[:] = np.frombuffer(b"".join(values), out.dtype)

    def close(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def redis_parser() -> str:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return "python"
    return "hiredis"
