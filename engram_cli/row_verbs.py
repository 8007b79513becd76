"""Verbs that read and train rows: `lookup`, `lookup-tokens`, `push`, `batch`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from engram_cli.output import emit
from engram_cli.parsing import Verbs, connect, int_list
from store.arrays import as_keys
from store.wording import counted


def _ids(
    args: argparse.Namespace,
    listed: str,
    file: str,
    what: str,
    inline_array: Callable[[list[int]], np.ndarray],
) -> np.ndarray:
    """The ids given inline (as `inline_array` makes them an array) or in a .npy file."""
    inline, path = getattr(args, listed), getattr(args, file)
    if (inline is None) == (path is None):
        raise ValueError(
            f"give {what} either with --{listed.replace('_', '-')} or --{file.replace('_', '-')}"
        )
    if path is None:
        return inline_array(inline)
    return _load_array(path, f"--{file.replace('_', '-')}", what, "iu")


def _keys(args: argparse.Namespace) -> np.ndarray:
    return _ids(args, "keys", "keys_file", "keys", as_keys)  # row keys reach 2^64 - 1


def _token_ids(ids: list[int]) -> np.ndarray:
    try:
        return np.asarray(ids, np.int64)
    except OverflowError:
        raise ValueError(f"token ids must fit int64, got {ids}") from None


def _load_array(path: str, flag: str, what: str, kinds: str) -> np.ndarray:
    """The array the .npy file `path` (given with `flag`) holds, refused unless its numpy
    dtype kind is one of `kinds` (the client would raise TypeError deep inside a call)."""
    try:
        array = np.load(path, allow_pickle=False)
    except OSError as error:
        raise ValueError(f"{flag} {path}: cannot read it ({error.strerror or error})") from None
    except ValueError as error:
        raise ValueError(f"{path}: not a .npy file of numbers ({error})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: holds several arrays (.npz); give {what} as one .npy array")
    if array.dtype.kind not in kinds:
        wanted = "integers" if kinds == "iu" else "numbers"
        raise ValueError(f"{path}: {what} must be {wanted}, got dtype {array.dtype}")
    return array


def _rows_out(args: argparse.Namespace, rows: np.ndarray) -> str:
    if args.out:
        np.save(args.out, rows)
        return f"{rows.shape} {rows.dtype} rows written to {args.out}"
    with np.printoptions(precision=5, suppress=True, threshold=64):
        return f"{rows.shape} rows:\n{rows}"


def _lookup(args: argparse.Namespace) -> int:
    keys = _keys(args)
    with connect(args) as client:
        rows = client.lookup(args.table, keys)
    emit(args.json, {"table": args.table, "keys": keys, "rows": rows}, _rows_out(args, rows))
    return 0


def _lookup_tokens(args: argparse.Namespace) -> int:
    ids = _ids(args, "token_ids", "token_ids_file", "token ids", _token_ids)
    ids = ids.reshape(1, -1) if ids.ndim == 1 else ids
    with connect(args) as client:
        rows = client.lookup_tokens(args.table, ids)
    emit(args.json, {"table": args.table, "token_ids": ids, "rows": rows}, _rows_out(args, rows))
    return 0


def _push(args: argparse.Namespace) -> int:
    keys = _keys(args).reshape(-1)
    if (args.fill is None) == (args.grads_file is None):
        raise ValueError("give the gradients either with --fill or --grads-file")
    with connect(args) as client:
        if args.grads_file is not None:
            grads = _load_array(args.grads_file, "--grads-file", "gradients", "fiu")
        else:
            grads = np.full((len(keys), client.describe(args.table).dim), args.fill, np.float32)
        result = client.push(args.table, keys, grads)
    emit(
        args.json,
        {"rows": result.rows, "step": result.step, "duplicate": result.duplicate},
        f"step {result.step}: {counted(result.rows, 'row')} updated",
    )
    return 0


_BATCH_ENTRY_FIELDS = {"pushes": ("table", "keys", "grads"), "lookups": ("table", "keys")}


def _read_batch_file(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """The pushes and lookups a batch file holds, each entry's fields checked and its keys and
    gradients made arrays; anything else is a ValueError naming the file and the entry."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a JSON object with pushes and lookups")
    unknown = sorted(set(spec) - set(_BATCH_ENTRY_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown fields {unknown}; expected pushes, lookups")
    entries: dict[str, list[tuple[Any, ...]]] = {}
    for kind, fields in _BATCH_ENTRY_FIELDS.items():
        listed = spec.get(kind, [])
        if not isinstance(listed, list):
            raise ValueError(f"{path}: {kind} must be a list, got {type(listed).__name__}")
        entries[kind] = []
        for i, entry in enumerate(listed):
            name = f"{kind}[{i}]"
            if not isinstance(entry, dict) or set(entry) != set(fields):
                raise ValueError(
                    f"{path}: each push needs table, keys and grads, each lookup table and keys; "
                    f"{name} is {json.dumps(entry)[:200]}"
                )
            if not isinstance(entry["table"], str):
                raise ValueError(f"{path}: {name} table must be a string, got {entry['table']!r}")
            parsed: tuple[Any, ...] = (entry["table"], _entry_keys(path, name, entry["keys"]))
            if kind == "pushes":
                parsed += (_entry_grads(path, name, entry["grads"]),)
            entries[kind].append(parsed)
    return entries


def _entry_keys(path: str, name: str, raw: Any) -> np.ndarray:
    try:
        return as_keys(raw).reshape(np.shape(raw))
    except (TypeError, ValueError, IndexError) as error:
        raise ValueError(f"{path}: {name}: {error}") from None


def _entry_grads(path: str, name: str, raw: Any) -> np.ndarray:
    try:
        grads = np.asarray(raw)
    except ValueError as error:
        raise ValueError(f"{path}: {name}: grads: {error}") from None
    if grads.dtype.kind not in "fiu":
        raise ValueError(f"{path}: {name}: grads must hold numbers, got {json.dumps(raw)[:100]}")
    return grads


def _batch(args: argparse.Namespace) -> int:
    entries = _read_batch_file(args.file)
    pushes, lookups = entries["pushes"], entries["lookups"]
    with connect(args) as client:
        result = client.batch(pushes, lookups)
    answer = {
        "pushes": [
            {"rows": p.rows, "step": p.step, "duplicate": p.duplicate} for p in result.pushes
        ],
        "lookups": result.lookups,
    }
    human = [
        f"push to {table}: step {p.step}, {counted(p.rows, 'row')}"
        for (table, _, _), p in zip(pushes, result.pushes, strict=True)
    ]
    human += [
        f"lookup in {t}: {rows.shape}" for (t, _), rows in zip(lookups, result.lookups, strict=True)
    ]
    emit(args.json, answer, "\n".join(human) or "nothing to do")
    return 0


def _add_keys(verb: argparse.ArgumentParser) -> None:
    verb.add_argument("table", help="table name")
    verb.add_argument(
        "--keys", metavar="K,K,...", type=int_list, help="row keys, comma-separated: 3,17,4242"
    )
    verb.add_argument(
        "--keys-file", metavar="FILE.npy", help=".npy file of integer row keys (any shape)"
    )


def register(verbs: Verbs) -> None:
    lookup = verbs.add_client(
        "lookup",
        "print the rows of some keys (as float32)",
        _lookup,
        "engram-store lookup emb --keys 0,1,2\n"
        "engram-store lookup emb --keys-file keys.npy --out rows.npy",
    )
    _add_keys(lookup)
    lookup.add_argument(
        "--out", metavar="FILE.npy", help="save the rows to this .npy file instead of printing them"
    )

    tokens = verbs.add_client(
        "lookup-tokens",
        "print the rows of raw token ids, hashed by the daemon (tables from create-tables)",
        _lookup_tokens,
        "engram-store lookup-tokens engram-L1 --token-ids 17,4242,99,1003",
    )
    tokens.add_argument("table", help="a table created with a hash config, on one daemon")
    tokens.add_argument(
        "--token-ids",
        metavar="ID,ID,...",
        type=int_list,
        help="one sequence of raw token ids: 17,4242",
    )
    tokens.add_argument(
        "--token-ids-file", metavar="FILE.npy", help=".npy file of int token ids [batch, seq]"
    )
    tokens.add_argument(
        "--out", metavar="FILE.npy", help="save the rows [batch, seq, heads, dim] to this .npy file"
    )

    push = verbs.add_client(
        "push",
        "apply gradients to rows with the table's optimizer (one step)",
        _push,
        "engram-store push emb --keys 0,1,2 --fill 0.5\n"
        "engram-store push emb --keys-file keys.npy --grads-file grads.npy",
        "Repeated keys' gradients are summed. Each run is a new push (applied once).",
    )
    _add_keys(push)
    push.add_argument(
        "--fill", metavar="VALUE", type=float, help="the same gradient value for every element"
    )
    push.add_argument(
        "--grads-file", metavar="FILE.npy", help=".npy file of float gradients [len(keys), dim]"
    )

    batch = verbs.add_client(
        "batch",
        "several pushes, then several lookups (seeing them), one call per daemon",
        _batch,
        "engram-store batch step.json --json",
        'The file: {"pushes": [{"table": "emb", "keys": [1, 2], "grads": [[...], [...]]}],\n'
        '           "lookups": [{"table": "emb", "keys": [1, 2, 3]}]}',
    )
    batch.add_argument("file", metavar="FILE.json", help="JSON file of the pushes and lookups")
