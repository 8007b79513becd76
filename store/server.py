"""The gRPC daemon: validates requests, calls the engine, maps errors to status codes.

`serve(config)` runs until SIGTERM/SIGINT (or `stop_event`): health turns NOT_SERVING, the
server stops accepting calls and lets in-flight ones finish (`grace_s`), and every table is
flushed before it returns.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from store import _native, local_token
from store._proto.engram.store.v1 import store_pb2 as pb
from store._proto.engram.store.v1 import store_pb2_grpc as pb_grpc
from store.auth import TOKENS_VARIABLE, TokenInterceptor, Tokens
from store.config import ServeConfig
from store.conversions import (
    batch_to_proto,
    changes_header_to_proto,
    checkpoint_to_proto,
    chunk_bytes,
    lookup_from_proto,
    pack_chunk_to_proto,
    push_from_proto,
    push_outcome_to_proto,
    rows_write_from_proto,
    stats_to_proto,
    table_spec_from_proto,
    table_status_to_proto,
    token_lookup_from_proto,
    verify_to_proto,
)
from store.engine import StoreEngine
from store.errors import InvalidArgumentError, status_of
from store.follower import Follower, LeaderLink
from store.listen_check import port_in_use
from store.local_token import is_loopback
from store.metrics import EngineCollector, RequestMetrics
from store.replication import pack_chunks
from store.tls import TlsFileError, check_client_files, check_server_files
from store.wording import counted

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EngramStore"].full_name

T = TypeVar("T")


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are not a valid message of its method's type."""

    message_type: str
    reason: str


def _decoder(message_type: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as error:
            # grpcio would log a traceback and answer INTERNAL; the method answers instead.
            return Undecodable(message_type.__name__, str(error))

    return decode


def _refuse_undecodable(request: Any, context: grpc.ServicerContext, method: str) -> None:
    if isinstance(request, Undecodable):
        log.warning("%s: undecodable %s from %s", method, request.message_type, context.peer())
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request is not a valid {request.message_type}: {request.reason}",
        )


def add_servicer(servicer: Servicer, server: grpc.Server) -> None:
    """Registers every method of the EngramStore service, with requests decoded so that a
    malformed one is answered INVALID_ARGUMENT."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["EngramStore"].methods:
        request_type = getattr(pb, method.input_type.name)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_decoder(request_type),
            response_serializer=_serialize,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _serialize(response: Message | bytes) -> bytes:
    """A response, unless it comes serialised already (lookups write their rows once,
    straight into the message's bytes)."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def _abort(context: grpc.ServicerContext, error: BaseException, method: str) -> None:
    code = status_of(error)
    if code is None:
        log.exception("unexpected error in %s", method)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")
    context.abort(grpc.StatusCode[code], str(error))


def _unary(method: Callable[..., T]) -> Callable[..., T]:
    def wrapper(self: Servicer, request: Any, context: grpc.ServicerContext) -> T:
        _refuse_undecodable(request, context, method.__name__)
        try:
            return method(self, request, context)
        except Exception as error:
            _abort(context, error, method.__name__)
            raise  # unreachable: abort raises

    wrapper.__name__ = method.__name__
    return wrapper


def _streaming(method: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
    def wrapper(self: Servicer, request: Any, context: grpc.ServicerContext) -> Iterator[T]:
        _refuse_undecodable(request, context, method.__name__)
        try:
            # Validation happens when the engine builds the iterator, before anything is sent.
            yield from method(self, request, context)
        except Exception as error:
            _abort(context, error, method.__name__)

    wrapper.__name__ = method.__name__
    return wrapper


class Servicer(pb_grpc.EngramStoreServicer):
    def __init__(self, engine: StoreEngine) -> None:
        self.engine = engine

    @_unary
    def CreateTable(self, request: pb.CreateTableRequest, context: Any) -> pb.TableInfo:
        spec = table_spec_from_proto(request.spec)
        status = self.engine.create_table(spec, request.importing, request.replace_existing)
        return table_status_to_proto(status)

    @_unary
    def TuneTable(self, request: pb.TuneTableRequest, context: Any) -> pb.TableInfo:
        status = self.engine.tune_table(request.name, request.lr, request.weight_decay)
        return table_status_to_proto(status)

    @_unary
    def DropTable(self, request: pb.DropTableRequest, context: Any) -> pb.DropTableResponse:
        self.engine.drop_table(request.name, request.unfinished_import_only)
        return pb.DropTableResponse()

    @_unary
    def ListTables(self, request: pb.ListTablesRequest, context: Any) -> pb.ListTablesResponse:
        return pb.ListTablesResponse(
            tables=[table_status_to_proto(t) for t in self.engine.list_tables()],
            unfinished_imports=self.engine.unfinished_imports(),
        )

    @_unary
    def DescribeTable(self, request: pb.DescribeTableRequest, context: Any) -> pb.TableInfo:
        return table_status_to_proto(self.engine.table(request.name).status())

    @_streaming
    def Lookup(self, request: pb.LookupRequest, context: Any) -> Iterator[bytes]:
        return map(chunk_bytes, self.engine.lookup(lookup_from_proto(request)))

    @_streaming
    def LookupTokens(self, request: pb.LookupTokensRequest, context: Any) -> Iterator[bytes]:
        return map(chunk_bytes, self.engine.lookup_tokens(token_lookup_from_proto(request)))

    @_unary
    def Push(self, request: pb.PushRequest, context: Any) -> pb.PushResponse:
        return push_outcome_to_proto(self.engine.push(push_from_proto(request)))

    @_unary
    def Batch(self, request: pb.BatchRequest, context: Any) -> pb.BatchResponse:
        pushes = [push_from_proto(p) for p in request.pushes]
        lookups = [lookup_from_proto(q) for q in request.lookups]
        outcome = self.engine.batch(pushes, lookups)
        if outcome.held_bytes:
            budget = self.engine.answers.budget
            if not context.add_callback(lambda: budget.give_back(outcome.held_bytes)):
                budget.give_back(outcome.held_bytes)  # the call has already ended
        return batch_to_proto(outcome)

    @_unary
    def Checkpoint(self, request: pb.CheckpointRequest, context: Any) -> pb.CheckpointInfo:
        return checkpoint_to_proto(self.engine.checkpoint(request.full))

    @_unary
    def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: Any
    ) -> pb.ListCheckpointsResponse:
        return pb.ListCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(m) for m in self.engine.checkpoints()]
        )

    @_unary
    def Restore(self, request: pb.RestoreRequest, context: Any) -> pb.RestoreResponse:
        return pb.RestoreResponse(checkpoint=checkpoint_to_proto(self.engine.restore(request.id)))

    @_unary
    def Stats(self, request: pb.StatsRequest, context: Any) -> pb.StatsResponse:
        return stats_to_proto(self.engine.stats())

    @_unary
    def WriteRows(self, request: pb.WriteRowsRequest, context: Any) -> pb.WriteRowsResponse:
        return pb.WriteRowsResponse(rows=self.engine.write_rows(rows_write_from_proto(request)))

    @_unary
    def FinishImport(self, request: pb.FinishImportRequest, context: Any) -> pb.TableInfo:
        return table_status_to_proto(self.engine.finish_import(request.table))

    @_unary
    def Verify(self, request: pb.VerifyRequest, context: Any) -> pb.VerifyResponse:
        return verify_to_proto(self.engine.verify(request.table))

    @_streaming
    def ChangedRows(
        self, request: pb.ChangedRowsRequest, context: Any
    ) -> Iterator[pb.ChangedRowsResponse]:
        changes = self.engine.changes_since(
            request.since_checkpoint, request.store_id, request.wait_ms / 1000
        )
        yield changes_header_to_proto(changes)
        for table, checkpoint, data in pack_chunks(changes):
            yield pack_chunk_to_proto(table, checkpoint, data)


class StartupError(RuntimeError):
    """The daemon could not start (bad data directory, port in use, failed restore)."""


def _tokens(config: ServeConfig) -> Tokens | None:
    """The tokens the daemon accepts (None: every caller is let in)."""
    try:
        if config.auth_tokens_file:
            with open(config.auth_tokens_file) as f:
                return Tokens.parse(f.read(), config.auth_tokens_file)
        text = os.environ.get(TOKENS_VARIABLE)
        return Tokens.parse(text, TOKENS_VARIABLE) if text else None
    except (OSError, InvalidArgumentError) as error:
        raise StartupError(f"cannot read the tokens: {error}") from error


def _credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files (None: plaintext)."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise StartupError("TLS needs both --tls-cert and --tls-key")
    try:
        check_server_files(
            config.tls_cert,
            config.tls_key,
            config.tls_client_ca,
            ("--tls-cert", "--tls-key", "--tls-client-ca"),
        )
        key, chain = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
        client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    except (TlsFileError, OSError) as error:
        raise StartupError(f"cannot use the TLS files: {error}") from error
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=bool(client_ca)
    )


def _check_leader_tls(config: ServeConfig) -> None:
    """A follower's TLS files are checked before anything starts: gRPC would only log each
    failed connection, or abort the daemon on a certificate without its key."""
    if not config.follow:
        return
    try:
        check_client_files(
            config.follow_tls_ca,
            config.follow_tls_cert,
            config.follow_tls_key,
            ("--follow-tls-ca", "--follow-tls-cert", "--follow-tls-key"),
        )
    except TlsFileError as error:
        raise StartupError(f"cannot use the leader's TLS files: {error}") from error


# Files a table holds open: its rows and optimizer state, their checksums, its undo log.
FILES_PER_TABLE = 5
# Files kept for everything else: the catalog, the journal, checkpoints being written,
# clients' connections and shared buffers.
FILES_BESIDE_TABLES = 1024


def _lift_open_file_limit(max_tables: int) -> None:
    """Raises the soft limit on open files to the hard one, as most servers do (the usual
    soft limit, 1024, holds about 200 tables), and warns when even the hard one cannot hold
    `max_tables` tables: past it, every call that opens a file or accepts a connection
    would fail."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:  # an unlimited hard limit cannot be the soft one
            log.debug("cannot raise the open-file limit from %d: %s", soft, error)
    needed = FILES_PER_TABLE * max_tables + FILES_BESIDE_TABLES
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-file limit (%d) is below the %d that --max-tables %d may need (%d files a "
            "table, %d for connections and the rest): raise it (ulimit -n; LimitNOFILE= under "
            "systemd) or lower --max-tables",
            soft,
            needed,
            max_tables,
            FILES_PER_TABLE,
            FILES_BESIDE_TABLES,
        )


def _check_exposure(config: ServeConfig, tokens: Tokens | None) -> None:
    """Refuses to let anyone who reaches a non-loopback port drop tables, unless told to."""
    if tokens is not None or is_loopback(config.host):
        return
    if not config.allow_unauthenticated:
        raise StartupError(
            f"refusing to serve {config.host} without tokens: anyone who reaches the port could "
            "push, drop tables and restore old checkpoints. Give --auth-tokens FILE (or "
            f"{TOKENS_VARIABLE}), or --allow-unauthenticated on a network you trust."
        )
    log.warning(
        "SERVING %s WITHOUT AUTHENTICATION (--allow-unauthenticated): anyone who reaches the "
        "port can change or delete every table",
        config.host,
    )


def _own_token(config: ServeConfig, tokens: Tokens | None, engine: StoreEngine) -> str | None:
    """The token a loopback daemon given none keeps other local users out with
    (store/local_token.py); None when it has tokens, or is told to serve without."""
    if tokens is not None or config.allow_unauthenticated:
        return None
    try:
        if engine.media_read_only:
            return local_token.new_token()
        return local_token.data_dir_token(engine.data_dir)
    except OSError as error:
        engine.close()
        raise StartupError(
            f"cannot keep this daemon's local token in {engine.data_dir}: {error} "
            "(--allow-unauthenticated serves without one)"
        ) from error


def _authentication(tokens: Tokens | None, own_token: str | None) -> str:
    if own_token is not None:
        return "a local token"
    return f"{len(tokens.entries)} tokens" if tokens else "no authentication"


def _write_port(path: str, port: int) -> None:
    with open(f"{path}.tmp", "w") as f:
        f.write(str(port))
    os.replace(f"{path}.tmp", path)


def _verify_before_serving(engine: StoreEngine) -> None:
    """Scrubs every table against its row checksums, and refuses to serve damaged rows
    (a header is checked at every open; rows only here or by `verify`)."""
    log.info("verifying every table before serving (--verify-on-start)")
    report = engine.verify("")
    if report.damaged:
        engine.close()
        blocks = ", ".join(
            f"{b.table}/{b.file} rows {b.first_row}..{b.first_row + 63}"
            for b in report.damaged[:10]
        )
        more = f" and {len(report.damaged) - 10} more" if len(report.damaged) > 10 else ""
        raise StartupError(
            f"rows on disk differ from their checksums: {blocks}{more}; restore a checkpoint "
            "(serve --restore latest) or serve without --verify-on-start to read them as they are"
        )
    log.info(
        "verified %s of %s",
        counted(report.written_rows, "written row"),
        counted(report.tables, "table"),
    )


def serve(config: ServeConfig, stop_event: threading.Event | None = None) -> None:
    """Runs the daemon until SIGTERM/SIGINT or `stop_event` is set."""
    tokens = _tokens(config)
    _check_exposure(config, tokens)
    credentials = _credentials(config)
    _check_leader_tls(config)
    _lift_open_file_limit(config.max_tables)
    if port_in_use(config.host, config.port):
        raise StartupError(f"port {config.port} on {config.host} is in use")
    if config.threads:
        try:
            _native.set_thread_count(config.threads)
        except ValueError as error:
            raise StartupError(str(error)) from error
    try:
        engine = StoreEngine(
            config.data_dir,
            max_lookup_rows=config.max_lookup_rows,
            max_message_bytes=config.max_message_bytes,
            max_answer_bytes=config.max_answer_bytes,
            max_chunk_bytes=config.max_chunk_bytes,
            shared_buffer_dir=config.shared_buffer_dir or None,
            read_only=config.read_only,
            # Every rank of a step holds a request thread while it waits for the others:
            # leave two for everything else.
            max_sync_world_size=max(config.workers - 2, 1),
            max_pending_step_bytes=config.max_pending_step_bytes,
            follows=config.follow or "",
            overcommit_disk=config.overcommit_disk,
            max_tables=config.max_tables,
        )
    except Exception as error:
        raise StartupError(f"cannot open data directory {config.data_dir}: {error}") from error
    if config.restore and config.follow:
        engine.close()
        raise StartupError("a follower takes its tables from its leader: drop --restore")
    if config.restore:
        try:
            engine.restore(0 if config.restore == "latest" else int(config.restore))
        except Exception as error:
            engine.close()
            raise StartupError(f"cannot restore checkpoint {config.restore}: {error}") from error
    elif engine.needs_restore:
        engine.close()
        raise StartupError(engine.needs_restore)
    if config.verify_on_start:
        _verify_before_serving(engine)

    options = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # Another daemon on the same port must fail to start, not share the port.
        ("grpc.so_reuseport", 0),
    ]
    own_token = _own_token(config, tokens, engine)
    if own_token is not None:
        tokens = Tokens(((own_token.encode(), "read-write"),))
    registry = CollectorRegistry() if config.metrics_port is not None else None
    interceptors: list[grpc.ServerInterceptor] = []
    if registry is not None:
        interceptors.append(RequestMetrics(registry))
        registry.register(EngineCollector(engine))
    if tokens:
        interceptors.append(TokenInterceptor(tokens, SERVICE_NAME))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers),
        options=options,
        maximum_concurrent_rpcs=config.max_concurrent_requests,
        interceptors=interceptors,
    )
    add_servicer(Servicer(engine), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = (
            server.add_secure_port(config.address, credentials)
            if credentials is not None
            else server.add_insecure_port(config.address)
        )
    except RuntimeError as error:
        engine.close()
        raise StartupError(f"cannot listen on {config.address}: {error}") from error
    if port == 0:
        engine.close()
        raise StartupError(f"cannot listen on {config.address}")
    server.start()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "engram-store listening on %s:%d (data in %s; %s, %s)",
        config.host,
        port,
        engine.data_dir,
        "TLS" if credentials is not None else "plaintext",
        _authentication(tokens, own_token),
    )
    if config.shared_buffer_dir and not os.path.isdir(config.shared_buffer_dir):
        log.warning(
            "--shared-buffer-dir %s is not a directory: clients on this machine will send "
            "rows through the messages",
            config.shared_buffer_dir,
        )
    metrics_http = None
    if registry is not None:
        assert config.metrics_port is not None
        try:
            metrics_http, _ = start_http_server(config.metrics_port, config.host, registry)
        except OSError as error:
            server.stop(0)
            engine.close()
            raise StartupError(
                f"cannot serve metrics on port {config.metrics_port}: {error}"
            ) from error
        log.info("metrics at http://%s:%d/metrics", config.host, metrics_http.server_port)
        if config.metrics_port_file:
            _write_port(config.metrics_port_file, metrics_http.server_port)
    follower = None
    if config.follow:
        follower = Follower(
            engine,
            LeaderLink(
                config.follow,
                config.follow_token,
                config.follow_tls_ca,
                config.follow_tls_cert,
                config.follow_tls_key,
                config.max_message_bytes,
            ),
            wait_s=config.follow_wait_s,
        )
        follower.start()
        log.info("following %s from its checkpoint %d", config.follow, engine.follow_position()[1])
    if own_token is not None:
        try:
            published = local_token.publish(port, own_token)
        except OSError as error:
            server.stop(0)
            engine.close()
            raise StartupError(
                f"cannot publish this daemon's local token in {local_token.runtime_dir()}: "
                f"{error} (set {local_token.RUNTIME_DIR_VARIABLE}, or --allow-unauthenticated)"
            ) from error
        log.info("other local users are kept out: this user's clients read %s", published)
    if config.port_file:
        _write_port(config.port_file, port)

    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
    while not stop.wait(config.flush_interval_s or None):
        try:
            engine.flush()
        except Exception as error:
            # Pushes stay safe through a crash of the daemon without it (the journal holds
            # them); a flush that fails (a full disk) is tried again at the next interval.
            log.error("periodic flush failed, retrying in %s s: %s", config.flush_interval_s, error)
    log.info("shutting down: finishing in-flight requests")
    health_servicer.enter_graceful_shutdown()
    if follower is not None:
        follower.stop()
    engine.end_waits()
    server.stop(config.grace_s).wait()
    if metrics_http is not None:
        metrics_http.shutdown()
        metrics_http.server_close()
    engine.close()
    if own_token is not None:
        local_token.withdraw(port, own_token)
    log.info("stopped; tables flushed")
