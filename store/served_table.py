"""One served table: its engine object, spec, hasher (for LookupTokens) and counters."""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from store import _native
from store.errors import InvalidArgumentError, ResourceExhaustedError
from store.requests import Packed, TableCountersSnapshot, TableStatus
from store.spec import HashSpec, TableSpec
from store.wire import check_array


@dataclass
class TableCounters:
    lookups: int = 0
    rows_looked_up: int = 0
    pushes: int = 0
    rows_pushed: int = 0
    duplicate_pushes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **increments: int) -> None:
        with self.lock:
            for name, value in increments.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self, table: str) -> TableCountersSnapshot:
        with self.lock:
            return TableCountersSnapshot(
                table,
                self.lookups,
                self.rows_looked_up,
                self.pushes,
                self.rows_pushed,
                self.duplicate_pushes,
            )


class ServedTable:
    def __init__(self, spec: TableSpec, native: _native.TrainableTable, incarnation: str) -> None:
        self.spec = spec
        self.native = native
        self.incarnation = incarnation
        # Hidden while its import is unfinished: only WriteRows reach it.
        self.importing = False
        self.counters = TableCounters()
        self.hasher = _hasher(spec.hash_config) if spec.hash_config is not None else None
        self.head_offsets: npt.NDArray[np.uint64] | None = None
        if spec.hash_config is not None:
            sizes = np.array(spec.hash_config.table_sizes, dtype=np.uint64)
            self.head_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)

    @property
    def name(self) -> str:
        return self.spec.name

    @staticmethod
    def create(directory: str, spec: TableSpec, incarnation: str) -> ServedTable:
        native = _native.TrainableTable.create(directory, spec.check().resolved())
        return ServedTable(spec, native, incarnation)

    @staticmethod
    def open(
        directory: str, spec: TableSpec, step: int, incarnation: str, media_read_only: bool = False
    ) -> ServedTable:
        """The table in `directory`; with `media_read_only`, its files only read (a snapshot
        on read-only media) and pushes refused."""
        native = _native.TrainableTable.open(directory, spec.resolved(), step, media_read_only)
        return ServedTable(spec, native, incarnation)

    def status(self) -> TableStatus:
        return TableStatus(
            spec=self.spec,
            step=self.native.step,
            written_rows=self.native.written_count(),
            hash_fingerprint=self.hasher.fingerprint if self.hasher else 0,
            state_dim=self.native.state_dim,
            incarnation=self.incarnation,
        )

    def token_keys(
        self,
        token_ids: Packed,
        fingerprint: int,
        max_rows: int,
        last_position_only: bool = False,
        token_mask: Packed | None = None,
    ) -> npt.NDArray[np.uint64]:
        """Row keys `[B, T, heads]` of raw token ids, hashed as the table's config says
        (`[B, 1, heads]`, the last position's, with `last_position_only`), with the n-grams
        that reach a token `token_mask` leaves out blocked (client.hashing)."""
        if self.hasher is None or self.head_offsets is None:
            raise InvalidArgumentError(f"table {self.name!r} has no hash config")
        if fingerprint != self.hasher.fingerprint:
            raise InvalidArgumentError(
                f"hash config mismatch: request has fingerprint {fingerprint:#x}, table "
                f"{self.name!r} has {self.hasher.fingerprint:#x}"
            )
        check_array(token_ids, "token_ids", ("int64",), 2)
        rows = math.prod(token_ids.shape) * self.hasher.heads_per_layer
        if rows > max_rows:
            raise ResourceExhaustedError(
                f"token_ids {list(token_ids.shape)} would look up {rows} rows, over the "
                f"server's limit of {max_rows}"
            )
        ids = np.frombuffer(token_ids.data, dtype="<i8").reshape(tuple(token_ids.shape))
        mask = None if token_mask is None else _token_mask(token_mask, ids.shape)
        batch, seq = ids.shape
        hashes = np.empty((1, batch, seq, self.hasher.heads_per_layer), np.int64)
        self.hasher.hash_into(np.ascontiguousarray(ids, dtype=np.int64), hashes, mask)
        if last_position_only:
            hashes = hashes[:, :, -1:]
        keys: npt.NDArray[np.uint64] = hashes[0].astype(np.uint64) + self.head_offsets
        return keys


def _token_mask(mask: Packed, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """A request's token mask, checked: booleans (bytes 0 or 1) of the token ids' shape."""
    check_array(mask, "token_mask", ("bool",), 2)
    if tuple(mask.shape) != shape:
        raise InvalidArgumentError(
            f"token_mask must have the shape of token_ids {list(shape)}, got {list(mask.shape)}"
        )
    values = np.frombuffer(mask.data, dtype=np.uint8).reshape(shape)
    if values.size and values.max() > 1:
        raise InvalidArgumentError("token_mask must hold bytes 0 or 1 (bool)")
    return values.astype(bool)


def _hasher(config: HashSpec) -> _native.NgramHasher:
    return _native.NgramHasher(
        config.max_ngram_size,
        config.n_head_per_ngram,
        config.pad_id,
        [list(config.multipliers)],
        [list(config.table_sizes)],
        config.lookup_table,
    )


def table_directory(data_dir: str, name: str) -> str:
    return os.path.join(data_dir, "tables", name)
