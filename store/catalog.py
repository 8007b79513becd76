"""The LMDB catalog: tables (spec and step), checkpoints, push idempotency state, counters.

Row data and optimizer state live in the tables' memory-mapped files; everything needed to
reopen them lives here. Each method is one LMDB transaction. LMDB keeps no checksums, so
every value is sealed with a CRC-32 of its database, key and value: a flipped byte is
refused with an error naming the catalog and the entry (`TableFormatError`), never read as
another spec, step or window. A catalog written before values were sealed is sealed in one
transaction when first opened.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lmdb

from store._native import TableFormatError
from store.conversions import table_spec_bytes, table_spec_of_bytes
from store.errors import FailedPreconditionError
from store.spec import TableSpec

# "importing" names the tables whose import is unfinished: hidden until it is.
# "replacements" holds imports staged to replace a live table (store/replacement.py).
_DATABASES = (
    b"tables",
    b"steps",
    b"incarnations",
    b"checkpoints",
    b"clients",
    b"meta",
    b"importing",
    b"replacements",
)
# Kept unsealed in "meta": how values are stored.
_FORMAT_KEY, _SEALED = b"value-format", b"crc32-v1"


class _Sealed:
    """One LMDB transaction, sealing the values it writes and checking those it reads."""

    def __init__(self, txn: Any, dbs: dict[str, Any], path: str) -> None:
        self._txn, self._dbs, self._path = txn, dbs, path

    @staticmethod
    def seal(db: str, key: bytes, value: bytes) -> bytes:
        return value + struct.pack(
            "<I", zlib.crc32(value, zlib.crc32(key, zlib.crc32(db.encode())))
        )

    def _open(self, db: str, key: bytes, sealed: bytes) -> bytes:
        value = sealed[:-4]
        if len(sealed) < 4 or self.seal(db, key, value) != sealed:
            raise TableFormatError(
                f"{self._path}: catalog entry {db}/{key!r} is damaged (checksum mismatch); "
                "restore the data directory from a checkpoint (serve --restore on a copy "
                "holding only checkpoints/)"
            )
        return value

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, self.seal(db, key, value), db=self._dbs[db])

    def get(self, db: str, key: bytes) -> bytes | None:
        sealed = self._txn.get(key, db=self._dbs[db])
        return None if sealed is None else self._open(db, key, sealed)

    def items(self, db: str) -> Iterator[tuple[bytes, bytes]]:
        for key, sealed in self._txn.cursor(db=self._dbs[db]):
            yield key, self._open(db, key, sealed)

    def last(self, db: str) -> bytes | None:
        cursor = self._txn.cursor(db=self._dbs[db])
        return self._open(db, cursor.key(), cursor.value()) if cursor.last() else None

    def count(self, db: str) -> int:
        return int(self._txn.stat(self._dbs[db])["entries"])

    def delete(self, db: str, key: bytes) -> None:
        self._txn.delete(key, db=self._dbs[db])

    def drop(self, db: str) -> None:
        self._txn.drop(self._dbs[db], delete=False)


class Catalog:
    # Address space, not disk: LMDB's file grows with what it holds. Every key and value is
    # bounded at the door (names, client ids, idempotency windows), so a full map needs far
    # more tables and clients than the daemon accepts.
    def __init__(
        self, path: str | os.PathLike[str], map_size: int = 1 << 36, read_only: bool = False
    ) -> None:
        """With `read_only` (read-only media), the catalog is only read: no transaction
        writes, and LMDB's lock file is neither created nor used (nothing writes it)."""
        self._path = os.fspath(path)
        self._env = lmdb.open(
            self._path,
            map_size=map_size,
            max_dbs=len(_DATABASES),
            subdir=True,
            readonly=read_only,
            lock=not read_only,
        )
        try:
            self._db = {
                name.decode(): self._env.open_db(name, create=not read_only) for name in _DATABASES
            }
            if read_only:
                self._check_sealed()
            else:
                self._seal_old_values()
        except lmdb.NotFoundError:
            self._env.close()
            raise FailedPreconditionError(
                f"{self._path} was written by an older version: serve it writable once"
            ) from None
        except BaseException:
            self._env.close()
            raise

    def _check_sealed(self) -> None:
        with self._env.begin() as txn:
            if txn.get(_FORMAT_KEY, db=self._db["meta"]) != _SEALED:
                raise FailedPreconditionError(
                    f"{self._path} was written by an older version: serve it writable once"
                )

    def _seal_old_values(self) -> None:
        with self._env.begin(write=True) as txn:
            meta = self._db["meta"]
            if txn.get(_FORMAT_KEY, db=meta) == _SEALED:
                return
            for name, db in self._db.items():
                for key, value in list(txn.cursor(db=db)):
                    txn.put(key, _Sealed.seal(name, key, value), db=db)
            txn.put(_FORMAT_KEY, _SEALED, db=meta)

    @contextmanager
    def _begin(self, write: bool = False) -> Iterator[_Sealed]:
        with self._env.begin(write=write) as txn:
            yield _Sealed(txn, self._db, self._path)

    def close(self) -> None:
        self._env.close()

    def sync(self) -> None:
        self._env.sync(True)

    # tables -------------------------------------------------------------------------

    def put_table(
        self, spec: TableSpec, step: int, incarnation: str, importing: bool = False
    ) -> None:
        with self._begin(write=True) as txn:
            _put_table(txn, spec, step, incarnation)
            if importing:
                txn.put("importing", spec.name.encode(), b"1")

    def finish_import(self, name: str) -> None:
        with self._begin(write=True) as txn:
            txn.delete("importing", name.encode())

    def put_replacement(self, spec: TableSpec, incarnation: str) -> None:
        with self._begin(write=True) as txn:
            txn.put("replacements", spec.name.encode(), _replacement_bytes(spec, incarnation))

    def delete_replacement(self, name: str) -> None:
        with self._begin(write=True) as txn:
            txn.delete("replacements", name.encode())

    def replacements(self) -> list[tuple[TableSpec, str]]:
        """Every staged replacement as (spec, incarnation), by name."""
        with self._begin() as txn:
            return [_replacement_of_bytes(v) for _, v in txn.items("replacements")]

    def finish_replacement(self, spec: TableSpec, incarnation: str) -> None:
        """One transaction: the replacement becomes the table of its name, at step 0."""
        with self._begin(write=True) as txn:
            _put_table(txn, spec, 0, incarnation)
            txn.delete("replacements", spec.name.encode())
            txn.delete("importing", spec.name.encode())

    def importing(self) -> set[str]:
        """The tables whose import is unfinished."""
        with self._begin() as txn:
            return {k.decode() for k, _ in txn.items("importing")}

    def record_flush(
        self, steps: dict[str, int], windows: dict[str, dict[str, Any]], fence: int
    ) -> None:
        """One transaction: each table's step, each client's window, and the push token
        below which every push is recorded here (`pushes_fenced`). A step is only ever
        raised: the flush took `steps` before writing rows back, and a step taken meanwhile
        without a push (a data-parallel step no rank had rows for) may be here already."""
        with self._begin(write=True) as txn:
            for name, step in steps.items():
                recorded = int(txn.get("steps", name.encode()) or b"0")
                txn.put("steps", name.encode(), str(max(step, recorded)).encode())
            _put_clients(txn, windows)
            txn.put("meta", b"pushes_fenced", str(fence).encode())

    def record_restore(
        self,
        tables: list[tuple[TableSpec, int, str]],
        windows: dict[str, dict[str, Any]],
        checkpoint_id: int,
    ) -> None:
        """One transaction: the tables of a restored checkpoint replace every table, its
        windows every window, and it becomes the basis of the next checkpoint."""
        with self._begin(write=True) as txn:
            _replace_tables(txn, tables, windows)
            txn.put("meta", b"basis", str(checkpoint_id).encode())

    def record_followed(
        self,
        tables: list[tuple[TableSpec, int, str]],
        windows: dict[str, dict[str, Any]],
        store_id: str,
        checkpoint_id: int,
    ) -> None:
        """One transaction: a follower's tables and windows become those of the leader's
        checkpoint, which it now holds, and its catch-up is finished."""
        with self._begin(write=True) as txn:
            _replace_tables(txn, tables, windows)
            txn.put("meta", b"followed_store", store_id.encode())
            txn.put("meta", b"followed_checkpoint", str(checkpoint_id).encode())
            txn.delete("meta", b"follow_applying")

    def delete_table(self, name: str) -> None:
        with self._begin(write=True) as txn:
            for db in ("tables", "steps", "incarnations", "importing"):
                txn.delete(db, name.encode())

    def tables(self) -> list[tuple[TableSpec, int, str]]:
        """Every table as (spec, step at the last flush, incarnation), by name."""
        out = []
        with self._begin() as txn:
            for key, value in txn.items("tables"):
                spec = table_spec_of_bytes(value)
                step = int(txn.get("steps", key) or b"0")
                incarnation = (txn.get("incarnations", key) or b"").decode()
                out.append((spec, step, incarnation))
        return out

    # checkpoints ----------------------------------------------------------------------

    def put_checkpoint(self, manifest: dict[str, Any]) -> None:
        with self._begin(write=True) as txn:
            key = manifest["id"].to_bytes(8, "big")
            txn.put("checkpoints", key, json.dumps(manifest).encode())

    def delete_checkpoint(self, checkpoint_id: int) -> None:
        with self._begin(write=True) as txn:
            txn.delete("checkpoints", checkpoint_id.to_bytes(8, "big"))

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every published checkpoint's manifest, oldest first."""
        with self._begin() as txn:
            return [json.loads(v) for _, v in txn.items("checkpoints")]

    def checkpoint_count(self) -> int:
        with self._begin() as txn:
            return txn.count("checkpoints")

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest published checkpoint's manifest (ids are stored big-endian, so the
        last key is the newest), read alone."""
        with self._begin() as txn:
            value = txn.last("checkpoints")
            return json.loads(value) if value is not None else None

    # push idempotency and other counters ----------------------------------------------

    def clients(self) -> dict[str, dict[str, Any]]:
        with self._begin() as txn:
            return {k.decode(): json.loads(v) for k, v in txn.items("clients")}

    def get_meta(self, key: str, default: str = "") -> str:
        with self._begin() as txn:
            value = txn.get("meta", key.encode())
        return value.decode() if value is not None else default

    def put_meta(self, key: str, value: str) -> None:
        with self._begin(write=True) as txn:
            txn.put("meta", key.encode(), value.encode())

    def delete_meta(self, key: str) -> None:
        with self._begin(write=True) as txn:
            txn.delete("meta", key.encode())


def _put_table(txn: _Sealed, spec: TableSpec, step: int, incarnation: str) -> None:
    key = spec.name.encode()
    txn.put("tables", key, table_spec_bytes(spec))
    txn.put("steps", key, str(step).encode())
    txn.put("incarnations", key, incarnation.encode())


def _replacement_bytes(spec: TableSpec, incarnation: str) -> bytes:
    spec_text = base64.b64encode(table_spec_bytes(spec)).decode()
    return json.dumps({"spec": spec_text, "incarnation": incarnation}).encode()


def _replacement_of_bytes(value: bytes) -> tuple[TableSpec, str]:
    record = json.loads(value)
    return table_spec_of_bytes(base64.b64decode(record["spec"])), record["incarnation"]


def _put_clients(txn: _Sealed, windows: dict[str, dict[str, Any]]) -> None:
    """Replaces the stored windows (clients evicted from memory go too)."""
    txn.drop("clients")
    for client_id, window in windows.items():
        txn.put("clients", client_id.encode(), json.dumps(window).encode())


def _replace_tables(
    txn: _Sealed, tables: list[tuple[TableSpec, int, str]], windows: dict[str, dict[str, Any]]
) -> None:
    for db in ("tables", "steps", "incarnations", "clients", "importing", "replacements"):
        txn.drop(db)
    for spec, step, incarnation in tables:
        _put_table(txn, spec, step, incarnation)
    _put_clients(txn, windows)
