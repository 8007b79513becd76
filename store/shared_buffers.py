"""Which shared buffers the daemon agrees to open for same-machine clients.

A client names a file; the daemon would write rows into it, so it must be unable to name
anything but a buffer made for this: a regular file (no symbolic link) directly inside the
shared-buffer directory, named `engram-*`, owned by the daemon's own user, and allocated
whole (not sparse: on a full tmpfs, the first write to a missing page is a SIGBUS). A buffer refused
for any of these reasons gets FAILED_PRECONDITION (this daemon cannot share memory with that
client, which then sends its rows in messages); a buffer too small for the request is the
client's error, INVALID_ARGUMENT.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import TracebackType

from store._proto.engram.store.v1 import store_pb2 as pb
from store.errors import FailedPreconditionError

PREFIX = "engram-"


@contextmanager
def open_buffer(buffer: pb.SharedBuffer, root: str | None) -> Iterator[int]:
    """Yields a read-write file descriptor of the checked buffer, closed afterwards (the
    engine keeps one mapping per buffer for both directions)."""
    if not root:
        raise FailedPreconditionError("this daemon does not accept shared buffers")
    path = buffer.path
    if os.path.dirname(path) != os.path.abspath(root) or not os.path.basename(path).startswith(
        PREFIX
    ):
        raise FailedPreconditionError(
            f"shared buffer must be a file named {PREFIX}* directly in {root}, got {path!r}"
        )
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise FailedPreconditionError(
            f"cannot open shared buffer {path!r}: {error.strerror}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FailedPreconditionError(f"shared buffer {path!r} is not a regular file")
        if info.st_uid != os.getuid():
            raise FailedPreconditionError(
                f"shared buffer {path!r} is not owned by the daemon's user"
            )
        if info.st_blocks * 512 < info.st_size:
            # A page of a sparse file on a full tmpfs cannot be backed when it is first
            # written: the write would kill the daemon with SIGBUS.
            raise FailedPreconditionError(
                f"shared buffer {path!r} is sparse; allocate it whole (posix_fallocate)"
            )
        yield fd
    finally:
        os.close(fd)


class RequestBuffers:
    """The shared buffers of one request, each file opened (and checked) once: keys and rows
    usually share a file. Closed when the request is done."""

    def __init__(self, root: str | None) -> None:
        self.root = root
        self._files = ExitStack()
        self._fds: dict[str, int] = {}

    def fd(self, buffer: pb.SharedBuffer) -> int:
        if buffer.path not in self._fds:
            self._fds[buffer.path] = self._files.enter_context(open_buffer(buffer, self.root))
        return self._fds[buffer.path]

    def __enter__(self) -> RequestBuffers:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._files.close()
