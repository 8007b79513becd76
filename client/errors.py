"""The client's exceptions: the store's exception kinds (`store.errors`, one tree rooted in
`StoreError`), raised with the daemon's message and the address of the shard that
answered. Each status code maps to its kind through the store's one mapping."""

from __future__ import annotations

from typing import Any

import grpc

from store.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    StepFailedError,
    StoreError,
    UnauthenticatedError,
    UnavailableError,
    kind_of,
)


class EngramClientError(StoreError):
    """A failed call: the base of the client's errors, which are `StoreError`s."""

    def __init__(self, message: str, address: str = "", code: grpc.StatusCode | None = None):
        super().__init__(f"{address}: {message}" if address else message)
        self.message = message
        self.address = address
        self.code = code

    def __reduce__(self) -> tuple[type[EngramClientError], tuple[str, str, Any]]:
        # Pickled whole (worker processes hand errors back), not from `args` alone.
        return type(self), (self.message, self.address, self.code)


class ShardUnavailableError(EngramClientError, UnavailableError):
    """A daemon did not answer in time, even after retries."""


class TableNotFoundError(EngramClientError, NotFoundError):
    """The table (or checkpoint) does not exist."""


class TableExistsError(EngramClientError, AlreadyExistsError):
    """A table of that name already exists."""


class InvalidRequestError(EngramClientError, InvalidArgumentError):
    """The daemon refused the request as malformed (bad shape, dtype, config...)."""


class KeyOutOfRangeError(EngramClientError, OutOfRangeError):
    """A key outside the table."""


class RequestTooLargeError(EngramClientError, ResourceExhaustedError):
    """The request exceeds the daemon's limits, or the daemon has no room for it."""


class PreconditionFailedError(EngramClientError, FailedPreconditionError):
    """The request cannot apply to the daemon's state now (e.g. a shared buffer it refuses)."""


class DataParallelStepError(EngramClientError, StepFailedError):
    """A data-parallel step failed: not every rank pushed it in time; nothing was applied."""


class TokenRefusedError(EngramClientError, UnauthenticatedError):
    """The daemon needs a valid token and this client sent none, or another."""


class NotPermittedError(EngramClientError, PermissionDeniedError):
    """The client's token does not allow the call (a change by a read-only token)."""


# Each store kind's client kind (its second base).
_CLIENT_KIND: dict[type[StoreError], type[EngramClientError]] = {
    kind.__bases__[1]: kind
    for kind in (
        ShardUnavailableError,
        TableNotFoundError,
        TableExistsError,
        InvalidRequestError,
        KeyOutOfRangeError,
        RequestTooLargeError,
        PreconditionFailedError,
        DataParallelStepError,
        TokenRefusedError,
        NotPermittedError,
    )
}


def from_rpc_error(error: grpc.RpcError, address: str) -> EngramClientError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    name = code.name if code is not None else "UNKNOWN"
    kind = _CLIENT_KIND.get(kind_of(name), EngramClientError)
    return kind(f"{name}: {details}", address, code)
