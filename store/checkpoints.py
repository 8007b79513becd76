"""Checkpoints: consistent, atomically published snapshots of every table.

`data_dir/checkpoints/<id>/` holds one row pack per table (see rust/src/checkpoint.rs) and
`manifest.json` (tables, specs, steps, per-file sizes and CRC-32s, push idempotency state).
A checkpoint is built in a `.tmp-<id>` directory, fsynced, and published by one rename: a
crash leaves the previous checkpoints intact and the new one absent. The manifest carries
the CRC-32 of its own canonical JSON: an edited or damaged manifest is refused. An incremental pack
holds only rows changed since the parent checkpoint; restoring a table applies its packs
from its latest full pack forward onto fresh tables.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import zlib
from typing import Any

from store import _native
from store.conversions import table_spec_bytes, table_spec_of_bytes
from store.crash_points import crash_point
from store.data_dir import fsync_dir
from store.errors import NotFoundError
from store.served_table import ServedTable
from store.spec import TableSpec

MANIFEST = "manifest.json"


def checkpoints_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "checkpoints")


def _manifest_checksum(manifest: dict[str, Any]) -> int:
    body = {k: v for k, v in manifest.items() if k != "crc32"}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def write_checkpoint(
    data_dir: str,
    checkpoint_id: int,
    parent: dict[str, Any] | None,
    tables: list[ServedTable],
    clients: dict[str, Any],
    full: bool,
) -> dict[str, Any]:
    """Packs every table into a new checkpoint directory and publishes it. The caller holds
    pushes off for the duration. Returns the manifest."""
    root = checkpoints_dir(data_dir)
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f".tmp-{checkpoint_id}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        manifest = _write_unpublished(tmp, checkpoint_id, parent, tables, clients, full)
    except BaseException:
        # A full disk or a failed pack: nothing is published, and nothing is left taking room.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, os.path.join(root, str(checkpoint_id)))
    fsync_dir(root)
    crash_point("checkpoint:published")
    return manifest


def _write_unpublished(
    tmp: str,
    checkpoint_id: int,
    parent: dict[str, Any] | None,
    tables: list[ServedTable],
    clients: dict[str, Any],
    full: bool,
) -> dict[str, Any]:
    """Writes the packs and the manifest of a checkpoint into `tmp`, durably."""
    parent_incarnations = {t["name"]: t["incarnation"] for t in (parent or {}).get("tables", [])}
    entries = []
    for table in tables:
        # A table the parent does not know (new, or dropped and re-created) starts a new chain.
        table_full = full or parent_incarnations.get(table.name) != table.incarnation
        file = f"{table.name}.pack"
        rows, step, size, crc = table.native.write_pack(os.path.join(tmp, file), not table_full)
        entries.append(
            {
                "name": table.name,
                "file": file,
                "rows": rows,
                "step": step,
                "bytes": size,
                "crc32": crc,
                "full": table_full,
                "incarnation": table.incarnation,
                "spec": base64.b64encode(table_spec_bytes(table.spec)).decode(),
            }
        )
    manifest = {
        "id": checkpoint_id,
        "parent": parent["id"] if parent and not full else 0,
        "created_unix": time.time(),
        "tables": entries,
        "clients": clients,
    }
    manifest["crc32"] = _manifest_checksum(manifest)
    crash_point("checkpoint:packs-synced")
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    crash_point("checkpoint:manifest-synced")
    return manifest


def read_manifest(data_dir: str, checkpoint_id: int) -> dict[str, Any]:
    path = os.path.join(checkpoints_dir(data_dir), str(checkpoint_id), MANIFEST)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise NotFoundError(f"checkpoint {checkpoint_id} does not exist") from None
    return manifest_of_json(text, path)


def manifest_of_json(text: bytes | str, where: str) -> dict[str, Any]:
    """A manifest read from `where`, refused unless its checksum holds."""
    try:
        manifest: dict[str, Any] = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
        raise _native.TableFormatError(f"{where}: manifest is not JSON ({error})") from None
    if not isinstance(manifest, dict) or "crc32" not in manifest:
        raise _native.TableFormatError(
            f"{where}: manifest has no checksum (damaged, or written before checksums)"
        )
    if manifest["crc32"] != _manifest_checksum(manifest):
        raise _native.TableFormatError(
            f"{where}: manifest checksum mismatch (the manifest was changed or damaged)"
        )
    return manifest


def published_ids(data_dir: str) -> list[int]:
    """Ids of the checkpoint directories that were published (renamed into place)."""
    root = checkpoints_dir(data_dir)
    if not os.path.isdir(root):
        return []
    return sorted(
        int(name)
        for name in os.listdir(root)
        if name.isdigit() and os.path.isfile(os.path.join(root, name, MANIFEST))
    )


def remove_unpublished(data_dir: str) -> None:
    """Deletes what a crash left of checkpoints being written."""
    root = checkpoints_dir(data_dir)
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def spec_of(entry: dict[str, Any]) -> TableSpec:
    return table_spec_of_bytes(base64.b64decode(entry["spec"]))


class ManifestChain:
    """The manifests that restoring checkpoint `target` reads: each read and indexed by table
    name once, however many tables are restored from it (a restore of thousands of tables
    would otherwise read the parent's manifest once per table)."""

    def __init__(self, data_dir: str, target: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.target = target
        self._manifests: dict[int, dict[str, Any]] = {target["id"]: target}
        self._entries: dict[int, dict[str, dict[str, Any]]] = {}

    def _entry(self, checkpoint_id: int, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if checkpoint_id not in self._manifests:
            self._manifests[checkpoint_id] = read_manifest(self.data_dir, checkpoint_id)
        manifest = self._manifests[checkpoint_id]
        if checkpoint_id not in self._entries:
            self._entries[checkpoint_id] = {t["name"]: t for t in manifest["tables"]}
        return manifest, self._entries[checkpoint_id][name]

    def packs(self, name: str) -> list[tuple[int, dict[str, Any]]]:
        """Table `name`'s packs, (checkpoint id, manifest entry), newest first, back to its
        last full pack."""
        chain = []
        checkpoint_id = self.target["id"]
        while True:
            manifest, entry = self._entry(checkpoint_id, name)
            chain.append((checkpoint_id, entry))
            if entry["full"]:
                return chain
            checkpoint_id = manifest["parent"]


def restore_table(chain: ManifestChain, name: str, directory: str) -> ServedTable:
    """Rebuilds table `name` of the chain's checkpoint in the new `directory` by applying its
    chain of packs, each checked against the size and CRC-32 its manifest recorded."""
    packs = chain.packs(name)
    final = packs[0][1]
    table = ServedTable.create(directory, spec_of(final), final["incarnation"])
    for checkpoint_id, entry in reversed(packs):
        path = os.path.join(checkpoints_dir(chain.data_dir), str(checkpoint_id), entry["file"])
        apply_checked_pack(
            table, path, entry["rows"], entry["step"], entry["bytes"], entry["crc32"]
        )
    table.native.clear_dirty()
    table.native.flush()
    return table


def apply_checked_pack(
    table: ServedTable, path: str, rows: int, step: int, size: int, crc32: int
) -> None:
    """Applies the pack at `path` onto `table`, which must be a copy to throw away if it
    fails: the engine refuses a damaged pack (its own checksum) before applying anything,
    and this one that is not the pack its manifest describes after (one read of the pack,
    not two)."""
    found = table.native.apply_pack(path)
    if found != (rows, step, size, crc32):
        raise _native.TableFormatError(
            f"{path}: pack does not match its manifest (rows, step, bytes, crc32 "
            f"{found[0]}, {found[1]}, {found[2]}, {found[3]:#x}; expected {rows}, {step}, "
            f"{size}, {crc32:#x})"
        )
