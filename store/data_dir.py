"""The daemon's data directory: its layout, its lock, and durable file operations."""

from __future__ import annotations

import errno
import fcntl
import os
from typing import IO

from store.errors import FailedPreconditionError

CATALOG = "catalog.lmdb"
TABLES = "tables"
JOURNAL = "journal.engram"
LOCK = "LOCK"
RESTORE_INTENT = "restore-intent.json"
RESTORE_STAGING = ".restore-staging"
RESTORE_RETIRED = ".restore-retired"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str, data: bytes) -> None:
    """Writes `path` whole or not at all, surviving a crash once this returns."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def lock(data_dir: str) -> IO[bytes]:
    """Holds the data directory for this process: a second daemon on it fails here, naming
    the holder. The lock (flock on LOCK) goes with the process however it ends, kill -9
    included, so it is never stale; the pid written in the file only names the holder."""
    path = os.path.join(data_dir, LOCK)
    handle = open(path, "a+b")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.seek(0)
        holder = handle.read(32).decode(errors="replace").strip() or "unknown"
        handle.close()
        if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise FailedPreconditionError(
                f"another daemon (pid {holder}) is using data directory {data_dir}; "
                "stop it first, or give this one another --data-dir"
            ) from None
        raise
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle


def boot_id() -> str:
    """This boot of the machine: a crash of the daemon keeps it, a crash of the machine (which
    loses the page cache and with it writes not yet on disk) does not."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"
