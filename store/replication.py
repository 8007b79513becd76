"""Replication by checkpoints: what a follower (or an incremental backup) needs to turn one
checkpoint of a store into its latest.

Every table of a checkpoint has a chain of packs: its latest full pack, then one
incremental pack per later checkpoint holding the rows changed since its parent (see
store/checkpoints.py). A caller holding checkpoint `since` needs, for each table, the packs
after `since` on that chain, or, when the chain does not pass through `since` (the table is
new or was re-created, a restore branched off, `since` belongs to another store), the whole
chain from its full pack, applied to a fresh table. Packs hold whole rows (values and
optimizer state), so applying them reproduces the checkpoint bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from store.checkpoints import checkpoints_dir
from store.requests import ChangedPack, ChangedTable, Changes

# Pack bytes per streamed message: well below any message limit, large enough to keep the
# per-message cost negligible.
CHUNK_BYTES = 4 << 20


def plan_changes(
    store_id: str, history: list[dict[str, Any]], since: int, data_dir: str
) -> Changes:
    """The changes from checkpoint `since` (0: none held) of this store to the latest of
    `history` (every published manifest, oldest first)."""
    if not history or history[-1]["id"] == since:
        return Changes(store_id, since if history else 0, None, [])
    by_id = {m["id"]: m for m in history}
    latest = history[-1]
    tables = []
    for entry in latest["tables"]:
        name = entry["name"]
        chain: list[ChangedPack] = []
        reset = True
        manifest = latest
        while True:
            table = next(t for t in manifest["tables"] if t["name"] == name)
            if manifest["id"] == since:
                reset = False
                break
            path = os.path.join(checkpoints_dir(data_dir), str(manifest["id"]), table["file"])
            chain.append(
                ChangedPack(
                    manifest["id"],
                    table["rows"],
                    table["step"],
                    table["bytes"],
                    table["crc32"],
                    path,
                )
            )
            if table["full"]:
                break
            manifest = by_id[manifest["parent"]]
        tables.append(ChangedTable(name, reset, chain[::-1]))
    return Changes(store_id, latest["id"], latest, tables)


def pack_chunks(changes: Changes) -> Iterator[tuple[str, int, bytes]]:
    """The bytes of every pack of `changes`, in order, as (table, checkpoint, chunk)."""
    for table in changes.tables:
        for pack in table.packs:
            with open(pack.path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield table.name, pack.checkpoint, chunk
