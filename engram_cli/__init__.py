"""`engram-store`, the command line of Engram Store.

It sits above both `store` (the daemon) and `client` (which `store` never imports): the one
place that fronts both. Verbs live in small modules by subject and register themselves here.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import grpc

from client.errors import ShardUnavailableError
from engram_cli import daemon_verbs, file_verbs, row_verbs, state_verbs, table_verbs
from engram_cli.exit_codes import (
    EXIT_FAILURE,
    EXIT_NO_DAEMON,
    EXIT_STARTUP_FAILURE,
    EXIT_USAGE,
    describe_exit_codes,
)
from engram_cli.parsing import Verbs, top_level_parser
from store import StoreError

__all__ = ["EXIT_FAILURE", "EXIT_NO_DAEMON", "EXIT_STARTUP_FAILURE", "EXIT_USAGE", "main"]

DESCRIPTION = """\
Engram Store: memory-mapped Engram embedding tables served over gRPC.

`serve` runs the daemon; `inspect` reads a table file; every other verb talks to running
daemons (--address, several comma-separated for tables sharded over them). Every flag can
also come from an ENGRAM_STORE_<FLAG> environment variable (--data-dir ->
ENGRAM_STORE_DATA_DIR, --address -> ENGRAM_STORE_ADDRESS). `engram-store VERB --help`
describes a verb, with examples."""


def build_parser() -> Verbs:
    verbs = Verbs(top_level_parser(DESCRIPTION, describe_exit_codes()))
    daemon_verbs.register(verbs)
    table_verbs.register(verbs)
    row_verbs.register(verbs)
    state_verbs.register(verbs)
    file_verbs.register(verbs)
    return verbs


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.run(args)
    except ShardUnavailableError as error:
        if error.code == grpc.StatusCode.UNAVAILABLE:
            print(
                f"engram-store: no daemon answers at {error.address}. Start one with "
                "`engram-store serve` (it listens on 127.0.0.1:50051 by default; --port and "
                "--data-dir change that), or point --address (ENGRAM_STORE_ADDRESS) at a "
                "running one.",
                file=sys.stderr,
            )
            return EXIT_NO_DAEMON
        print(f"engram-store: {error} (--timeout is {args.timeout} s)", file=sys.stderr)
        return EXIT_FAILURE
    except (StoreError, OSError, ValueError) as error:  # client errors are StoreErrors
        print(f"engram-store: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return code
