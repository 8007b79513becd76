"""`engram-store`: the command-line front of Engram Store.

A thin layer: each verb parses its flags and calls the library. Logging is configured
before anything else; start-up failures exit with a distinct code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib import metadata

from store import StoreError, Table

EXIT_USAGE = 2
EXIT_FAILURE = 3

log = logging.getLogger("engram_store")


def _version() -> str:
    try:
        return metadata.version("engram-store")
    except metadata.PackageNotFoundError:
        return "unknown"


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
    parser = argparse.ArgumentParser(prog="engram-store", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
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
    except (StoreError, OSError, ValueError) as err:
        log.error("%s", err)
        return EXIT_FAILURE
    return code


if __name__ == "__main__":
    sys.exit(main())
