"""Restoring many tables reads each manifest of the checkpoint chain once, not once per
table: restoring is linear in the tables, where it was quadratic (3,000 tables, a full then
an incremental checkpoint: 93 s of 106 in re-reading one manifest). `bench/restore_scale.py`
records the time per table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from store_helpers import push_command, table_spec

import store.checkpoints
import store.engine
from store.engine import StoreEngine


def checkpointed_engine(data: Path, tables: int) -> StoreEngine:
    """`tables` small tables, each pushed once, in a full and then an incremental checkpoint
    (only some tables changed in between: the others' entries point back to the full)."""
    engine = StoreEngine(str(data))
    for i in range(tables):
        engine.create_table(table_spec(f"t{i}", num_rows=16, dim=4))
        engine.push(push_command(f"t{i}", [1], np.ones((1, 4), np.float32)))
    engine.checkpoint(full=True)
    for i in range(0, tables, 3):
        engine.push(push_command(f"t{i}", [2], np.ones((1, 4), np.float32)))
    engine.checkpoint(full=False)
    return engine


@pytest.mark.parametrize("tables", [10, 200])
def test_a_restore_reads_each_manifest_of_the_chain_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tables: int
) -> None:
    engine = checkpointed_engine(tmp_path / "data", tables)
    try:
        reads: list[int] = []
        original = store.checkpoints.read_manifest

        def counted(data_dir: str, checkpoint_id: int) -> dict[str, object]:
            reads.append(checkpoint_id)
            return original(data_dir, checkpoint_id)

        monkeypatch.setattr(store.checkpoints, "read_manifest", counted)
        monkeypatch.setattr(store.engine, "read_manifest", counted)
        engine.restore(0)
        assert sorted(reads) == [1, 2], f"manifests read: {len(reads)} for {tables} tables"
        for i in (0, 1, tables - 1):
            status = engine.table(f"t{i}").status()
            changed_twice = i % 3 == 0
            assert (status.step, status.written_rows) == ((2, 2) if changed_twice else (1, 1)), (
                f"table t{i}"
            )
    finally:
        engine.close()
