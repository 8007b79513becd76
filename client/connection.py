"""Channels to store daemons, and calls that retry what is safe to retry.

Every channel is built here: message limits raised for large row payloads, keep-alive on,
gRPC's own retries off (this module retries, so pushes keep their idempotency keys).
Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED) are retried with exponential backoff
until the call's deadline; everything else surfaces at once as the client's exception.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from client.errors import PreconditionFailedError, ShardUnavailableError, from_rpc_error
from client.security import Security
from store import _native
from store._proto.engram.store.v1 import store_pb2 as pb
from store._proto.engram.store.v1 import store_pb2_grpc as pb_grpc
from store.spec import is_integer, is_seconds

MAX_MESSAGE_BYTES = 512 << 20
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between attempts: `initial_backoff_s` doubling up to `max_backoff_s`, with
    jitter, for at most `max_attempts` attempts within the call's deadline."""

    max_attempts: int = 6
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if not is_integer(self.max_attempts):
            raise ValueError(f"max_attempts must be an integer, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("initial_backoff_s", "max_backoff_s"):
            check_seconds(name, getattr(self, name), zero_allowed=True)


def check_seconds(name: str, value: object, zero_allowed: bool = False) -> None:
    if not is_seconds(value, zero_allowed):
        bound = ">= 0" if zero_allowed else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


def open_channel(address: str, security: Security | None = None) -> grpc.Channel:
    """A channel to one daemon, the same for every caller (the client, the CLI): TLS when
    `security` names a CA, plaintext otherwise (its token goes in through interceptors)."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.enable_retries", 0),
    ]
    credentials = security.channel_credentials() if security is not None else None
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)


@dataclass(frozen=True)
class RowsView:
    """A lookup chunk's rows: `data` views them inside the received message (no copy)."""

    dtype: str
    shape: list[int]
    data: memoryview


@dataclass(frozen=True)
class LookupChunk:
    """A `LookupResponse` as the client reads it: its fields, and its rows left in place."""

    offset: int
    total_rows: int
    rows: RowsView
    result_shape: list[int]
    in_shared_buffer: bool


def read_lookup_chunk(message: bytes) -> LookupChunk:
    """Decodes a serialised `LookupResponse` without copying its rows (protobuf's decoder
    would copy them into the message, and again into a `bytes` on access)."""
    offset, total, dtype, shape, result_shape, shared, start, end = _native.parse_lookup_chunk(
        message
    )
    rows = RowsView(dtype, shape, memoryview(message)[start:end])
    return LookupChunk(offset, total, rows, result_shape, shared)


class Shard:
    """One daemon: its channel, stub and address."""

    def __init__(
        self,
        address: str,
        timeout_s: float,
        retry: RetryPolicy,
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
        security: Security | None = None,
    ) -> None:
        check_seconds("timeout_s", timeout_s)
        self.address = address
        self.timeout_s = timeout_s
        self.retry = retry
        self.channel = open_channel(address, security)
        self.closed = False
        # The caller's interceptors outermost: they see each call as the caller made it, and
        # the token is added last.
        interceptors = [*interceptors, *(security or Security()).interceptors(address)]
        channel = (
            grpc.intercept_channel(self.channel, *interceptors) if interceptors else self.channel
        )
        self.stub = pb_grpc.EngramStoreStub(channel)
        # The streamed lookups, answered with rows read in place (see `read_lookup_chunk`).
        service = pb.DESCRIPTOR.services_by_name["EngramStore"].full_name
        self.lookup = channel.unary_stream(
            f"/{service}/Lookup",
            request_serializer=pb.LookupRequest.SerializeToString,
            response_deserializer=read_lookup_chunk,
        )
        self.lookup_tokens = channel.unary_stream(
            f"/{service}/LookupTokens",
            request_serializer=pb.LookupTokensRequest.SerializeToString,
            response_deserializer=read_lookup_chunk,
        )

    def call(self, attempt: Callable[[float], T], waits_s: float = 0.0) -> T:
        """Runs `attempt(timeout)` until it succeeds, fails for good, or the deadline passes:
        the shard's timeout, plus `waits_s` for a call that waits on others by design (a
        data-parallel step waiting for its ranks)."""
        if self.closed:
            raise PreconditionFailedError("this client is closed", self.address)
        deadline = time.monotonic() + self.timeout_s + waits_s
        backoff = self.retry.initial_backoff_s
        for number in range(1, self.retry.max_attempts + 1):
            remaining = deadline - time.monotonic()
            try:
                return attempt(max(remaining, 0.001))
            except grpc.RpcError as error:
                transient = error.code() in RETRYABLE
                remaining = deadline - time.monotonic()
                if not transient:
                    raise from_rpc_error(error, self.address) from None
                if number == self.retry.max_attempts or remaining <= backoff:
                    raise ShardUnavailableError(
                        f"no answer after {number} attempts in {self.timeout_s:.1f} s "
                        f"({error.code().name}: {error.details()})",
                        self.address,
                        error.code(),
                    ) from None
                time.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, self.retry.max_backoff_s)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.closed = True
        self.channel.close()
