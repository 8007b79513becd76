"""`engram-store`: the command-line front of Engram Store.

`serve` runs the daemon; the other verbs talk to a running one (`--address`). Every flag can
also be given as an ENGRAM_STORE_<FLAG> environment variable (`--data-dir` ->
ENGRAM_STORE_DATA_DIR). Logging is configured before anything else; a daemon that cannot
start exits with EXIT_STARTUP_FAILURE.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import grpc
from google.protobuf import json_format

from store import StoreError, Table
from store._proto.engram.store.v1 import store_pb2 as pb
from store._proto.engram.store.v1 import store_pb2_grpc as pb_grpc
from store.config import DEFAULT_PORT, ServeConfig

EXIT_USAGE = 2
EXIT_FAILURE = 3
EXIT_STARTUP_FAILURE = 4

log = logging.getLogger("engram_store")


def _version() -> str:
    try:
        return metadata.version("engram-store")
    except metadata.PackageNotFoundError:
        return "unknown"


class _EnvDefaults(argparse.ArgumentParser):
    """Fills each option's default from ENGRAM_STORE_<DEST> when that variable is set."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.dest not in ("help", "version"):
            value = os.environ.get(f"ENGRAM_STORE_{action.dest.upper()}")
            if value is not None:
                if isinstance(action, argparse._StoreTrueAction):
                    action.default = value.lower() in ("1", "true", "yes", "on")
                else:
                    action.default = action.type(value) if callable(action.type) else value
                    action.required = False
        return action


def _print(message: Any, as_json: bool, human: Callable[[dict[str, Any]], str]) -> None:
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    print(json.dumps(data) if as_json else human(data))


def _stub(args: argparse.Namespace) -> pb_grpc.EngramStoreStub:
    """A stub on a channel that `main` closes when the verb is done."""
    args.channel = grpc.insecure_channel(args.address)
    return pb_grpc.EngramStoreStub(args.channel)


def _describe(info: dict[str, Any]) -> str:
    spec = info["spec"]
    optimizer = spec.get("optimizer", {})
    kind = next((k for k in ("sgd", "adagrad", "rowwise_adagrad", "adam") if k in optimizer), "sgd")
    return (
        f"{spec['name']}: {spec['num_rows']} x {spec['dim']} {spec.get('dtype') or 'float32'}, "
        f"{kind} lr={optimizer.get('lr', 0)}, step {info.get('step', 0)}, "
        f"{info.get('written_rows', 0)} rows written"
    )


def _serve(args: argparse.Namespace) -> int:
    from store.server import StartupError, serve

    config = ServeConfig(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        port_file=args.port_file,
        workers=args.workers,
        max_message_bytes=args.max_message_bytes,
        restore=args.restore,
        grace_s=args.grace,
        flush_interval_s=args.flush_interval,
        shared_buffer_dir=args.shared_buffer_dir,
        threads=args.threads,
    )
    try:
        serve(config)
    except StartupError as error:
        log.error("%s", error)
        return EXIT_STARTUP_FAILURE
    return 0


def _create_table(args: argparse.Namespace) -> int:
    optimizer = pb.OptimizerConfig(lr=args.lr)
    if args.optimizer == "sgd":
        optimizer.sgd.SetInParent()
    elif args.optimizer == "adagrad":
        optimizer.adagrad.SetInParent()
    elif args.optimizer == "rowwise_adagrad":
        optimizer.rowwise_adagrad.SetInParent()
    else:
        optimizer.adam.SetInParent()
    spec = pb.TableSpec(
        name=args.name,
        num_rows=args.rows,
        dim=args.dim,
        dtype=args.dtype,
        init=args.init,
        init_std=args.std,
        seed=args.seed,
        optimizer=optimizer,
        skip_row_checksums=args.skip_row_checksums,
    )
    info = _stub(args).CreateTable(pb.CreateTableRequest(spec=spec), timeout=args.timeout)
    _print(info, args.json, _describe)
    return 0


def _tables(args: argparse.Namespace) -> int:
    reply = _stub(args).ListTables(pb.ListTablesRequest(), timeout=args.timeout)
    _print(
        reply,
        args.json,
        lambda d: "\n".join(_describe(t) for t in d.get("tables", [])) or "no tables",
    )
    return 0


def _describe_table(args: argparse.Namespace) -> int:
    info = _stub(args).DescribeTable(pb.DescribeTableRequest(name=args.name), timeout=args.timeout)
    _print(info, args.json, _describe)
    return 0


def _checkpoint_line(c: dict[str, Any]) -> str:
    kind = f"incremental on {c['parent']}" if c.get("parent") else "full"
    rows = sum(int(t.get("rows", 0)) for t in c.get("tables", []))
    return f"checkpoint {c['id']} ({kind}): {len(c.get('tables', []))} tables, {rows} rows"


def _checkpoint(args: argparse.Namespace) -> int:
    info = _stub(args).Checkpoint(pb.CheckpointRequest(full=args.full), timeout=args.timeout)
    _print(info, args.json, _checkpoint_line)
    return 0


def _checkpoints(args: argparse.Namespace) -> int:
    reply = _stub(args).ListCheckpoints(pb.ListCheckpointsRequest(), timeout=args.timeout)
    _print(
        reply,
        args.json,
        lambda d: "\n".join(map(_checkpoint_line, d.get("checkpoints", []))) or "none",
    )
    return 0


def _restore(args: argparse.Namespace) -> int:
    reply = _stub(args).Restore(pb.RestoreRequest(id=args.id), timeout=args.timeout)
    _print(reply, args.json, lambda d: "restored " + _checkpoint_line(d["checkpoint"]))
    return 0


def _stats(args: argparse.Namespace) -> int:
    reply = _stub(args).Stats(pb.StatsRequest(), timeout=args.timeout)

    def human(d: dict[str, Any]) -> str:
        lines = [f"uptime {d.get('uptime_s', 0):.0f} s, {d.get('checkpoints', 0)} checkpoints"]
        for t in d.get("tables", []):
            lines.append(
                f"{t['name']}: {t.get('lookups', 0)} lookups ({t.get('rows_looked_up', 0)} rows),"
                f" {t.get('pushes', 0)} pushes ({t.get('rows_pushed', 0)} rows),"
                f" {t.get('duplicate_pushes', 0)} duplicate pushes"
            )
        return "\n".join(lines)

    _print(reply, args.json, human)
    return 0


def _verify(args: argparse.Namespace) -> int:
    reply = _stub(args).Verify(pb.VerifyRequest(table=args.name), timeout=args.timeout)

    def human(d: dict[str, Any]) -> str:
        lines = [
            f"checked {d.get('tables', 0)} tables ({d.get('written_rows', 0)} written rows): "
            + ("damaged" if reply.damaged else "every block matches its checksum")
        ]
        if reply.unchecked:
            lines.append("kept without row checksums, not checked: " + ", ".join(reply.unchecked))
        lines += [
            f"{b['table']}/{b['file']}: rows {b['first_row']}..{int(b['first_row']) + 63}"
            for b in d.get("damaged", [])
        ]
        return "\n".join(lines)

    _print(reply, args.json, human)
    return EXIT_FAILURE if reply.damaged else 0


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
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _EnvDefaults(prog="engram-store", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_EnvDefaults)

    serve = verbs.add_parser("serve", help="run the store daemon")
    serve.add_argument("--data-dir", default="./engram-data")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    serve.add_argument("--port-file", help="write the bound port here once listening")
    serve.add_argument("--workers", type=int, default=16, help="gRPC request threads")
    serve.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads one lookup, push or hashing request is spread over (default: one per "
        "core; 1: each runs on its request thread)",
    )
    serve.add_argument("--max-message-bytes", type=int, default=ServeConfig.max_message_bytes)
    serve.add_argument("--restore", help="restore a checkpoint before serving: 'latest' or an id")
    serve.add_argument("--grace", type=float, default=10.0, help="seconds for in-flight calls")
    serve.add_argument("--flush-interval", type=float, default=30.0)
    serve.add_argument(
        "--shared-buffer-dir",
        default=ServeConfig.shared_buffer_dir,
        help="directory of same-machine clients' shared buffers ('' refuses them)",
    )
    serve.set_defaults(run=_serve)

    def client_verb(name: str, help: str, run: Callable[[argparse.Namespace], int]) -> Any:
        verb = verbs.add_parser(name, help=help)
        verb.add_argument("--address", default=f"127.0.0.1:{DEFAULT_PORT}")
        verb.add_argument("--timeout", type=float, default=60.0)
        verb.add_argument("--json", action="store_true", help="print JSON")
        verb.set_defaults(run=run)
        return verb

    create = client_verb("create-table", "create a table", _create_table)
    create.add_argument("name")
    create.add_argument("--rows", type=int, required=True)
    create.add_argument("--dim", type=int, required=True)
    create.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    create.add_argument("--init", default="normal", choices=["normal", "zeros"])
    create.add_argument("--std", type=float, default=0.02)
    create.add_argument("--seed", type=int, default=0)
    create.add_argument(
        "--optimizer", default="sgd", choices=["sgd", "adagrad", "rowwise_adagrad", "adam"]
    )
    create.add_argument("--lr", type=float, default=0.01)
    create.add_argument(
        "--skip-row-checksums",
        action="store_true",
        help="keep no row checksums: faster pushes, but `verify` cannot check the table",
    )
    client_verb("tables", "list tables", _tables)
    client_verb("describe", "describe a table", _describe_table).add_argument("name")
    client_verb("checkpoint", "write a checkpoint", _checkpoint).add_argument(
        "--full", action="store_true", help="every row, not only the changed ones"
    )
    client_verb("checkpoints", "list checkpoints", _checkpoints)
    client_verb("restore", "restore a checkpoint", _restore).add_argument(
        "id", type=int, nargs="?", default=0, help="checkpoint id (default: the latest)"
    )
    client_verb("stats", "request counters", _stats)
    client_verb(
        "verify",
        f"check live tables against their row checksums (exit {EXIT_FAILURE}: damaged)",
        _verify,
    ).add_argument("name", nargs="?", default="", help="one table (default: every table)")

    inspect = verbs.add_parser("inspect", help="describe a table file")
    inspect.add_argument("path", help="a table file (.engram)")
    inspect.add_argument("--json", action="store_true", help="one JSON object")
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.run(args)
    except grpc.RpcError as error:
        log.error("%s: %s", error.code().name, error.details())
        return EXIT_FAILURE
    except (StoreError, OSError, ValueError) as error:
        log.error("%s", error)
        return EXIT_FAILURE
    finally:
        if getattr(args, "channel", None) is not None:
            args.channel.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
