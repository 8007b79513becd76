"""Verbs that create, list, describe and drop tables."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from client.config import EngramConfig
from client.engram_tables import create_engram_tables, hash_mapping, plan_engram_tables
from client.errors import TableNotFoundError
from client.presets import PRESETS
from client.results import TableInfo
from engram_cli.confirm import declined
from engram_cli.output import emit
from engram_cli.parsing import Verbs, connect
from store.spec import INITS, OPTIMIZERS, TABLE_DTYPES
from store.wording import counted


def describe(info: TableInfo) -> str:
    shards = f", {info.shards} shards" if info.shards > 1 else ""
    hashing = ", hashes token ids" if info.hash_fingerprint else ""
    if info.hash_identity is not None:
        tokenizer = info.hash_identity.tokenizer_sha256[:12] or "unknown"
        hashing += (
            f" (layer {info.hash_identity.layer}, tokenizer {tokenizer}, "
            f"{counted(info.hash_identity.compressed_vocab_size, 'id')})"
        )
    return (
        f"{info.name}: {info.num_rows} x {info.dim} {info.dtype}, {info.optimizer} lr={info.lr:g}"
        f"{f' weight_decay={info.weight_decay:g}' if info.weight_decay else ''}, "
        f"step {info.step}, {counted(info.written_rows, 'row')} written{shards}{hashing}"
    )


def _table_options(args: argparse.Namespace) -> dict[str, Any]:
    chosen = {"dtype": args.dtype} if args.dtype is not None else {}
    return {
        **chosen,
        "init": args.init,
        "init_std": args.std,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "row_checksums": not args.skip_row_checksums,
        "read_only": args.read_only,
    }


def _create_table(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.create_table(
            args.name, args.rows, args.dim, seed=args.seed, **_table_options(args)
        )
    emit(args.json, info, describe(info))
    return 0


def engram_config(args: argparse.Namespace) -> EngramConfig:
    """The config `add_config_arguments` named: a preset's or a file's, with --tokenizer."""
    if args.preset is not None:
        return EngramConfig.preset(args.preset, args.tokenizer)
    config = EngramConfig.from_json(args.engram_config)
    if args.tokenizer is not None:
        config = dataclasses.replace(config, tokenizer_name_or_path=args.tokenizer)
    return config


def add_config_arguments(verb: argparse.ArgumentParser, required: bool = True) -> None:
    """--engram-config FILE or --preset NAME, and --tokenizer FILE."""
    source = verb.add_mutually_exclusive_group(required=required)
    source.add_argument("--engram-config", metavar="FILE", help="JSON file of the Engram config")
    source.add_argument(
        "--preset",
        metavar="NAME",
        choices=sorted(PRESETS),
        help=f"a released model's Engram config instead: {', '.join(sorted(PRESETS))}",
    )
    verb.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="the model's tokenizer (tokenizer.json or its directory), for hashing token ids; "
        "a preset's is checked against the model's compressed vocabulary",
    )


def _hash_identity(args: argparse.Namespace) -> int:
    config = engram_config(args)
    if not config.tokenizer_name_or_path:
        raise ValueError("--tokenizer FILE is needed: the identity holds the tokenizer's digest")
    mapping = hash_mapping(config)
    identities = {layer: mapping.hash_identity(layer) for layer in config.layer_ids}
    emit(
        args.json,
        {"layers": {str(layer): identity for layer, identity in identities.items()}},
        "\n".join(
            f"layer {layer}: " + ", ".join(f"{k} {v}" for k, v in identity.to_json().items())
            for layer, identity in identities.items()
        ),
    )
    return 0


def _create_tables(args: argparse.Namespace) -> int:
    config = engram_config(args)
    if args.dry_run:
        plans = plan_engram_tables(config, args.prefix)
        emit(
            args.json,
            {"tables": plans},
            "\n".join(
                f"{p.name}: {p.num_rows} x {p.dim} {config.row_dtype} (layer {p.layer}, "
                f"{len(p.head_sizes)} heads of {min(p.head_sizes)}..{max(p.head_sizes)} rows)"
                for p in plans
            ),
        )
        return 0
    with connect(args) as client:
        infos = create_engram_tables(client, config, args.prefix, **_table_options(args))
    lines = list(map(describe, infos))
    if not config.tokenizer_name_or_path:
        lines.append("no tokenizer given (--tokenizer FILE): the tables hash no token ids")
    emit(args.json, {"tables": infos}, "\n".join(lines))
    return 0


def _tables(args: argparse.Namespace) -> int:
    with connect(args) as client:
        infos = client.list_tables()
        unfinished = client.unfinished_imports()
    answer: dict[str, Any] = {"tables": infos}
    lines = [describe(info) for info in infos] or ["no tables"]
    if unfinished:
        answer["unfinished_imports"] = unfinished
        lines.append(
            "unfinished imports (hidden, holding their disk; import again, or "
            f"drop-table NAME --unfinished-import): "
            f"{', '.join(unfinished)}"
        )
    emit(args.json, answer, "\n".join(lines))
    return 0


def _describe(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.describe(args.name)
    emit(args.json, info, describe(info))
    return 0


def _tune_table(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.tune_table(args.name, args.lr, args.weight_decay)
    emit(args.json, info, describe(info))
    return 0


def _drop_table(args: argparse.Namespace) -> int:
    if args.unfinished_import:
        # Nothing it drops is lost for good: the import can be run again.
        with connect(args) as client:
            client.drop_table(args.name, unfinished_import_only=True)
        emit(
            args.json,
            {"dropped": args.name, "unfinished_import": True},
            f"dropped the unfinished import of {args.name}",
        )
        return 0
    with connect(args) as client:
        try:
            summary = describe(client.describe(args.name))
        except TableNotFoundError as error:
            # describe does not see an unfinished import; DropTable removes it (or says
            # NOT_FOUND when there is no table at all).
            summary = error.message
        status = declined(
            args.yes,
            f"dropping {args.name!r} deletes its rows",
            f"{summary}\nIts rows and optimizer state are deleted (checkpoints keep theirs "
            "until restored over).",
            args.name,
            "not dropped",
        )
        if status is not None:
            return status
        client.drop_table(args.name)
    emit(args.json, {"dropped": args.name}, f"dropped {args.name}")
    return 0


def add_optimizer_arguments(verb: argparse.ArgumentParser) -> None:
    """--optimizer, --lr and --weight-decay: what trains a table's rows."""
    verb.add_argument(
        "--optimizer",
        default="sgd",
        choices=OPTIMIZERS,
        help="server-side optimizer applied to pushed gradients (hyper-parameters: PyTorch's)",
    )
    verb.add_argument("--lr", metavar="RATE", type=float, default=0.01, help="learning rate")
    verb.add_argument(
        "--weight-decay",
        metavar="RATE",
        type=float,
        default=0.0,
        help="PyTorch's (L2) weight decay on the rows a push touches",
    )


def _add_table_options(verb: argparse.ArgumentParser, dtype: str | None = "float32") -> None:
    verb.add_argument(
        "--dtype",
        default=dtype,
        choices=TABLE_DTYPES,
        help="how rows are stored: a float dtype, or fp8_e4m3/int8 for serving (dim a "
        "multiple of 32; no pushes); lookups return float dtypes or the stored packing"
        + ("" if dtype else " (default: the config's row_dtype; float32 unless a preset's)"),
    )
    verb.add_argument(
        "--init",
        default="normal",
        choices=INITS,
        help="value of rows never written",
    )
    verb.add_argument(
        "--std", metavar="STD", type=float, default=0.02, help="standard deviation of --init normal"
    )
    add_optimizer_arguments(verb)
    verb.add_argument(
        "--read-only",
        action="store_true",
        help="serve lookups only: pushes into the table are refused",
    )
    verb.add_argument(
        "--skip-row-checksums",
        action="store_true",
        help="keep no row checksums: cheaper pushes, but `verify` cannot check the table",
    )


def register(verbs: Verbs) -> None:
    create = verbs.add_client(
        "create-table",
        "create a table (split over every --address)",
        _create_table,
        "engram-store create-table emb --rows 10000000 --dim 64 --optimizer adam --lr 1e-3\n"
        "engram-store create-table emb --rows 3000000 --dim 32 "
        "--address 10.0.0.1:50051,10.0.0.2:50051,10.0.0.3:50051",
    )
    create.add_argument("name", help="table name (at most 128 characters)")
    create.add_argument("--rows", metavar="N", type=int, required=True, help="number of rows")
    create.add_argument("--dim", metavar="N", type=int, required=True, help="values per row")
    create.add_argument(
        "--seed", metavar="N", type=int, default=0, help="seed of the initial row values"
    )
    _add_table_options(create)

    tables = verbs.add_client(
        "create-tables",
        "create the tables of an Engram config, one per layer, sized by its hashing",
        _create_tables,
        "engram-store create-tables --engram-config examples/tiny_engram_lm.engram.json --dry-run\n"
        "engram-store create-tables --engram-config engram.json --optimizer adam --lr 1e-3\n"
        "engram-store create-tables --preset deepseek-v4.1-flash --dry-run --json",
        "The config is a JSON object with the reference's EngramConfig fields (engram_vocab_size,\n"
        "max_ngram_size, n_embed_per_ngram, n_head_per_ngram, layer_ids, pad_id, seed and\n"
        "tokenizer_name_or_path, relative to the file). Each layer's table holds all its heads\n"
        "(prime sizes computed from the config) with rows of n_embed_per_ngram / n_head_per_ngram\n"
        "values, seeded with the layer id; on one daemon it also hashes token ids itself\n"
        "(lookup-tokens). --preset names a released model's config instead\n"
        "(deepseek-v4.1-flash: client/presets.py), whose sizes need no tokenizer.",
    )
    add_config_arguments(tables)
    tables.add_argument(
        "--prefix",
        metavar="TEXT",
        default="engram-L",
        help="table names are the prefix and the layer id",
    )
    tables.add_argument(
        "--dry-run", action="store_true", help="print the tables' sizes, create nothing"
    )
    _add_table_options(tables, dtype=None)

    identity = verbs.add(
        "hash-identity",
        "print what decides each Engram layer's rows: tokenizer digest, vocabulary, constants",
        _hash_identity,
        "engram-store hash-identity --preset deepseek-v4.1-flash --tokenizer tokenizer.json\n"
        "engram-store hash-identity --engram-config engram.json --json",
        "A table served under another tokenizer revision or other hash constants reads wrong\n"
        "rows and raises nothing. describe shows a table's identity, export writes it into the\n"
        "file's metadata, and import refuses a file whose identity differs\n"
        "(client/hash_identity.py).",
    )
    add_config_arguments(identity)
    identity.add_argument("--json", action="store_true", help="print one JSON document")

    verbs.add_client("tables", "list tables", _tables, "engram-store tables --json")
    verbs.add_client(
        "describe", "describe a table", _describe, "engram-store describe emb"
    ).add_argument("name", help="table name")

    tune = verbs.add_client(
        "tune-table",
        "set a live table's learning rate and weight decay for its later pushes",
        _tune_table,
        "engram-store tune-table emb --lr 5e-3 --weight-decay 0",
    )
    tune.add_argument("name", help="table name")
    tune.add_argument("--lr", metavar="RATE", type=float, required=True, help="learning rate")
    tune.add_argument(
        "--weight-decay",
        metavar="RATE",
        type=float,
        default=0.0,
        help="PyTorch's (L2) weight decay on the rows a push touches",
    )

    drop = verbs.add_client(
        "drop-table",
        "delete a table, its rows and optimizer state (asks first unless --yes)",
        _drop_table,
        "engram-store drop-table emb\nengram-store drop-table emb --yes --json",
    )
    drop.add_argument("name", help="table name")
    drop.add_argument("--yes", action="store_true", help="drop without asking")
    drop.add_argument(
        "--unfinished-import",
        action="store_true",
        help="drop only the table's unfinished import (an interrupted import --replace), "
        "never the table",
    )
