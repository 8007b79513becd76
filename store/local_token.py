"""The token that keeps other local users off a same-machine daemon, as Jupyter's does.

A daemon on a loopback address given no tokens (and not `--allow-unauthenticated`) makes
a random read-write token at its first start, in `local-token` in its data directory (mode
0600), and takes only that token. Each time it listens it publishes it for its user's
clients in `<runtime dir>/daemon-<port>.token`: the runtime dir is
`$ENGRAM_STORE_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/engram-store`, else
`~/.local/share/engram-store/runtime`, made mode 0700 and the file 0600, so only the
daemon's user (and root) can read it. A client or the command line given a loopback
address and no token reads the token published for that port: the daemon's user connects as
before, and another local user, who cannot read the file, is refused (`UNAUTHENTICATED`)
before any call runs. The token lives as long as the data directory, so a client that
retries through a restart of the daemon still holds a valid one (on read-only media, where
the directory cannot keep it, a fresh one is made at each start).

This module is the vocabulary both sides share: the daemon writes, the client reads.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
from pathlib import Path

DATA_DIR_FILE = "local-token"
RUNTIME_DIR_VARIABLE = "ENGRAM_STORE_RUNTIME_DIR"


def runtime_dir() -> Path:
    if os.environ.get(RUNTIME_DIR_VARIABLE):
        return Path(os.environ[RUNTIME_DIR_VARIABLE])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "engram-store"
    return Path.home() / ".local" / "share" / "engram-store" / "runtime"


def published_path(port: int) -> Path:
    return runtime_dir() / f"daemon-{port}.token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def data_dir_token(data_dir: str) -> str:
    """The data directory's token, made (mode 0600) if it has none yet."""
    path = os.path.join(data_dir, DATA_DIR_FILE)
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        token = f.read().strip()
        if token:
            return token
    token = new_token()
    _write_private(Path(path), token)
    return token


def new_token() -> str:
    """A fresh token: for a daemon on read-only media, whose data directory cannot keep one
    (its clients read it anew after each start)."""
    return secrets.token_hex(32)


def publish(port: int, token: str) -> Path:
    """Writes `token` where this user's clients look for the daemon on `port`."""
    directory = runtime_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid == os.getuid():
        directory.chmod(0o700)
    path = published_path(port)
    _write_private(path, token)
    return path


def withdraw(port: int, token: str) -> None:
    """Removes what `publish` wrote, unless another daemon has published over it since."""
    path = published_path(port)
    with contextlib.suppress(OSError):
        if path.read_text().strip() == token:
            path.unlink()


def published_token(address: str) -> str | None:
    """The token published for a loopback `address` (`HOST:PORT`), if this user can read
    one; None for any other address."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not is_loopback(host):
        return None
    try:
        return published_path(int(port)).read_text().strip() or None
    except OSError:
        return None


def _write_private(path: Path, text: str) -> None:
    """Writes `text` to `path` through a file only this user can read, renamed into place."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
