"""Daemon configuration: defaults, command-line flags and ENGRAM_STORE_* variables."""

from __future__ import annotations

from dataclasses import dataclass

from store.spec import is_seconds

DEFAULT_PORT = 50051
# Pushes of large batches and streamed lookup chunks stay well below this; anything larger
# is refused with RESOURCE_EXHAUSTED rather than truncated.
DEFAULT_MAX_MESSAGE_BYTES = 512 << 20
# gRPC sizes messages in C ints; the least is twice the room a reply keeps for what is
# not rows (REPLY_HEADROOM_BYTES in store/lookup_answers.py), so that rows fit beside it.
MESSAGE_BYTES_RANGE = (1 << 17, (1 << 31) - 1)
PORT_RANGE = (0, 65535)


class ConfigError(ValueError):
    """A setting out of its range; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        return type(self), (self.field, self.message)


@dataclass(frozen=True)
class ServeConfig:
    data_dir: str = "./engram-data"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # Where to write the bound port once listening (useful with port 0).
    port_file: str | None = None
    workers: int = 16
    # Calls in progress or waiting for a request thread; beyond it a call is refused at once
    # (RESOURCE_EXHAUSTED) rather than queued without bound.
    max_concurrent_requests: int = 1024
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_lookup_rows: int = 1 << 26
    # Bytes all lookup answers in flight hold together (store/answer_budget.py), and the
    # most one streamed chunk carries, whatever a client asks.
    max_answer_bytes: int = 256 << 20
    max_chunk_bytes: int = 4 << 20
    # Gradients that step-synchronous pushes may hold while their steps wait for ranks.
    max_pending_step_bytes: int = 1 << 30
    # Tables this daemon creates at most: each holds files open (FILES_PER_TABLE in
    # store/server.py), and the process may open only so many.
    max_tables: int = 1024
    # "latest", a checkpoint id, or None.
    restore: str | None = None
    grace_s: float = 10.0
    # Seconds between background flushes (0: only on checkpoints and shutdown).
    flush_interval_s: float = 30.0
    # Where same-machine clients' shared buffers live ("" refuses them).
    shared_buffer_dir: str = "/dev/shm"
    # Threads a request's work is spread over (0: one per core; 1: each request runs on its
    # own gRPC thread). A daemon sharing a small machine with a trainer should leave the
    # cores to it.
    threads: int = 0
    # Serve lookups only: every call that would change a table or the data directory is
    # refused (FAILED_PRECONDITION), for tables imported to serve a model.
    read_only: bool = False
    # Bearer tokens and their roles (store/auth.py); None: ENGRAM_STORE_SERVE_TOKENS, or none.
    auth_tokens_file: str | None = None
    # Serve a non-loopback address without tokens (refused otherwise).
    allow_unauthenticated: bool = False
    # TLS: the daemon's certificate chain and key (PEM files), and the CA that client
    # certificates must be signed by (mutual TLS), if any.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Prometheus metrics over HTTP at /metrics on this port (0: a free one), and where to
    # write the port bound; None: no metrics.
    metrics_port: int | None = None
    metrics_port_file: str | None = None
    # Create tables that would not fit on the disk if every row were written (they are
    # sparse: rows take disk when first written, and are refused then when it is full).
    overcommit_disk: bool = False
    # Scrub every table against its row checksums before serving (as `verify` does), and
    # refuse to start when rows were damaged on disk; a file's header is checked always.
    verify_on_start: bool = False
    # Follow the daemon at this address (HOST:PORT): serve a read-only copy of its tables as
    # of its latest checkpoint, kept up to date (store/follower.py). The token (a read-only
    # one suffices) and TLS files for reaching it; seconds a request for changes waits at
    # the leader for a new checkpoint.
    follow: str | None = None
    follow_token: str | None = None
    follow_tls_ca: str | None = None
    follow_tls_cert: str | None = None
    follow_tls_key: str | None = None
    follow_wait_s: float = 30.0

    def __post_init__(self) -> None:
        """Refuses a setting that could not work (a port beyond 65535 would bind another
        port, a message limit of 10 bytes would refuse every reply), naming it."""
        for name in (
            "workers",
            "max_concurrent_requests",
            "max_lookup_rows",
            "max_pending_step_bytes",
            "max_tables",
            "max_answer_bytes",
            "max_chunk_bytes",
        ):
            _check_int(name, getattr(self, name), 1, None)
        _check_int("threads", self.threads, 0, None)
        _check_int("port", self.port, *PORT_RANGE)
        if self.metrics_port is not None:
            _check_int("metrics_port", self.metrics_port, *PORT_RANGE)
        _check_int("max_message_bytes", self.max_message_bytes, *MESSAGE_BYTES_RANGE)
        for name in ("grace_s", "flush_interval_s", "follow_wait_s"):
            value = getattr(self, name)
            if not is_seconds(value, zero_allowed=True):
                raise ConfigError(name, f"must be a finite number of seconds >= 0, got {value!r}")
        for name in ("data_dir", "host"):
            if not getattr(self, name):
                raise ConfigError(name, "must not be empty")
        if self.follow is not None and not _is_host_and_port(self.follow):
            raise ConfigError("follow", f"must be the leader's HOST:PORT, got {self.follow!r}")
        if self.restore is not None and self.restore != "latest" and not self.restore.isdigit():
            raise ConfigError(
                "restore", f"must be 'latest' or a checkpoint id, got {self.restore!r}"
            )

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _is_host_and_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= PORT_RANGE[1]


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ConfigError(name, f"must be {bounds}, got {value}")
