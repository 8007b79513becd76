"""Verbs that move tables between daemons and safetensors files: import, export."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from client import TableExistsError
from client.engram_tables import hash_mapping
from client.hash_identity import HashIdentity
from client.imports import (
    HashIdentityMismatch,
    export_tables,
    import_checkpoint,
    load_mapping,
    with_dtype,
    with_tensor_prefix,
)
from engram_cli.output import emit
from engram_cli.parsing import Verbs, connect
from engram_cli.table_verbs import (
    add_config_arguments,
    add_optimizer_arguments,
    describe,
    engram_config,
)
from store._proto.engram.store.v1 import store_pb2 as pb
from store.spec import TABLE_DTYPES, OptimizerSpec

MAPPING_HELP = """\
A mapping is a JSON file: {"tables": [{"tensor": REGEX, "table": NAME, "scales": NAME,
"dtype": DTYPE}, ...]}. Each tensor takes the first rule whose REGEX matches its whole
name; NAME may use the regex's named groups ({layer}, {head}); tensors with a `head` group
are stacked by head into one table. Quantized values (F8_E4M3, I8) need `scales`, the
name of their scale tensor ({name} is the values' name), one scale per 32 values.
examples/mappings/engram_demo_v1.json maps the reference demo's state_dict."""


# A rate over less time than this is noise (a table written in one slice reads as
# 10^13 rows/s), so none is shown.
MIN_RATE_SECONDS = 0.2


class ProgressLine:
    """One stderr line per table, rewritten at most twice a second: rows, and once they
    mean something, rows/s and the time left."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._table = ""
        self._started = self._shown = 0.0

    def __call__(self, table: str, done: int, total: int) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if table != self._table:
            if self._table:
                print(file=sys.stderr)
            self._table, self._started, self._shown = table, now, 0.0
        if now - self._shown < 0.5 and done < total:
            return
        self._shown = now
        elapsed = now - self._started
        figures = ""
        if done and elapsed >= MIN_RATE_SECONDS:
            rate = done / elapsed
            figures = f", {rate:,.0f} rows/s, ETA {(total - done) / rate:.0f} s"
        print(
            f"\r{table}: {done}/{total} rows{figures}",
            end="" if done < total else "\n",
            file=sys.stderr,
            flush=True,
        )


def _expected_identity(args: argparse.Namespace) -> Callable[[HashIdentity], HashIdentity | None]:
    """What the config given to `import` says a table of the file's layer must be."""
    config = engram_config(args)
    if not config.tokenizer_name_or_path:
        raise ValueError("--tokenizer FILE is needed to compare hash identities with a config")
    mapping = hash_mapping(config)

    def expected(identity: HashIdentity) -> HashIdentity:
        if identity.layer not in mapping.layer_ids:
            raise HashIdentityMismatch(
                f"the checkpoint holds a table of layer {identity.layer}, which the given "
                f"config has not (layers {mapping.layer_ids}); --ignore-hash-identity imports it"
            )
        return mapping.hash_identity(identity.layer)

    return expected


def _hash_configs(args: argparse.Namespace) -> Callable[[int], pb.HashConfig | None]:
    """The config's hash config of each of its layers, given to the tables imported for them
    (on one daemon: a hash config is a single daemon's), so they carry their identity."""
    config = engram_config(args)
    if not config.tokenizer_name_or_path:
        raise ValueError("--tokenizer FILE is needed to give imported tables a hash config")
    mapping = hash_mapping(config)
    return lambda layer: mapping.hash_config(layer) if layer in mapping.layer_ids else None


def _import(args: argparse.Namespace) -> int:
    rules = with_dtype(
        with_tensor_prefix(load_mapping(args.mapping), args.tensor_prefix), args.dtype
    )
    optimizer = OptimizerSpec(args.optimizer, args.lr, weight_decay=args.weight_decay)
    given = args.engram_config is not None or args.preset is not None
    expected = _expected_identity(args) if given and not args.ignore_hash_identity else None
    with connect(args) as client:
        progress = ProgressLine(args.quiet)
        try:
            infos = import_checkpoint(
                client,
                args.checkpoint,
                rules,
                progress,
                args.replace,
                expected,
                check_replaced=not args.ignore_hash_identity,
                hash_config_of=_hash_configs(args) if given and len(client.shards) == 1 else None,
                optimizer=optimizer.check(),
            )
        except TableExistsError as error:
            hint = "; --replace imports over it (the old table serves until the new one is whole)"
            raise TableExistsError(error.message + hint, error.address, error.code) from None
    emit(args.json, {"tables": infos}, "\n".join(describe(i) for i in infos))
    return 0


def _export(args: argparse.Namespace) -> int:
    with connect(args) as client:
        tensors = export_tables(
            client, args.tables, args.out, args.dtype, args.scale_suffix, ProgressLine(args.quiet)
        )
    emit(
        args.json,
        {"file": args.out, "tensors": tensors},
        "\n".join(f"{t.name}: {t.dtype} {list(t.shape)}" for t in tensors),
    )
    return 0


def register(verbs: Verbs) -> None:
    load = verbs.add_client(
        "import",
        "create tables from a safetensors checkpoint, as a mapping file says",
        _import,
        "engram-store import model.safetensors --mapping examples/mappings/engram_demo_v1.json\n"
        "engram-store import ckpt/model.safetensors.index.json --mapping engram.json",
        MAPPING_HELP + "\n\nEach table is filled hidden and becomes visible only once complete and"
        "\ndurable; an interrupted import leaves no half table, and rerunning it starts over."
        "\nWith --replace, a table that exists serves on (and trains) until its import is"
        "\ncomplete, then each daemon swaps it for the import crash-atomically."
        "\nWith --preset or --engram-config (and a tokenizer), a file's hash identity is checked"
        "\nagainst the config's, and on one daemon each table of a layer (the mapping's `layer`"
        "\ngroup) gets that layer's hash config: it carries its identity and serves token lookups.",
    )
    load.add_argument("checkpoint", help="a .safetensors file or a sharded checkpoint's index.json")
    load.add_argument(
        "--mapping", metavar="FILE", required=True, help="JSON file: which tensor fills which table"
    )
    load.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    load.add_argument(
        "--tensor-prefix",
        metavar="TEXT",
        default="",
        help="what the checkpoint nests the mapping's tensor names under (`model.`): each "
        "rule's tensor and scales names start with it",
    )
    load.add_argument(
        "--replace",
        action="store_true",
        help="replace tables that exist (a new model version): they serve until swapped",
    )
    load.add_argument(
        "--dtype",
        choices=TABLE_DTYPES,
        help="store every table in this dtype: bfloat16 or float32 dequantizes FP8 or int8 "
        "rows exactly, so that they can be trained (default: as the mapping says, else as the "
        "checkpoint holds them)",
    )
    add_optimizer_arguments(load)
    add_config_arguments(load, required=False)
    load.add_argument(
        "--ignore-hash-identity",
        action="store_true",
        help="import tables whose hash identity (in the file's metadata) differs from the "
        "table they replace or the given config's",
    )

    save = verbs.add_client(
        "export",
        "write tables to a safetensors file",
        _export,
        "engram-store export engram-L1 engram-L15 --out engram.safetensors\n"
        "engram-store export engram-L1 --out engram-fp8.safetensors --dtype fp8_e4m3",
        "Each table becomes a tensor of its name, [rows, dim]; quantized rows become their values\n"
        "(F8_E4M3 or I8) and their scales (F8_E8M0 or F32, [rows, dim / 32], named with\n"
        "--scale-suffix). A float table written as fp8_e4m3 is quantized with per-32 power-of-two\n"
        "scales (the UE8M0 rule) and round-to-nearest-even values.",
    )
    save.add_argument("tables", nargs="+", help="names of the tables to write")
    save.add_argument("--out", metavar="FILE", required=True, help="the .safetensors file to write")
    save.add_argument(
        "--dtype",
        choices=TABLE_DTYPES,
        default=None,
        help="how rows are written (default: as each table stores them)",
    )
    save.add_argument(
        "--scale-suffix",
        metavar="TEXT",
        default="_scale",
        help="appended to a table's name to name its scale tensor",
    )
    save.add_argument("--quiet", action="store_true", help="no progress line on stderr")
