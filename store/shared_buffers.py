"""Which shared buffers the daemon agrees to open for same-machine clients.

A client names a file and the daemon reads and writes it with its own rights, so it must
never do that for a client who could not: otherwise any local user could have the daemon
read or overwrite the daemon user's files (a confused deputy). A buffer is used only if it
is a regular file (no symbolic link) directly inside the shared-buffer directory, named
`engram-*`, owned by the daemon's own user, with a single link (no hard link to another
file), allocated whole (not sparse: on a full tmpfs the first write to a missing page is a
SIGBUS), and if its header holds the token the request carries: 16 random bytes that its
creator wrote there, which only someone able to read the file can know. Requests name
ranges after the header, so the token is never overwritten or sent back. A buffer refused
for any of these reasons gets FAILED_PRECONDITION (this daemon cannot share memory with
that client, which then sends its rows in messages) and is neither read nor written beyond
its header; a buffer too small for the request is the client's error, INVALID_ARGUMENT.
"""

from __future__ import annotations

import hmac
import os
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import TracebackType

from store import _native
from store.errors import FailedPreconditionError, InvalidArgumentError
from store.requests import SharedRange

PREFIX = "engram-"
# The header (magic, token, padding to a cache line); requests name bytes after it.
MAGIC = _native.BUFFER_MAGIC
TOKEN_BYTES = _native.BUFFER_TOKEN_BYTES
HEADER_BYTES = _native.BUFFER_HEADER_BYTES


@contextmanager
def open_buffer(buffer: SharedRange, root: str | None) -> Iterator[int]:
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
        if info.st_nlink != 1:
            raise FailedPreconditionError(
                f"shared buffer {path!r} has {info.st_nlink} links; a buffer has exactly one"
            )
        if info.st_blocks * 512 < info.st_size:
            # A page of a sparse file on a full tmpfs cannot be backed when it is first
            # written: the write would kill the daemon with SIGBUS.
            raise FailedPreconditionError(
                f"shared buffer {path!r} is sparse; allocate it whole (posix_fallocate)"
            )
        header = os.pread(fd, len(MAGIC) + TOKEN_BYTES, 0)
        token_ok = hmac.compare_digest(header[len(MAGIC) :], buffer.token)
        if header[: len(MAGIC)] != MAGIC or len(buffer.token) != TOKEN_BYTES or not token_ok:
            raise FailedPreconditionError(
                f"shared buffer {path!r} does not hold the request's token: only its creator "
                "may name it"
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
        # Keyed by path and token: each naming of a file proves its own token.
        self._fds: dict[tuple[str, bytes], int] = {}

    def region(self, buffer: SharedRange) -> _native.SharedRegion:
        """The range `buffer` names, checked, for the engine to read or write in place."""
        return _native.SharedRegion(self._fd(buffer), buffer.path, buffer.offset)

    def read(self, buffer: SharedRange, nbytes: int) -> bytes:
        """`nbytes` of the range `buffer` names, checked (fewer where the file ends first)."""
        return os.pread(self._fd(buffer), nbytes, buffer.offset)

    def _fd(self, buffer: SharedRange) -> int:
        if buffer.offset < HEADER_BYTES:
            raise InvalidArgumentError(
                f"shared buffer ranges start after its {HEADER_BYTES}-byte header, got offset "
                f"{buffer.offset}"
            )
        key = (buffer.path, buffer.token)
        if key not in self._fds:
            self._fds[key] = self._files.enter_context(open_buffer(buffer, self.root))
        return self._fds[key]

    def __enter__(self) -> RequestBuffers:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._files.close()
