"""Verbs that run on the daemon's machine: `serve` and `inspect`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from engram_cli.exit_codes import EXIT_STARTUP_FAILURE, EXIT_USAGE
from engram_cli.output import emit
from engram_cli.parsing import Verbs
from store import Table
from store.config import DEFAULT_PORT, ConfigError, ServeConfig
from store.wording import counted

log = logging.getLogger("engram_store")

# The serve flags named otherwise than the ServeConfig fields they set.
FLAG_OF_FIELD = {
    "grace_s": "grace",
    "flush_interval_s": "flush_interval",
    "auth_tokens_file": "auth_tokens",
    "follow_wait_s": "follow_wait",
}


def _serve(args: argparse.Namespace) -> int:
    from store.server import StartupError, serve

    flags = {f.name: FLAG_OF_FIELD.get(f.name, f.name) for f in dataclasses.fields(ServeConfig)}
    try:
        config = ServeConfig(**{field: getattr(args, dest) for field, dest in flags.items()})
    except ConfigError as error:
        flag = "--" + flags[error.field].replace("_", "-")
        print(f"engram-store serve: {flag} {error.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        serve(config)
    except StartupError as error:
        log.error("%s", error)
        return EXIT_STARTUP_FAILURE
    return 0


def _inspect(args: argparse.Namespace) -> int:
    table = Table.open(args.path)
    info = {
        "path": table.path,
        "num_rows": table.num_rows,
        "dim": table.dim,
        "dtype": table.dtype,
        "init": table.init,
        "std": table.std,
        "seed": table.seed,
        "written_rows": table.written_count(),
        "file_bytes": table.file_len,
    }
    width = max(len(k) for k in info)
    emit(
        args.json,
        info,
        "\n".join(f"{key.replace('_', ' '):<{width}}  {value}" for key, value in info.items()),
    )
    return 0


def _reshard(args: argparse.Namespace) -> int:
    from store.reshard import reshard

    def directories(text: str) -> list[str]:
        return [d.strip() for d in text.split(",") if d.strip()]

    tables = reshard(directories(args.sources), directories(args.targets), args.checkpoint)
    emit(
        args.json,
        {"tables": tables},
        "\n".join(
            f"{t.name}: {counted(t.num_rows, 'row')} at step {t.step} -> rows stored per daemon "
            f"{t.rows_per_target}"
            for t in tables
        ),
    )
    return 0


def register(verbs: Verbs) -> None:
    serve = verbs.add(
        "serve",
        "run the store daemon until SIGTERM or SIGINT",
        _serve,
        "engram-store serve\n"
        "engram-store serve --data-dir /srv/engram --host 10.0.0.5 --port 6000 --threads 8\n"
        "engram-store serve --restore latest   # after the machine went down\n"
        "engram-store serve --data-dir /srv/replica --follow trainer-0:50051   # a follower",
        "Serves the tables in --data-dir over gRPC. Only one daemon may use a data directory:\n"
        f"a second one exits with status {EXIT_STARTUP_FAILURE}, naming the holder's pid. A "
        "non-loopback --host needs\n--auth-tokens (or --allow-unauthenticated); "
        "docs/guides/production.md has the rest.",
    )
    serve.add_argument(
        "--data-dir",
        metavar="DIR",
        default="./engram-data",
        help="directory of the catalog, tables, checkpoints",
    )
    serve.add_argument(
        "--host",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="address to listen on (anyone who reaches it may read, train and drop tables)",
    )
    serve.add_argument(
        "--port",
        metavar="PORT",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port; 0 picks a free one",
    )
    serve.add_argument(
        "--port-file", metavar="FILE", help="file to write the bound port to once listening"
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=16,
        help="gRPC request threads; a step-synchronous push holds one per rank while its step "
        "waits, so steps of at most N - 2 ranks are served",
    )
    serve.add_argument(
        "--max-concurrent-requests",
        metavar="N",
        type=int,
        default=ServeConfig.max_concurrent_requests,
        help="calls in progress or queued for a request thread; more are refused at once "
        "(RESOURCE_EXHAUSTED)",
    )
    serve.add_argument(
        "--max-pending-step-bytes",
        metavar="BYTES",
        type=int,
        default=ServeConfig.max_pending_step_bytes,
        help="gradients that step-synchronous pushes may hold while their steps wait for "
        "every rank, in bytes (over it a push is refused: RESOURCE_EXHAUSTED)",
    )
    serve.add_argument(
        "--threads",
        metavar="N",
        type=int,
        default=0,
        help="threads one lookup, push or hashing request is spread over (0: one per core; "
        "1: each runs on its request thread)",
    )
    serve.add_argument(
        "--max-message-bytes",
        metavar="BYTES",
        type=int,
        default=ServeConfig.max_message_bytes,
        help="largest gRPC message accepted or sent, in bytes",
    )
    serve.add_argument(
        "--max-answer-bytes",
        metavar="BYTES",
        type=int,
        default=ServeConfig.max_answer_bytes,
        help="bytes all lookup answers in flight hold together; a lookup waits for room "
        "(the daemon's memory for answers stays under it however many clients ask)",
    )
    serve.add_argument(
        "--max-chunk-bytes",
        metavar="BYTES",
        type=int,
        default=ServeConfig.max_chunk_bytes,
        help="most bytes of rows one streamed lookup chunk carries, whatever a client asks",
    )
    serve.add_argument(
        "--max-lookup-rows",
        metavar="N",
        type=int,
        default=ServeConfig.max_lookup_rows,
        help="most keys one lookup may ask for (more: RESOURCE_EXHAUSTED)",
    )
    serve.add_argument(
        "--max-tables",
        metavar="N",
        type=int,
        default=ServeConfig.max_tables,
        help="most tables this daemon creates (more: RESOURCE_EXHAUSTED); each holds up to "
        "five files open",
    )
    serve.add_argument(
        "--restore",
        metavar="ID|latest",
        help="restore a checkpoint before serving: 'latest' or a checkpoint id",
    )
    serve.add_argument(
        "--grace",
        metavar="SECONDS",
        type=float,
        default=10.0,
        help="seconds in-flight calls get at shutdown",
    )
    serve.add_argument(
        "--flush-interval",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="seconds between flushes of changed rows to disk (bounds the journal's length)",
    )
    serve.add_argument(
        "--read-only",
        action="store_true",
        help="serve lookups only: refuse pushes, creates, drops, imports, checkpoints, restores",
    )
    serve.add_argument(
        "--overcommit-disk",
        action="store_true",
        help="create tables larger than the disk's free room (rows take disk when first "
        "written; those that do not fit are refused then)",
    )
    serve.add_argument(
        "--verify-on-start",
        action="store_true",
        help="check every written row against its checksum before serving, and refuse to "
        "start (exit 4) naming damaged rows (a scan of every table; headers are always checked)",
    )
    serve.add_argument(
        "--follow",
        metavar="HOST:PORT",
        help="follow the daemon there: serve a read-only copy of its tables as of its latest "
        "checkpoint, caught up as it writes new ones",
    )
    serve.add_argument(
        "--follow-token",
        metavar="TOKEN",
        help="bearer token for the leader (a read-only one suffices)",
    )
    serve.add_argument("--follow-tls-ca", metavar="FILE", help="CA of the leader's certificate")
    serve.add_argument(
        "--follow-tls-cert",
        metavar="FILE",
        help="this daemon's certificate, for a leader that verifies clients",
    )
    serve.add_argument("--follow-tls-key", metavar="FILE", help="its key")
    serve.add_argument(
        "--follow-wait",
        metavar="SECONDS",
        type=float,
        default=ServeConfig.follow_wait_s,
        help="seconds a request for changes waits at the leader for a new checkpoint",
    )
    serve.add_argument(
        "--metrics-port",
        metavar="PORT",
        type=int,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: none)",
    )
    serve.add_argument(
        "--metrics-port-file",
        metavar="FILE",
        help="file to write the metrics port to once listening (with --metrics-port 0)",
    )
    serve.add_argument(
        "--auth-tokens",
        metavar="FILE",
        help="bearer tokens and their roles, a `read-write TOKEN` or `read-only TOKEN` line "
        "each (ENGRAM_STORE_SERVE_TOKENS may hold the same text instead)",
    )
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without tokens (refused otherwise)",
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="the daemon's TLS certificate (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    serve.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    serve.add_argument(
        "--shared-buffer-dir",
        metavar="DIR",
        default=ServeConfig.shared_buffer_dir,
        help="directory of same-machine clients' shared buffers ('' refuses them)",
    )

    reshard = verbs.add(
        "reshard",
        "lay a checkpoint's tables out over another number of daemons (daemons stopped)",
        _reshard,
        "engram-store reshard --from data-a --to data-x,data-y,data-z\n"
        "engram-store reshard --from data-x,data-y,data-z --to data-a --checkpoint 7",
        "Each source data directory (in shard order) has its checkpoint's tables rebuilt; each\n"
        "target (new or empty) gets each table's rows [i * rows // n, (i + 1) * rows // n), as\n"
        "clients lay tables out over n daemons, with their optimizer state and step, and a\n"
        "checkpoint of its own. Then serve each target and list the addresses in that order.",
    )
    reshard.add_argument(
        "--from", dest="sources", metavar="DIR[,DIR...]", required=True,
        help="data directories of the daemons holding the checkpoint, in shard order",
    )  # fmt: skip
    reshard.add_argument(
        "--to", dest="targets", metavar="DIR[,DIR...]", required=True,
        help="new data directories, one per daemon to come, in shard order",
    )  # fmt: skip
    reshard.add_argument(
        "--checkpoint", metavar="ID", type=int, default=0,
        help="the checkpoint id on every source (default: each one's latest)",
    )  # fmt: skip
    reshard.add_argument("--json", action="store_true", help="print one JSON document")

    inspect = verbs.add(
        "inspect",
        "describe a table file (no daemon needed)",
        _inspect,
        "engram-store inspect engram-data/tables/emb/params.engram --json",
    )
    inspect.add_argument("path", help="a table file (.engram)")
    inspect.add_argument(
        "--json", action="store_true", help="print one JSON object (the fields shown)"
    )
