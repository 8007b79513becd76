"""Memory-mapped embedding tables, the storage of the store daemon.

A table is `num_rows x dim` of float32, bfloat16, float16, or quantized rows (FP8 E4M3 or
int8 with a scale per 32 values) in one sparse file. Creating one
takes constant time and disk however large it is; a row that was never written reads as its
deterministic initial value (normal with the table's `std`, or zeros), the same on every
machine.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from store import _native
from store.arrays import NUMPY_ROW_TYPES, as_keys, as_rows
from store.hot_rows import HotRowCache
from store.spec import TABLE_DTYPES, row_bytes, row_width


class Table:
    """A memory-mapped table; use :meth:`create` or :meth:`open`."""

    def __init__(self, native: _native.Table) -> None:
        self._native = native

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        num_rows: int,
        dim: int,
        *,
        dtype: str = "float32",
        init: str = "normal",
        std: float = 0.02,
        seed: int = 0,
        first_row: int = 0,
    ) -> Table:
        """Creates a new table file at `path` (which must not exist). `first_row` is the global
        index of row 0 when the table is one shard of a larger one: initial values follow
        the global index."""
        for name, value in (("num_rows", num_rows), ("dim", dim)):
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        return cls(
            _native.Table.create(os.fspath(path), num_rows, dim, dtype, init, std, seed, first_row)
        )

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Table:
        """Opens an existing table, refusing files with a bad header, checksum or size."""
        return cls(_native.Table.open(os.fspath(path)))

    @property
    def path(self) -> str:
        return os.fspath(self._native.path)

    @property
    def num_rows(self) -> int:
        return self._native.num_rows

    @property
    def dim(self) -> int:
        return self._native.dim

    @property
    def dtype(self) -> str:
        return self._native.dtype

    @property
    def init(self) -> str:
        return self._native.init

    @property
    def std(self) -> float:
        return self._native.std

    @property
    def seed(self) -> int:
        return self._native.seed

    @property
    def first_row(self) -> int:
        return self._native.first_row

    @property
    def file_len(self) -> int:
        """Logical file size in bytes (the file is sparse: disk use grows with written rows)."""
        return self._native.file_len

    def gather(
        self,
        keys: Any,
        out: npt.NDArray[Any] | None = None,
        dtype: str = "float32",
        cache: HotRowCache | None = None,
    ) -> npt.NDArray[Any]:
        """Rows for `keys` (any shape) as an array of shape `keys.shape + (dim,)`.

        `dtype` picks the output element type whatever the storage type (a quantized dtype:
        packed rows as uint8, `keys.shape + (row bytes,)`); `out`, when given,
        is filled in place and returned (C-contiguous, matching shape and dtype). Every key is
        checked first: an out-of-range key raises IndexError and nothing is written. With a
        `cache` (see `store.hot_rows`), hot rows are read from it: same answers, fewer reads
        of the file.
        """
        if cache is not None and not isinstance(cache, HotRowCache):
            raise TypeError(f"cache must be a store.HotRowCache, got {type(cache).__name__}")
        if dtype not in TABLE_DTYPES:
            raise ValueError(f"dtype must be one of {TABLE_DTYPES}, got {dtype!r}")
        width = row_width(dtype, self.dim)
        shape = (*np.shape(keys), width)
        flat_keys = as_keys(keys)
        if out is None:
            out = np.empty(shape, dtype=NUMPY_ROW_TYPES[dtype])
        elif out.shape != shape or out.dtype != NUMPY_ROW_TYPES[dtype]:
            raise ValueError(
                f"out has shape {out.shape} and dtype {out.dtype}, "
                f"expected {shape} and {np.dtype(NUMPY_ROW_TYPES[dtype])}"
            )
        elif not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous array")
        rows = out.reshape(len(flat_keys), width)
        if dtype in ("bfloat16", "float16"):
            rows = rows.view(np.uint16)
        self._native.gather_into(flat_keys, rows, dtype, cache.native if cache else None)
        return out

    def scatter_add(self, keys: Any, values: Any) -> None:
        """Adds `values` (`len(keys) x dim`) to the rows; repeated keys accumulate."""
        flat_keys = as_keys(keys)
        self._native.scatter_add(flat_keys, as_rows(values, len(flat_keys), self.dim))

    def write_rows(self, keys: Any, values: Any) -> None:
        """Overwrites the rows with `values`; for a repeated key the last one wins."""
        flat_keys = as_keys(keys)
        self._native.write_rows(flat_keys, as_rows(values, len(flat_keys), self.dim))

    def write_packed(self, keys: Any, rows: Any) -> None:
        """Stores rows given packed as the table stores them: uint8 of shape
        `[len(keys), row bytes]` (quantized rows: values then scales; float rows: their
        little-endian bytes), exactly; for a repeated key the last one wins."""
        flat_keys = as_keys(keys)
        packed = np.ascontiguousarray(rows)
        expected = (len(flat_keys), row_bytes(self.dtype, self.dim))
        if packed.dtype != np.uint8 or packed.shape != expected:
            raise ValueError(
                f"rows must be uint8 of shape {expected}, got {packed.dtype} {packed.shape}"
            )
        self._native.write_packed(flat_keys, packed)

    def written(self, keys: Any) -> npt.NDArray[np.bool_]:
        """Whether each key's row has been stored (rather than reading its initial value)."""
        return self._native.written(as_keys(keys)).reshape(np.shape(keys))

    def written_count(self) -> int:
        """Number of stored rows."""
        return self._native.written_count()

    def set_access(self, access: str) -> None:
        """How rows will be read: "dense" (huge pages and read-ahead: a table that fits in
        memory, the default when it fits in half of it) or "sparse" (small pages, no
        read-ahead: a table larger than memory, whose rows each cost a disk read)."""
        self._native.set_access(access)

    def flush(self) -> None:
        """Makes every written row durable (msync)."""
        self._native.flush()

    def __repr__(self) -> str:
        return (
            f"Table(path={self.path!r}, num_rows={self.num_rows}, dim={self.dim}, "
            f"dtype={self.dtype!r})"
        )
