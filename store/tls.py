"""Checks of TLS files before gRPC is given them, for both ends of a connection.

gRPC reports a bad PEM file late and vaguely: a server cannot bind ("cannot listen"), a
client logs to stderr and then fails every call as if no daemon answered, and a client
certificate given without its key aborts the process. Python's `ssl` parses the same PEM
files and says what is wrong, so each file is read by it first. The daemon's follower and
the client both connect as TLS clients, so both use `check_client_files`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable


class TlsFileError(ValueError):
    """A TLS file that is missing, unreadable or not the PEM it should be; the message
    names the argument it was given as."""


def check_server_files(
    cert: str, key: str, client_ca: str | None, names: tuple[str, str, str]
) -> None:
    """`names`: what the user calls cert, key and client_ca (flags or fields)."""
    cert_name, key_name, client_ca_name = names
    _readable(zip(names, (cert, key, client_ca), strict=True))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load(
        lambda: _load_pair(context, cert, key),
        f"{cert_name} {cert} and {key_name} {key} are not a PEM certificate chain and its "
        "unencrypted private key",
    )
    if client_ca:
        _load(
            lambda: context.load_verify_locations(client_ca),
            f"{client_ca_name} {client_ca} holds no PEM certificate",
        )


def check_client_files(
    ca: str | None, cert: str | None, key: str | None, names: tuple[str, str, str]
) -> None:
    """`names`: what the user calls ca, cert and key (flags or fields). TLS is on when `ca`
    is given; `cert` and `key` are the client certificate for servers that verify clients."""
    ca_name, cert_name, key_name = names
    if bool(cert) != bool(key):
        given, missing = (cert_name, key_name) if cert else (key_name, cert_name)
        raise TlsFileError(f"{given} needs {missing}: a client certificate and its key go together")
    if not ca:
        if cert:
            raise TlsFileError(f"a client certificate ({cert_name}) needs {ca_name} (TLS) too")
        return
    _readable(zip(names, (ca, cert, key), strict=True))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _load(lambda: context.load_verify_locations(ca), f"{ca_name} {ca} holds no PEM certificate")
    if cert and key:
        _load(
            lambda: _load_pair(context, cert, key),
            f"{cert_name} {cert} and {key_name} {key} are not a PEM certificate chain and its "
            "unencrypted private key",
        )


def _load_pair(context: ssl.SSLContext, cert: str, key: str) -> None:
    # An encrypted key is refused (gRPC takes no password) rather than prompted for.
    context.load_cert_chain(cert, key, password=lambda: b"")


def _readable(files: Iterable[tuple[str, str | None]]) -> None:
    for name, path in files:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise TlsFileError(f"{name} {path} cannot be read: {error.strerror}") from error


def _load(load: Callable[[], None], refusal: str) -> None:
    try:
        load()
    except ssl.SSLError as error:
        raise TlsFileError(f"{refusal}: {error}") from error
