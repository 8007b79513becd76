"""The client's exceptions: what a failed store call means, with the daemon's message and
the address of the shard that answered."""

from __future__ import annotations

import grpc


class EngramClientError(Exception):
    """Base class of the client's errors."""

    def __init__(self, message: str, address: str = "", code: grpc.StatusCode | None = None):
        super().__init__(f"{address}: {message}" if address else message)
        self.address = address
        self.code = code


class ShardUnavailableError(EngramClientError):
    """A daemon did not answer in time, even after retries."""


class TableNotFoundError(EngramClientError, KeyError):
    """The table (or checkpoint) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TableExistsError(EngramClientError):
    """A table of that name already exists."""


class InvalidRequestError(EngramClientError, ValueError):
    """The daemon refused the request as malformed (bad shape, dtype, config...)."""


class KeyOutOfRangeError(EngramClientError, IndexError):
    """A key outside the table."""


class RequestTooLargeError(EngramClientError):
    """The request exceeds the daemon's limits."""


_BY_CODE: dict[grpc.StatusCode, type[EngramClientError]] = {
    grpc.StatusCode.NOT_FOUND: TableNotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: TableExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: KeyOutOfRangeError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RequestTooLargeError,
    grpc.StatusCode.UNAVAILABLE: ShardUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ShardUnavailableError,
}


def from_rpc_error(error: grpc.RpcError, address: str) -> EngramClientError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    kind = _BY_CODE.get(code, EngramClientError) if code is not None else EngramClientError
    name = code.name if code is not None else "UNKNOWN"
    return kind(f"{name}: {details}", address, code)
