"""One served table: its engine object, spec, hasher (for LookupTokens) and counters."""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from store import _native
from store._proto.engram.store.v1 import store_pb2 as pb
from store.errors import InvalidArgumentError, ResourceExhaustedError
from store.wire import ROW_DTYPES, OptimizerArgs, check_array, check_table_name


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


class TableHandle:
    def __init__(
        self, spec: pb.TableSpec, native: _native.EmbeddingTable, incarnation: str
    ) -> None:
        self.spec = spec
        self.native = native
        self.incarnation = incarnation
        self.counters = TableCounters()
        self.hasher = _hasher(spec.hash_config) if spec.HasField("hash_config") else None
        self.head_offsets: npt.NDArray[np.uint64] | None = None
        if spec.HasField("hash_config"):
            sizes = np.array(spec.hash_config.table_sizes, dtype=np.uint64)
            self.head_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)

    @property
    def name(self) -> str:
        return self.spec.name

    @staticmethod
    def create(directory: str, spec: pb.TableSpec, incarnation: str) -> TableHandle:
        validate_spec(spec)
        optimizer = OptimizerArgs.from_config(spec.optimizer)
        native = _native.EmbeddingTable.create(
            directory,
            spec.num_rows,
            spec.dim,
            spec.dtype or "float32",
            spec.init or "normal",
            spec.init_std,
            spec.seed,
            *optimizer.native(),
            spec.allow_non_finite,
            spec.first_row,
            not spec.skip_row_checksums,
        )
        return TableHandle(spec, native, incarnation)

    @staticmethod
    def open(directory: str, spec: pb.TableSpec, step: int, incarnation: str) -> TableHandle:
        optimizer = OptimizerArgs.from_config(spec.optimizer)
        native = _native.EmbeddingTable.open(
            directory, *optimizer.native(), spec.allow_non_finite, step
        )
        return TableHandle(spec, native, incarnation)

    def info(self) -> pb.TableInfo:
        return pb.TableInfo(
            spec=self.spec,
            step=self.native.step,
            written_rows=self.native.written_count(),
            hash_fingerprint=self.hasher.fingerprint if self.hasher else 0,
            state_dim=self.native.state_dim,
        )

    def token_keys(
        self, token_ids: pb.Array, fingerprint: int, max_rows: int
    ) -> npt.NDArray[np.uint64]:
        """Row keys `[B, T, heads]` of raw token ids, hashed as the table's config says."""
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
        batch, seq = ids.shape
        hashes = np.empty((1, batch, seq, self.hasher.heads_per_layer), np.int64)
        self.hasher.hash_into(np.ascontiguousarray(ids, dtype=np.int64), hashes)
        keys: npt.NDArray[np.uint64] = hashes[0].astype(np.uint64) + self.head_offsets
        return keys


# The published configurations use 3-grams (4 at most) and 8 heads; these bound what a
# table spec may ask of the hashing kernel.
MAX_NGRAM_SIZE = 16
MAX_HEADS_PER_NGRAM = 256


def _check_hash_config(config: pb.HashConfig) -> None:
    if not 2 <= config.max_ngram_size <= MAX_NGRAM_SIZE:
        raise InvalidArgumentError(
            f"hash_config.max_ngram_size must be 2..{MAX_NGRAM_SIZE}, got {config.max_ngram_size}"
        )
    if not 1 <= config.n_head_per_ngram <= MAX_HEADS_PER_NGRAM:
        raise InvalidArgumentError(
            f"hash_config.n_head_per_ngram must be 1..{MAX_HEADS_PER_NGRAM}, got "
            f"{config.n_head_per_ngram}"
        )
    if config.pad_id < 0:
        raise InvalidArgumentError(f"hash_config.pad_id must not be negative, got {config.pad_id}")
    if len(config.multipliers) != config.max_ngram_size:
        raise InvalidArgumentError(
            f"hash_config.multipliers has {len(config.multipliers)} entries, expected "
            f"max_ngram_size = {config.max_ngram_size}"
        )


def _hasher(config: pb.HashConfig) -> _native.NgramHasher:
    _check_hash_config(config)
    check_array(config.lookup_table, "hash_config.lookup_table", ("int64",), 1)
    lookup = np.frombuffer(config.lookup_table.data, dtype="<i8").astype(np.int64)
    heads = (config.max_ngram_size - 1) * config.n_head_per_ngram
    if len(config.table_sizes) != heads:
        raise InvalidArgumentError(
            f"hash_config.table_sizes has {len(config.table_sizes)} entries, expected {heads}"
        )
    return _native.NgramHasher(
        config.max_ngram_size,
        config.n_head_per_ngram,
        config.pad_id,
        [list(config.multipliers)],
        [list(config.table_sizes)],
        lookup,
    )


def validate_spec(spec: pb.TableSpec) -> None:
    """Checks what the engine does not: names, dtypes and the hash config's fit."""
    check_table_name(spec.name)
    if spec.num_rows <= 0 or spec.dim <= 0:
        raise InvalidArgumentError(
            f"num_rows and dim must be positive, got {spec.num_rows} and {spec.dim}"
        )
    if spec.dtype and spec.dtype not in ROW_DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {ROW_DTYPES}, got {spec.dtype!r}")
    if spec.HasField("hash_config"):
        hasher_rows = int(sum(spec.hash_config.table_sizes))
        _hasher(spec.hash_config)
        if hasher_rows > spec.num_rows:
            raise InvalidArgumentError(
                f"hash config addresses {hasher_rows} rows but the table has {spec.num_rows}"
            )


def table_directory(data_dir: str, name: str) -> str:
    return os.path.join(data_dir, "tables", name)
