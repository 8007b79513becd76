"""Row payloads through shared memory, for daemons on the same machine.

A daemon on this machine can read keys and pushed gradients in place from a file that the
client has mapped, and write looked-up rows straight into it, so the bulk bytes skip gRPC's
socket, framing and copies; the messages carry paths, shapes and dtypes. The files live in
the daemon's shared-buffer directory (`/dev/shm` by default), named `engram-<pid>-<random>`,
and are reused call after call (the daemon keeps them mapped too). Each file starts with a
header holding a random token that requests repeat, so that the daemon can tell its creator
from anyone else naming it (store/shared_buffers.py). A daemon that cannot use them (another
machine or container, another user, shared buffers turned off) answers FAILED_PRECONDITION,
and the client falls back to messages for that daemon.
"""

from __future__ import annotations

import ipaddress
import mmap
import os
import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import numpy as np

from store import _native
from store._proto.engram.store.v1 import store_pb2 as pb

HEADER_BYTES = _native.BUFFER_HEADER_BYTES
MAGIC = _native.BUFFER_MAGIC
TOKEN_BYTES = _native.BUFFER_TOKEN_BYTES

DEFAULT_DIRECTORY = "/dev/shm"
_PREFIX = "engram-"


def is_local(address: str) -> bool:
    """Whether `address` ("host:port", "[v6]:port" or "unix:...") is on this machine."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


class SharedBuffer:
    """One file in the shared-buffer directory, mapped read-write; offsets count from the end
    of its header."""

    def __init__(self, directory: str, nbytes: int) -> None:
        self.capacity = max(nbytes, mmap.PAGESIZE - HEADER_BYTES)
        self.token = os.urandom(TOKEN_BYTES)
        name = f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        # Absolute: the daemon accepts only files directly in its (absolute) directory.
        self.path = os.path.join(os.path.abspath(directory), name)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            # Every page reserved now: a full tmpfs fails here (ENOSPC), not as a SIGBUS at
            # the first write into the mapping.
            os.posix_fallocate(fd, 0, HEADER_BYTES + self.capacity)
            self._map = mmap.mmap(fd, HEADER_BYTES + self.capacity)
            self._map[: len(MAGIC) + TOKEN_BYTES] = MAGIC + self.token
        except BaseException:
            _unlink(self.path)
            raise
        finally:
            os.close(fd)
        # The file goes when the buffer does, even if close() is never called.
        self._finalizer = weakref.finalize(self, _unlink, self.path)

    def message(self, offset: int = 0) -> pb.SharedBuffer:
        return pb.SharedBuffer(path=self.path, offset=HEADER_BYTES + offset, token=self.token)

    def view(self, dtype: np.dtype, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
        """The bytes from `offset` as an array (valid until the buffer is closed)."""
        count = int(np.prod(shape))
        return np.frombuffer(self._map, dtype, count, HEADER_BYTES + offset).reshape(shape)

    def close(self) -> None:
        self._finalizer()
        # An array still viewing the mapping keeps it; it is unmapped once that array goes.
        with suppress(BufferError):
            self._map.close()


def aligned(nbytes: int) -> int:
    """`nbytes` rounded up to a cache line: where the next region of a buffer starts."""
    return -(-nbytes // 64) * 64


class SharedBufferPool:
    """Buffers lent out one caller at a time (calls run concurrently), grown on demand. Those
    over `keep_bytes` are removed after use rather than kept: /dev/shm is memory."""

    def __init__(self, directory: str = DEFAULT_DIRECTORY, keep_bytes: int = 1 << 30) -> None:
        self.directory = directory
        self.keep_bytes = keep_bytes
        self._free: list[SharedBuffer] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def lease(self, nbytes: int) -> Iterator[SharedBuffer]:
        """A buffer of at least `nbytes`, for the caller alone until the block ends."""
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is not None and buffer.capacity < nbytes:
            buffer.close()
            buffer = None
        if buffer is None:
            # Room to grow: batches vary in size, and each new file costs a mapping here and
            # in the daemon.
            buffer = SharedBuffer(self.directory, nbytes + nbytes // 4)
        try:
            yield buffer
        finally:
            with self._lock:
                keep = not self._closed and buffer.capacity <= self.keep_bytes
                if keep:
                    self._free.append(buffer)
            if not keep:
                buffer.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for buffer in free:
            buffer.close()
