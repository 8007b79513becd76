"""A store daemon on this machine, started and stopped by the calling program (examples,
benchmarks, tests, and single-machine training)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from types import TracebackType


class LocalDaemon:
    """`engram-store serve` in a subprocess on a free loopback port.

    A context manager: entering starts the daemon and waits until it listens; leaving stops
    it with SIGTERM (a clean shutdown that flushes every table) and raises if it did not
    exit cleanly. `address` is where it listens. Its log goes to this process's stderr, or
    is appended to `log_file`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *extra_args: str,
        log_level: str = "INFO",
        threads: int | None = None,
        start_timeout_s: float = 60,
        log_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = os.fspath(data_dir)
        self.extra_args = extra_args
        self.log_level = log_level
        self.threads = threads
        self.start_timeout_s = start_timeout_s
        self.log_file = None if log_file is None else os.fspath(log_file)
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> LocalDaemon:
        with tempfile.TemporaryDirectory() as tmp:
            port_file = os.path.join(tmp, "port")
            log = None if self.log_file is None else open(self.log_file, "ab")  # noqa: SIM115
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "engram_cli",
                    "--log-level",
                    self.log_level,
                    "serve",
                    *(["--threads", str(self.threads)] if self.threads else []),
                    "--data-dir",
                    self.data_dir,
                    "--port",
                    "0",
                    "--port-file",
                    port_file,
                    *self.extra_args,
                ],
                stderr=log,
            )
            if log is not None:
                log.close()  # the daemon holds its own copy
            seen_in = "" if self.log_file is None else f" (its log: {self.log_file})"
            deadline = time.monotonic() + self.start_timeout_s
            while not os.path.exists(port_file):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"engram-store serve exited with status {self.process.returncode}" + seen_in
                    )
                if time.monotonic() > deadline:
                    self.process.kill()
                    raise TimeoutError("engram-store serve did not start listening" + seen_in)
                time.sleep(0.02)
            with open(port_file) as f:
                self.address = f"127.0.0.1:{f.read()}"
        return self

    def stop(self, timeout_s: float = 60) -> int:
        """Stops the daemon with SIGTERM (SIGKILL after `timeout_s`); returns its status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> LocalDaemon:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        status = self.stop()
        if kind is None and status != 0:
            raise RuntimeError(f"engram-store serve exited with status {status}")
