"""The LMDB catalog: tables (spec and step), checkpoints, push idempotency state, counters.

Row data and optimizer state live in the tables' memory-mapped files; everything needed to
reopen them lives here. Each method is one LMDB transaction.
"""

from __future__ import annotations

import json
import os
from typing import Any

import lmdb

from store.conversions import table_spec_bytes, table_spec_of_bytes
from store.spec import TableSpec

# "importing" names the tables whose import is unfinished: hidden until it is.
_DATABASES = (
    b"tables",
    b"steps",
    b"incarnations",
    b"checkpoints",
    b"clients",
    b"meta",
    b"importing",
)


class Catalog:
    # Address space, not disk: LMDB's file grows with what it holds. Every key and value is
    # bounded at the door (names, client ids, idempotency windows), so a full map needs far
    # more tables and clients than the daemon accepts.
    def __init__(self, path: str | os.PathLike[str], map_size: int = 1 << 36) -> None:
        self._env = lmdb.open(
            os.fspath(path), map_size=map_size, max_dbs=len(_DATABASES), subdir=True
        )
        self._db = {name.decode(): self._env.open_db(name) for name in _DATABASES}

    def close(self) -> None:
        self._env.close()

    def sync(self) -> None:
        self._env.sync(True)

    # tables -------------------------------------------------------------------------

    def put_table(
        self, spec: TableSpec, step: int, incarnation: str, importing: bool = False
    ) -> None:
        with self._env.begin(write=True) as txn:
            self._put_table(txn, spec, step, incarnation)
            if importing:
                txn.put(spec.name.encode(), b"1", db=self._db["importing"])

    def finish_import(self, name: str) -> None:
        with self._env.begin(write=True) as txn:
            txn.delete(name.encode(), db=self._db["importing"])

    def importing(self) -> set[str]:
        """The tables whose import is unfinished."""
        with self._env.begin() as txn:
            return {k.decode() for k, _ in txn.cursor(db=self._db["importing"])}

    def _put_table(self, txn: Any, spec: TableSpec, step: int, incarnation: str) -> None:
        key = spec.name.encode()
        txn.put(key, table_spec_bytes(spec), db=self._db["tables"])
        txn.put(key, str(step).encode(), db=self._db["steps"])
        txn.put(key, incarnation.encode(), db=self._db["incarnations"])

    def record_flush(
        self, steps: dict[str, int], windows: dict[str, dict[str, Any]], fence: int
    ) -> None:
        """One transaction: each table's step, each client's window, and the push token
        below which every push is recorded here (`pushes_fenced`)."""
        with self._env.begin(write=True) as txn:
            for name, step in steps.items():
                txn.put(name.encode(), str(step).encode(), db=self._db["steps"])
            self._put_clients(txn, windows)
            txn.put(b"pushes_fenced", str(fence).encode(), db=self._db["meta"])

    def record_restore(
        self,
        tables: list[tuple[TableSpec, int, str]],
        windows: dict[str, dict[str, Any]],
        checkpoint_id: int,
    ) -> None:
        """One transaction: the tables of a restored checkpoint replace every table, its
        windows every window, and it becomes the basis of the next checkpoint."""
        with self._env.begin(write=True) as txn:
            for db in ("tables", "steps", "incarnations", "clients", "importing"):
                txn.drop(self._db[db], delete=False)
            for spec, step, incarnation in tables:
                self._put_table(txn, spec, step, incarnation)
            self._put_clients(txn, windows)
            txn.put(b"basis", str(checkpoint_id).encode(), db=self._db["meta"])

    def record_followed(
        self,
        tables: list[tuple[TableSpec, int, str]],
        windows: dict[str, dict[str, Any]],
        store_id: str,
        checkpoint_id: int,
    ) -> None:
        """One transaction: a follower's tables and windows become those of the leader's
        checkpoint, which it now holds, and its catch-up is finished."""
        with self._env.begin(write=True) as txn:
            for db in ("tables", "steps", "incarnations", "clients", "importing"):
                txn.drop(self._db[db], delete=False)
            for spec, step, incarnation in tables:
                self._put_table(txn, spec, step, incarnation)
            self._put_clients(txn, windows)
            meta = self._db["meta"]
            txn.put(b"followed_store", store_id.encode(), db=meta)
            txn.put(b"followed_checkpoint", str(checkpoint_id).encode(), db=meta)
            txn.delete(b"follow_applying", db=meta)

    def delete_table(self, name: str) -> None:
        with self._env.begin(write=True) as txn:
            for db in ("tables", "steps", "incarnations", "importing"):
                txn.delete(name.encode(), db=self._db[db])

    def tables(self) -> list[tuple[TableSpec, int, str]]:
        """Every table as (spec, step at the last flush, incarnation), by name."""
        out = []
        with self._env.begin() as txn:
            for key, value in txn.cursor(db=self._db["tables"]):
                spec = table_spec_of_bytes(value)
                step = int(txn.get(key, db=self._db["steps"]) or b"0")
                incarnation = (txn.get(key, db=self._db["incarnations"]) or b"").decode()
                out.append((spec, step, incarnation))
        return out

    # checkpoints ----------------------------------------------------------------------

    def put_checkpoint(self, manifest: dict[str, Any]) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(
                manifest["id"].to_bytes(8, "big"),
                json.dumps(manifest).encode(),
                db=self._db["checkpoints"],
            )

    def delete_checkpoint(self, checkpoint_id: int) -> None:
        with self._env.begin(write=True) as txn:
            txn.delete(checkpoint_id.to_bytes(8, "big"), db=self._db["checkpoints"])

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every published checkpoint's manifest, oldest first."""
        with self._env.begin() as txn:
            return [json.loads(v) for _, v in txn.cursor(db=self._db["checkpoints"])]

    def checkpoint_count(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._db["checkpoints"])["entries"])

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest published checkpoint's manifest (ids are stored big-endian, so the
        last key is the newest), read alone."""
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._db["checkpoints"])
            return json.loads(cursor.value()) if cursor.last() else None

    # push idempotency and other counters ----------------------------------------------

    def _put_clients(self, txn: Any, windows: dict[str, dict[str, Any]]) -> None:
        """Replaces the stored windows (clients evicted from memory go too)."""
        txn.drop(self._db["clients"], delete=False)
        for client_id, window in windows.items():
            txn.put(client_id.encode(), json.dumps(window).encode(), db=self._db["clients"])

    def clients(self) -> dict[str, dict[str, Any]]:
        with self._env.begin() as txn:
            return {k.decode(): json.loads(v) for k, v in txn.cursor(db=self._db["clients"])}

    def get_meta(self, key: str, default: str = "") -> str:
        with self._env.begin() as txn:
            value = txn.get(key.encode(), db=self._db["meta"])
        return value.decode() if value is not None else default

    def put_meta(self, key: str, value: str) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(key.encode(), value.encode(), db=self._db["meta"])

    def delete_meta(self, key: str) -> None:
        with self._env.begin(write=True) as txn:
            txn.delete(key.encode(), db=self._db["meta"])
