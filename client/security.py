"""How a client proves who it is and checks the daemon it reaches: a bearer token sent with
every call (store/auth.py), and TLS with the CA that signed the daemons' certificates (and a
client certificate for daemons that verify theirs).

`Security.from_environment()` reads `ENGRAM_STORE_TOKEN`, `ENGRAM_STORE_TLS_CA`,
`ENGRAM_STORE_TLS_CLIENT_CERT` and `ENGRAM_STORE_TLS_CLIENT_KEY` (file paths for the last
three), which is what an `EngramClient` uses unless given one (the command line's `--token`,
`--tls-ca`, `--tls-client-cert`, `--tls-client-key` read the same variables).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from store.local_token import published_token
from store.tls import check_client_files

# Each field with the flag and the variable that set it for the command line.
_FIELDS = (
    "tls_ca (--tls-ca, ENGRAM_STORE_TLS_CA)",
    "tls_cert (--tls-client-cert, ENGRAM_STORE_TLS_CLIENT_CERT)",
    "tls_key (--tls-client-key, ENGRAM_STORE_TLS_CLIENT_KEY)",
)


@dataclass(frozen=True)
class Security:
    token: str | None = None
    # PEM files: the CA of the daemons' certificates (TLS on), and this client's certificate
    # chain and key (for daemons that verify clients).
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @staticmethod
    def from_environment() -> Security:
        return Security(
            os.environ.get("ENGRAM_STORE_TOKEN") or None,
            os.environ.get("ENGRAM_STORE_TLS_CA") or None,
            os.environ.get("ENGRAM_STORE_TLS_CLIENT_CERT") or None,
            os.environ.get("ENGRAM_STORE_TLS_CLIENT_KEY") or None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials (None: plaintext). Files that are missing or not the PEM they
        should be raise `TlsFileError` (a `ValueError`) naming the field."""
        check_client_files(self.tls_ca, self.tls_cert, self.tls_key, _FIELDS)
        if not self.tls_ca:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.tls_ca).read_bytes(),
            private_key=Path(self.tls_key).read_bytes() if self.tls_key else None,
            certificate_chain=Path(self.tls_cert).read_bytes() if self.tls_cert else None,
        )

    def interceptors(self, address: str = "") -> list[Any]:
        """What sends the token; with none given, a daemon on this machine (`address` on
        loopback) is sent the token it published for its user (store/local_token.py)."""
        token = self.token or published_token(address)
        return [BearerToken(token)] if token else []


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer TOKEN` to every call."""

    def __init__(self, token: str) -> None:
        self.metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self.metadata],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(details), request)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any
