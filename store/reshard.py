"""Resharding: the tables of a checkpoint taken on some daemons laid out anew over others.

Offline, with every daemon involved stopped: each source data directory (in shard order) has
each table of its checkpoint rebuilt from its packs; every target data directory (new or
empty) gets each table's row range as `EngramClient` lays tables out over that many daemons
(shard i holds rows `[i * rows // n, (i + 1) * rows // n)`), its rows and optimizer state
copied bit for bit and its step the sources', and then a full checkpoint of its own. Daemons
started on the targets serve the tables as they were at the checkpoint, ready to train on.
Each target is built in a hidden directory beside it and renamed into place once every
target is complete: a reshard that fails before then leaves the targets as it found them.

Shards of a table that stepped apart (a push that reached only some shards counts a step on
those only) cannot be merged exactly, and are refused. Push idempotency windows are not
carried: a client must not resend pushes acknowledged before the checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass

from store.checkpoints import ManifestChain, published_ids, read_manifest, restore_table
from store.data_dir import fsync_dir
from store.engine import StoreEngine
from store.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from store.served_table import ServedTable
from store.spec import TableSpec


@dataclass(frozen=True)
class ReshardedTable:
    name: str
    num_rows: int
    step: int
    # Rows stored in each target shard.
    rows_per_target: list[int]


def reshard(sources: list[str], targets: list[str], checkpoint_id: int = 0) -> list[ReshardedTable]:
    """Lays the tables of checkpoint `checkpoint_id` (0: each source's latest) of the daemons
    whose data directories are `sources` out over new daemons at `targets`."""
    if not sources or not targets:
        raise InvalidArgumentError("reshard needs at least one source and one target")
    for kind, directories in (("sources", sources), ("targets", targets)):
        real = [os.path.realpath(d) for d in directories]
        if len(set(real)) != len(real):
            raise InvalidArgumentError(f"{kind} name one directory twice: {directories}")
    for target in targets:
        if os.path.exists(target) and os.listdir(target):
            raise FailedPreconditionError(f"target {target} is not empty")
    parents = [os.path.dirname(os.path.abspath(t)) for t in targets]
    for parent in parents:
        os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parents[0], prefix=".reshard-") as work:
        shards = _rebuilt_shards(sources, checkpoint_id, work)
        plans = {name: _plan(name, tables, len(targets)) for name, tables in shards.items()}
        stages: list[str] = []
        try:
            for parent, target in zip(parents, targets, strict=True):
                stages.append(_stage_beside(parent, target))
            done = _build(stages, plans, shards)
            for stage, target in zip(stages, targets, strict=True):
                os.replace(stage, target)  # onto nothing, or an empty directory
            for parent in set(parents):
                fsync_dir(parent)
        finally:
            for stage in stages:
                shutil.rmtree(stage, ignore_errors=True)
    return done


def _stage_beside(parent: str, target: str) -> str:
    """A new hidden directory in `target`'s `parent` (renaming it into place stays on one
    file system), with the permissions `target` has or a new directory would get."""
    stage = os.path.join(parent, f".reshard-{uuid.uuid4().hex}")
    os.mkdir(stage)
    if os.path.isdir(target):
        os.chmod(stage, stat.S_IMODE(os.stat(target).st_mode))
    return stage


def _build(
    stages: list[str],
    plans: dict[str, tuple[TableSpec, int, list[int]]],
    shards: dict[str, list[tuple[ServedTable, int]]],
) -> list[ReshardedTable]:
    """Every table laid out over daemons at `stages`, each then holding a full checkpoint."""
    engines: list[StoreEngine] = []
    try:
        for stage in stages:
            engines.append(StoreEngine(stage))
        done = [_lay_out(engines, *plans[name], shards[name]) for name in plans]
        for engine in engines:
            engine.checkpoint(full=True)
    finally:
        for engine in engines:
            engine.close()
    return done


def _lay_out(
    engines: list[StoreEngine],
    spec: TableSpec,
    step: int,
    bounds: list[int],
    sources: list[tuple[ServedTable, int]],
) -> ReshardedTable:
    """One table created on every target engine, each its row range, copied from the
    source shards, at the sources' step."""
    counts = []
    for i, engine in enumerate(engines):
        engine.create_table(
            dataclasses.replace(
                spec,
                num_rows=bounds[i + 1] - bounds[i],
                first_row=bounds[i],
                # Token hashing knows the whole table: one daemon's only.
                hash_config=spec.hash_config if len(engines) == 1 else None,
            )
        )
        native = engine.table(spec.name).native
        counts.append(sum(native.copy_rows_from(source.native) for source, _ in sources))
        native.set_step(step)
    return ReshardedTable(spec.name, bounds[-1], step, counts)


def _rebuilt_shards(
    sources: list[str], checkpoint_id: int, work: str
) -> dict[str, list[tuple[ServedTable, int]]]:
    """Every table of each source's checkpoint rebuilt in `work`, with its step, by name."""
    shards: dict[str, list[tuple[ServedTable, int]]] = {}
    names: set[str] | None = None
    for index, source in enumerate(sources):
        ids = published_ids(source)
        if not ids:
            raise NotFoundError(f"{source} holds no checkpoint")
        manifest = read_manifest(source, checkpoint_id or ids[-1])
        entries = manifest["tables"]
        if names is not None and {e["name"] for e in entries} != names:
            raise FailedPreconditionError(f"{source} holds other tables than {sources[0]}")
        names = {e["name"] for e in entries}
        os.makedirs(os.path.join(work, str(index)))
        chain = ManifestChain(source, manifest)
        for entry in entries:
            directory = os.path.join(work, str(index), entry["name"])
            table = restore_table(chain, entry["name"], directory)
            shards.setdefault(entry["name"], []).append((table, entry["step"]))
    return shards


def _plan(
    name: str, tables: list[tuple[ServedTable, int]], targets: int
) -> tuple[TableSpec, int, list[int]]:
    """The whole table's spec, its step, and the row bounds of `targets` shards."""
    ordered = sorted(tables, key=lambda t: t[0].spec.first_row)
    rows = 0
    for table, _ in ordered:
        if table.spec.first_row != rows:
            raise FailedPreconditionError(
                f"table {name!r}: a shard starts at row {table.spec.first_row}, not {rows}: "
                "pass every daemon of the table, in shard order"
            )
        rows += table.spec.num_rows
    steps = sorted({step for _, step in ordered})
    if len(steps) > 1:
        raise FailedPreconditionError(
            f"table {name!r}: its shards are at steps {steps} (pushes that reached only some of "
            "them), which no single table can continue exactly"
        )
    spec = dataclasses.replace(ordered[0][0].spec, num_rows=rows, first_row=0)
    return spec, steps[0], [i * rows // targets for i in range(targets + 1)]
