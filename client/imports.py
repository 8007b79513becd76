"""Tables from safetensors checkpoints, and tables back into safetensors files.

Which tensor fills which table is declared in a mapping file (JSON), never guessed:

    {"tables": [{"tensor": "<regex over tensor names>",
                 "table": "<table name; {layer} and {head} are the regex's groups>",
                 "scales": "<optional: the scale tensor's name; {name} is the values'>",
                 "dtype": "<optional: the table's dtype, else the tensor's>"}]}

A tensor is matched against each rule in order; the first whose `tensor` pattern matches
the whole name wins. Tensors matching a rule with a `head` group are one head each: a
table's heads are stacked in head order. Quantized values (F8_E4M3 or I8) need their scale
tensor (one scale per 32 values of a row): the two are interleaved into the table's rows on
import, and split again on export. An import creates each table hidden, fills it a slice
at a time, and makes it visible only once it is complete and durable: interrupted, it
leaves no half table under that name, and running it again starts that table over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from client.hash_identity import METADATA_KEY, HashIdentity, identities_in_metadata
from client.results import TableInfo
from client.tensor_files import Checkpoint, SafetensorsWriter, TensorSpec, row_ranges
from store import _native
from store._proto.engram.store.v1 import store_pb2 as pb
from store.arrays import bfloat16_to_float32
from store.conversions import hash_from_proto
from store.spec import (
    FLOAT_DTYPES,
    QUANT_GROUP,
    OptimizerSpec,
    TableSpec,
    row_bytes,
)

# safetensors dtype of a table dtype's values, and of its scales (quantized only).
VALUE_TENSOR_DTYPES = {
    "float32": "F32",
    "bfloat16": "BF16",
    "float16": "F16",
    "fp8_e4m3": "F8_E4M3",
    "int8": "I8",
}
SCALE_TENSOR_DTYPES = {"fp8_e4m3": "F8_E8M0", "int8": "F32"}
TABLE_DTYPE_OF = {tensor: table for table, tensor in VALUE_TENSOR_DTYPES.items()}
# What quantized rows import into to be trained: every value of theirs exact in float32, and
# in bfloat16 but for the smallest scales (checked row by row).
DEQUANTIZED_DTYPES = ("bfloat16", "float32")
# How many bytes of rows travel in one WriteRows or one lookup of an export.
CHUNK_BYTES = 4 << 20

Progress = Callable[[str, int, int], None]


class MappingError(ValueError):
    """A mapping file, or a checkpoint that does not fit it."""


@dataclass(frozen=True)
class MappingRule:
    tensor: re.Pattern[str]
    table: str
    scales: str | None = None
    dtype: str | None = None


def load_mapping(path: str | os.PathLike[str]) -> list[MappingRule]:
    with open(path) as f:
        try:
            document = json.load(f)
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
            raise MappingError(f"{os.fspath(path)}: not JSON: {error}") from None
    return mapping_rules(document, os.fspath(path))


def with_dtype(rules: list[MappingRule], dtype: str | None) -> list[MappingRule]:
    """The rules with every table's dtype set to `dtype` (None: as each rule says)."""
    return rules if dtype is None else [dataclasses.replace(r, dtype=dtype) for r in rules]


def with_tensor_prefix(rules: list[MappingRule], prefix: str) -> list[MappingRule]:
    """`rules` for a checkpoint that nests the tensors they name under `prefix` (`model.`
    and the like): each tensor pattern, and each scales name, starts with it."""
    if not prefix:
        return rules
    literal = prefix.replace("{", "{{").replace("}", "}}")
    return [
        dataclasses.replace(
            rule,
            tensor=re.compile(re.escape(prefix) + rule.tensor.pattern),
            scales=None if rule.scales is None else literal + rule.scales,
        )
        for rule in rules
    ]


def mapping_rules(document: Any, source: str = "mapping") -> list[MappingRule]:
    if not isinstance(document, dict) or not isinstance(document.get("tables"), list):
        raise MappingError(f"{source}: expected {{'tables': [rules]}}")
    rules = []
    for i, rule in enumerate(document["tables"]):
        if not isinstance(rule, dict):
            raise MappingError(f"{source}: rule {i} is {rule!r}, not an object")
        unknown = set(rule) - {"tensor", "table", "scales", "dtype", "comment"}
        if unknown or "tensor" not in rule or "table" not in rule:
            raise MappingError(
                f"{source}: rule {i} needs 'tensor' and 'table' (and may have 'scales', "
                f"'dtype', 'comment'); got {sorted(rule)}"
            )
        for key in ("tensor", "table", "scales"):
            if key in rule and not isinstance(rule[key], str):
                raise MappingError(f"{source}: rule {i}: {key!r} must be a string")
        try:
            pattern = re.compile(rule["tensor"])
        except re.error as error:
            raise MappingError(f"{source}: rule {i}: bad tensor pattern: {error}") from None
        dtype = rule.get("dtype")
        if dtype is not None and dtype not in VALUE_TENSOR_DTYPES:
            raise MappingError(
                f"{source}: rule {i}: dtype must be one of {list(VALUE_TENSOR_DTYPES)}"
            )
        # Filled as a tensor that matches would fill them, so a placeholder no group can
        # fill is named now rather than at the first match.
        groups = dict.fromkeys(pattern.groupindex, "0")
        _filled(rule["table"], groups, f"{source}: rule {i}: table")
        if "scales" in rule:
            _filled(rule["scales"], {"name": "x", **groups}, f"{source}: rule {i}: scales")
        rules.append(MappingRule(pattern, rule["table"], rule.get("scales"), dtype))
    return rules


def _filled(template: str, values: dict[str, str], what: str) -> str:
    """`template` with its placeholders filled from `values`, or a MappingError naming it."""
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise MappingError(
            f"{what} {template!r} has a placeholder that {sorted(values)} cannot fill ({error!r})"
        ) from None


@dataclass
class TablePart:
    """Tensor rows that fill the table's rows from `first_row` on."""

    tensor: str
    scales: str | None
    first_row: int
    rows: int


@dataclass
class ImportPlan:
    table: str
    dtype: str
    dim: int
    parts: list[TablePart] = field(default_factory=list)
    # The Engram layer its tensors' names give (the mapping's `layer` group), if any.
    layer: int | None = None

    @property
    def num_rows(self) -> int:
        return sum(p.rows for p in self.parts)


def plan_import(
    checkpoint: Checkpoint, rules: list[MappingRule]
) -> tuple[list[ImportPlan], list[str]]:
    """The tables a checkpoint fills under `rules`, and the tensors no rule took."""
    matched: dict[str, list[tuple[int, str, str | None, str | None]]] = {}
    scale_names: set[str] = set()
    layers: dict[str, set[int]] = {}
    for name in checkpoint.names():
        for rule in rules:
            found = rule.tensor.fullmatch(name)
            if found is None:
                continue
            groups = {k: v for k, v in found.groupdict().items() if v is not None}
            table = _filled(rule.table, groups, f"tensor {name}: table")
            scales = (
                _filled(rule.scales, {"name": name, **groups}, f"tensor {name}: scales")
                if rule.scales
                else None
            )
            if scales is not None:
                scale_names.add(scales)
            if not groups.get("head", "0").isdigit():
                raise MappingError(
                    f"tensor {name}: its head group must be digits, got {groups['head']!r}"
                )
            head = int(groups.get("head", 0))
            matched.setdefault(table, []).append((head, name, scales, rule.dtype))
            if groups.get("layer", "").isdigit():
                layers.setdefault(table, set()).add(int(groups["layer"]))
            break
    plans = []
    for table, parts in sorted(matched.items()):
        parts = [p for p in parts if p[1] not in scale_names]
        if not parts:
            continue
        parts.sort()
        if len({head for head, *_ in parts}) != len(parts):
            raise MappingError(f"table {table}: several tensors map to the same head: {parts}")
        plan = _plan_table(checkpoint, table, parts)
        if len(layers.get(table, ())) == 1:
            (plan.layer,) = layers[table]
        plans.append(plan)
    taken = {p.tensor for plan in plans for p in plan.parts} | scale_names
    return plans, [n for n in checkpoint.names() if n not in taken]


def _plan_table(
    checkpoint: Checkpoint, table: str, parts: list[tuple[int, str, str | None, str | None]]
) -> ImportPlan:
    plan: ImportPlan | None = None
    for _, name, scales, wanted in parts:
        info = checkpoint.info(name)
        if len(info.shape) != 2 or info.dtype not in TABLE_DTYPE_OF:
            raise MappingError(
                f"tensor {name}: a table's rows are a 2-D tensor of "
                f"{sorted(TABLE_DTYPE_OF)}, got {info.dtype} {list(info.shape)}"
            )
        source = TABLE_DTYPE_OF[info.dtype]
        dtype = wanted or source
        if source in FLOAT_DTYPES and dtype not in (source, "float32"):
            raise MappingError(
                f"tensor {name}: {source} rows import into a {source} or float32 table (exactly), "
                f"not {dtype}"
            )
        if source not in FLOAT_DTYPES and dtype not in (source, *DEQUANTIZED_DTYPES):
            raise MappingError(
                f"tensor {name}: {source} rows import as {source} (to serve) or dequantized "
                f"into {' or '.join(DEQUANTIZED_DTYPES)} (to train), not {dtype}"
            )
        rows, dim = info.shape
        if source not in FLOAT_DTYPES:
            _check_scales(checkpoint, name, scales, source, rows, dim)
        if plan is None:
            plan = ImportPlan(table, dtype, dim)
        elif (plan.dim, plan.dtype) != (dim, dtype):
            raise MappingError(f"table {table}: heads disagree on dim or dtype ({name})")
        plan.parts.append(TablePart(name, scales, plan.num_rows, rows))
    assert plan is not None
    return plan


def _check_scales(
    checkpoint: Checkpoint, name: str, scales: str | None, dtype: str, rows: int, dim: int
) -> None:
    if scales is None or scales not in checkpoint.names():
        raise MappingError(
            f"tensor {name} holds {dtype} values: its rule must name their scale tensor "
            f"('scales'), which the checkpoint must hold (looked for {scales!r})"
        )
    info = checkpoint.info(scales)
    allowed = ("F8_E8M0", "U8", "F32") if dtype == "fp8_e4m3" else ("F32",)
    if info.shape != (rows, dim // QUANT_GROUP) or info.dtype not in allowed:
        raise MappingError(
            f"scale tensor {scales}: expected {allowed} of shape [{rows}, {dim // QUANT_GROUP}] "
            f"(one per {QUANT_GROUP} values), got {info.dtype} {list(info.shape)}"
        )


def packed_rows(
    checkpoint: Checkpoint, part: TablePart, dtype: str, start: int, stop: int
) -> npt.NDArray[Any]:
    """Rows `[start, stop)` of a part as the table stores them: float rows in `dtype`
    (uint16 bits for bfloat16), quantized rows as bytes, values then scales."""
    values = checkpoint.rows(part.tensor, start, stop)
    source = TABLE_DTYPE_OF[checkpoint.info(part.tensor).dtype]
    if source in FLOAT_DTYPES:
        return _float_rows(values, source, dtype)
    assert part.scales is not None
    scales = checkpoint.rows(part.scales, start, stop)
    scale_dtype = checkpoint.info(part.scales).dtype
    if source == "fp8_e4m3" and scale_dtype == "F32":
        scales = _e8m0_codes(scales, part.scales)
    packed = np.concatenate([values.view(np.uint8), scales.view(np.uint8)], axis=1)
    if dtype == source:
        return packed
    return _dequantized(packed, source, values.shape[1], dtype, part.tensor, start)


def _dequantized(
    packed: npt.NDArray[np.uint8], source: str, dim: int, dtype: str, tensor: str, first: int
) -> npt.NDArray[Any]:
    """Quantized rows as float32, or bfloat16 where every value is exact in it (a value's
    code times its power-of-two scale: exact but for scales below 2^-120 or so, where
    bfloat16 runs out of exponent)."""
    rows = _native.rows_to_float32(source, dim, np.ascontiguousarray(packed))
    if dtype == "float32":
        return rows
    bits = rows.view(np.uint32)
    inexact = (bits & 0xFFFF) != 0
    if inexact.any():
        row = first + int(np.argwhere(inexact)[0][0])
        raise MappingError(
            f"tensor {tensor}: row {row} holds values that bfloat16 cannot hold exactly "
            "(scales that small): import it as float32"
        )
    return (bits >> 16).astype(np.uint16)


def _float_rows(values: npt.NDArray[Any], source: str, dtype: str) -> npt.NDArray[Any]:
    """Float rows in the table's dtype: their own, or float32 (which holds them exactly)."""
    if source == dtype:
        return values
    if source == "bfloat16":
        return bfloat16_to_float32(values)
    return values.astype(np.float32)


def _e8m0_codes(scales: npt.NDArray[np.float32], name: str) -> npt.NDArray[np.uint8]:
    """Float32 scales that are powers of two as E8M0 codes (2^-127 is a subnormal)."""
    bits = np.ascontiguousarray(scales).view(np.uint32)
    exponent = (bits >> 23) & 0xFF
    normal = ((bits & 0x807F_FFFF) == 0) & (exponent > 0) & (exponent < 255)
    smallest = bits == 0x0040_0000
    if not (normal | smallest).all():
        raise MappingError(f"scale tensor {name}: FP8 scales must be powers of two (E8M0)")
    return np.where(smallest, 0, exponent).astype(np.uint8)


def import_checkpoint(
    client: Any,
    path: str | os.PathLike[str],
    rules: list[MappingRule],
    progress: Progress | None = None,
    replace: bool = False,
    expected: Callable[[HashIdentity], HashIdentity | None] | None = None,
    check_replaced: bool = True,
    hash_config_of: Callable[[int], pb.HashConfig | None] | None = None,
    optimizer: OptimizerSpec | None = None,
) -> list[TableInfo]:
    """Imports every table the mapping finds in the checkpoint at `path` (a safetensors
    file or an index.json); returns the tables, visible and durable. With `replace`, a
    table that exists serves on until its import is complete, then is swapped for it.

    A table whose file carries a hash identity (client/hash_identity.py) must match the
    identity of the table it replaces (unless not `check_replaced`), and `expected(identity)`
    (the identity the user's config gives the file's layer; None: that config has none to
    compare), or nothing is imported: `HashIdentityMismatch` names the fields.

    `hash_config_of(layer)`: the hash config a table of that Engram layer (the mapping's
    `layer` group) is created with, so that it carries its identity (and serves
    `lookup_tokens`); None for none. Without one, a table replaced by a file that carries
    its very identity keeps its hash config. `optimizer`: what trains the tables (a float
    table's; default SGD)."""
    imported = []
    # Slices are read and packed while the one before travels: disk, CPU and daemon busy
    # at once.
    with Checkpoint(path) as checkpoint, ThreadPoolExecutor(1) as sender:
        plans, _ = plan_import(checkpoint, rules)
        if not plans:
            raise MappingError(f"no tensor of {os.fspath(path)} matches the mapping")
        carried = identities_in_metadata(checkpoint.metadata(), os.fspath(path))
        # The tables an import with `replace` may replace, listed once.
        served = {t.name: t for t in client.list_tables()} if replace else {}
        check_identities(plans, carried, expected, served if check_replaced else {})
        for plan in plans:
            hashing = None
            if hash_config_of is not None and plan.layer is not None:
                configured = hash_config_of(plan.layer)
                hashing = None if configured is None else hash_from_proto(configured)
            replaced, identity = served.get(plan.table), carried.get(plan.table)
            # A new version of a table, hashed as it is, keeps its hashing (and identity).
            if hashing is None and replaced is not None and identity is not None:
                hashing = (
                    client.spec(plan.table).hash_config
                    if replaced.hash_identity == identity
                    else None
                )
            spec = TableSpec(
                plan.table,
                plan.num_rows,
                plan.dim,
                dtype=plan.dtype,
                init="zeros",
                optimizer=optimizer or OptimizerSpec(),
                hash_config=hashing,
            )
            client.create(spec, importing=True, replace_existing=replace)
            step = max(1, CHUNK_BYTES // row_bytes(plan.dtype, plan.dim))
            done = 0
            if progress is not None:
                progress(plan.table, 0, plan.num_rows)  # its clock starts here
            sending: Future[None] | None = None
            for part in plan.parts:
                for start, stop in row_ranges(part.rows, step):
                    rows = packed_rows(checkpoint, part, plan.dtype, start, stop)
                    if sending is not None:
                        sending.result()
                    sending = sender.submit(
                        client.write_rows, plan.table, part.first_row + start, rows, plan.dtype
                    )
                    done += stop - start
                    if progress is not None:
                        progress(plan.table, done, plan.num_rows)
            if sending is not None:
                sending.result()
            imported.append(client.finish_import(plan.table))
    return imported


class HashIdentityMismatch(MappingError):
    """A checkpoint's tables were hashed otherwise than their target: importing them would
    serve wrong rows without an error."""


def check_identities(
    plans: list[Any],
    carried: dict[str, HashIdentity],
    expected: Callable[[HashIdentity], HashIdentity | None] | None,
    replaced: dict[str, TableInfo],
) -> None:
    """Refuses a plan whose file identity differs from `expected`'s for it or from the
    table of `replaced` it would replace."""
    for plan in plans:
        identity = carried.get(plan.table)
        if identity is None:
            continue
        targets: list[tuple[str, HashIdentity | None]] = []
        if expected is not None:
            targets.append(("the given config", expected(identity)))
        if plan.table in replaced:
            targets.append((f"table {plan.table!r}", replaced[plan.table].hash_identity))
        for what, target in targets:
            if target is None:
                continue
            differing = identity.differences(target)
            if differing:
                raise HashIdentityMismatch(
                    f"the checkpoint's {plan.table!r} was hashed otherwise than {what}: "
                    f"{'; '.join(differing)} (file's first); --ignore-hash-identity imports "
                    "it anyway"
                )


def export_tables(
    client: Any,
    tables: Iterable[str],
    path: str | os.PathLike[str],
    dtype: str | None = None,
    scale_suffix: str = "_scale",
    progress: Progress | None = None,
) -> list[TensorSpec]:
    """Writes each table as a tensor named after it (quantized: values, plus scales named
    `table + scale_suffix`), in `dtype` (default: as stored; a float table can be written
    quantized). Returns the tensors written."""
    infos = [client.describe(name) for name in tables]
    identities = {i.name: i.hash_identity.to_json() for i in infos if i.hash_identity}
    metadata = {METADATA_KEY: json.dumps(identities)} if identities else None
    tensors: list[TensorSpec] = []
    for info in infos:
        out = dtype or info.dtype
        tensors.append(TensorSpec(info.name, VALUE_TENSOR_DTYPES[out], (info.num_rows, info.dim)))
        if out in SCALE_TENSOR_DTYPES:
            groups = info.dim // QUANT_GROUP
            shape = (info.num_rows, groups)
            tensors.append(TensorSpec(info.name + scale_suffix, SCALE_TENSOR_DTYPES[out], shape))
    writer = SafetensorsWriter(path, tensors, metadata)
    try:
        for info in infos:
            _export_table(client, writer, info, dtype or info.dtype, scale_suffix, progress)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return tensors


def _export_table(
    client: Any,
    writer: SafetensorsWriter,
    info: TableInfo,
    dtype: str,
    scale_suffix: str,
    progress: Progress | None,
) -> None:
    step = max(1, CHUNK_BYTES // row_bytes(dtype, info.dim))
    if progress is not None:
        progress(info.name, 0, info.num_rows)  # its clock starts here
    for start, stop in row_ranges(info.num_rows, step):
        rows = client.lookup(info.name, np.arange(start, stop, dtype=np.uint64), dtype=dtype)
        if dtype in FLOAT_DTYPES:
            writer.write_rows(info.name, start, rows)
        else:
            writer.write_rows(info.name, start, rows[:, : info.dim])
            writer.write_rows(info.name + scale_suffix, start, rows[:, info.dim :])
        if progress is not None:
            progress(info.name, stop, info.num_rows)
