"""Who may call the daemon: bearer tokens, checked by a server interceptor.

Tokens come from a file (`serve --auth-tokens FILE`) or from the variable
`ENGRAM_STORE_SERVE_TOKENS` (the same text), one per line, each with its role:

    read-write  6f1c0c2e...   # every call
    read-only   9b41d7aa...   # lookups and descriptions only

Blank lines and `#` comments are ignored. A call without a valid token (the
`authorization: Bearer TOKEN` metadata) is answered `UNAUTHENTICATED`; a read-only token
calling anything that changes the store (pushes, creating, tuning, dropping, importing,
checkpoints, restores) gets `PERMISSION_DENIED`. Tokens are compared in constant time, each
against every token known. The health service stays open, for probes.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health

from store.errors import InvalidArgumentError

TOKENS_VARIABLE = "ENGRAM_STORE_SERVE_TOKENS"
ROLES = ("read-write", "read-only")
# The EngramStore methods a read-only token may call; and `Batch` without pushes (the
# lookups of same-machine clients travel in one).
READ_ONLY_METHODS = frozenset(
    {
        "Lookup",
        "LookupTokens",
        "ListTables",
        "DescribeTable",
        "ListCheckpoints",
        "Stats",
        "Verify",
        "ChangedRows",
    }
)
LOOKUPS_ONLY_METHODS = frozenset({"Batch"})
OPEN_SERVICES = frozenset({health.SERVICE_NAME})
# Tokens shorter than this are refused: they could be guessed.
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Tokens:
    entries: tuple[tuple[bytes, str], ...]

    @staticmethod
    def parse(text: str, source: str) -> Tokens:
        """Tokens from `text` (lines of `ROLE TOKEN`); errors name `source` and the line."""
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 2 or words[0] not in ROLES:
                raise InvalidArgumentError(
                    f"{source}:{number}: expected `ROLE TOKEN` with ROLE one of {ROLES}"
                )
            if len(words[1]) < MIN_TOKEN_CHARS:
                raise InvalidArgumentError(
                    f"{source}:{number}: a token needs at least {MIN_TOKEN_CHARS} characters"
                )
            entries.append((words[1].encode(), words[0]))
        if not entries:
            raise InvalidArgumentError(f"{source} holds no token")
        return Tokens(tuple(entries))

    def role_of(self, presented: str) -> str | None:
        """The role of `presented`, or None; the time taken does not depend on which token
        (if any) matches, nor on how much of one does."""
        candidate = presented.encode()
        role = None
        for secret, secret_role in self.entries:
            if hmac.compare_digest(candidate, secret):
                role = secret_role
        return role


def bearer_token(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return ""


class TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without a valid token, and changes by read-only tokens."""

    def __init__(self, tokens: Tokens, store_service: str) -> None:
        self.tokens = tokens
        self.store_service = store_service

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        service, _, method = details.method.lstrip("/").partition("/")
        if handler is None or service in OPEN_SERVICES:
            return handler
        role = self.tokens.role_of(bearer_token(details.invocation_metadata))
        if role is None:
            return _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "this daemon needs a valid token: send `authorization: Bearer TOKEN` "
                "(--token, ENGRAM_STORE_TOKEN, EngramClient(security=Security(token=...)))",
            )
        if role == "read-only" and service == self.store_service:
            if method in LOOKUPS_ONLY_METHODS:
                return _without_pushes(handler, method)
            if method not in READ_ONLY_METHODS:
                return _refusal(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"a read-only token may not call {method}",
                )
        return handler


def _without_pushes(handler: Any, method: str) -> Any:
    """`handler` (unary) for requests that carry no pushes; others are refused."""

    def lookups_only(request: Any, context: grpc.ServicerContext) -> Any:
        if getattr(request, "pushes", None):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"a read-only token may not call {method} with pushes (lookups only)",
            )
        return handler.unary_unary(request, context)

    return grpc.unary_unary_rpc_method_handler(
        lookups_only,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _refusal(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same kind as `handler` that refuses the call."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)
