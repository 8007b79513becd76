"""The one exception tree of Engram Store, and the one mapping of its exceptions to gRPC
status codes.

Every error the store or its client raises derives from `StoreError` (defined by the Rust
engine with the kinds it raises itself, so its own errors are part of the tree), and the
kinds users test for also derive from the builtin Python users expect (`ValueError`,
`IndexError`, `KeyError`). The server
answers each kind with its `status` and the client raises the same kind again from that
status: both read `STATUS_OF_KIND`, so the two sides cannot drift apart. The client
imports this module, the protocol's other half, beside `_native` and `_proto`.
"""

from __future__ import annotations

import errno

from store._native import InvalidArgumentError, OutOfRangeError, StoreError, TableFormatError


class NotFoundError(StoreError, KeyError):
    """A table or checkpoint that does not exist (NOT_FOUND)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AlreadyExistsError(StoreError):
    """A table that already exists (ALREADY_EXISTS)."""


class ResourceExhaustedError(StoreError):
    """A request larger than the server accepts, or no room for it (RESOURCE_EXHAUSTED)."""


class FailedPreconditionError(StoreError):
    """A request that cannot apply to the current state (FAILED_PRECONDITION)."""


class StepFailedError(StoreError):
    """A step-synchronous push whose step failed: not every rank pushed it in time, and
    nothing of it was applied (ABORTED)."""


class UnauthenticatedError(StoreError):
    """A call without a valid token, to a daemon that needs one (UNAUTHENTICATED)."""


class PermissionDeniedError(StoreError):
    """A call the caller's token does not allow: a change by a read-only token
    (PERMISSION_DENIED)."""


class UnavailableError(StoreError):
    """No answer from a daemon in time (UNAVAILABLE, DEADLINE_EXCEEDED)."""


__all__ = [
    "STATUS_OF_KIND",
    "AlreadyExistsError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "StepFailedError",
    "StoreError",
    "TableFormatError",
    "UnauthenticatedError",
    "UnavailableError",
    "kind_of",
    "status_of",
]

# Status code names (grpc.StatusCode member names), most specific kind first.
STATUS_OF_KIND: list[tuple[type[BaseException], str]] = [
    (NotFoundError, "NOT_FOUND"),
    (AlreadyExistsError, "ALREADY_EXISTS"),
    (OutOfRangeError, "OUT_OF_RANGE"),
    (InvalidArgumentError, "INVALID_ARGUMENT"),
    (ResourceExhaustedError, "RESOURCE_EXHAUSTED"),
    (FailedPreconditionError, "FAILED_PRECONDITION"),
    (StepFailedError, "ABORTED"),
    (UnauthenticatedError, "UNAUTHENTICATED"),
    (PermissionDeniedError, "PERMISSION_DENIED"),
    (UnavailableError, "UNAVAILABLE"),
    (TableFormatError, "DATA_LOSS"),
    # Builtins the engine raises for bad input, answered as their store kinds are.
    (IndexError, "OUT_OF_RANGE"),
    (ValueError, "INVALID_ARGUMENT"),
    (TypeError, "INVALID_ARGUMENT"),
    (OverflowError, "INVALID_ARGUMENT"),
    (MemoryError, "RESOURCE_EXHAUSTED"),
]
# Operating-system errors a request can meet that are no bug of the daemon's.
_EXHAUSTED_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EFBIG)
# A data directory that cannot be written (a read-only mount, lost permissions): the
# request cannot be served as things stand, and is refused with the operating system's words.
_UNWRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def status_of(error: BaseException) -> str | None:
    """The status code name a request failing with `error` is answered with (None: a bug,
    answered INTERNAL)."""
    if isinstance(error, OSError) and error.errno in _EXHAUSTED_ERRNOS:
        return "RESOURCE_EXHAUSTED"
    if isinstance(error, OSError) and error.errno in _UNWRITABLE_ERRNOS:
        return "FAILED_PRECONDITION"
    return next((code for kind, code in STATUS_OF_KIND if isinstance(error, kind)), None)


def kind_of(status: str) -> type[StoreError]:
    """The store exception kind of a status code name (`StoreError` for the others)."""
    if status == "DEADLINE_EXCEEDED":
        return UnavailableError
    for kind, code in STATUS_OF_KIND:
        if code == status and issubclass(kind, StoreError):
            return kind
    return StoreError
