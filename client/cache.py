"""A client-side cache of hot rows.

Engram's n-gram ids are Zipf-distributed: a small set of rows takes most lookups. The cache
holds up to `capacity_bytes` of rows in one preallocated slab, admits a row once it has
been asked for `admit_after` times (so one-off rows do not evict hot ones), and evicts the
least frequently asked. It is exact for frozen tables (inference); in training, the owner's
own pushes invalidate their rows, and `max_staleness` bounds how many steps (`advance()`
calls) a cached row may outlive other clients' pushes. A table that another client drops and
creates anew (or imports again) has a new incarnation: given the table's `incarnation` as its
fetcher knows it, a lookup forgets the old table's rows as soon as the fetcher has seen the
new one (at this cache's next miss, or any other call of the client's on that table).

The slab lives in host memory by default; `client.torch.device_row_cache` puts it in GPU
memory, so hits never cross the PCIe bus. Both index the same way, so one policy serves.
Rows keep the dtype they are fetched in: float rows, or a quantized table's packed rows
(uint8, a quarter of float32's bytes for FP8), which then take a quarter of the memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# (rows, width, numpy dtype of the fetched rows) -> an empty 2-D array-like of that dtype
# (numpy array or torch tensor).
Slab = Callable[[int, int, np.dtype[Any]], Any]
# Rows fetched from the store (numpy) -> the slab's kind of array.
Convert = Callable[[npt.NDArray[Any]], Any]


def host_slab(rows: int, width: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    return np.empty((rows, width), dtype)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_saved: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class RowCache:
    def __init__(
        self,
        capacity_bytes: int,
        admit_after: int = 2,
        max_staleness: int | None = None,
        slab: Slab = host_slab,
        convert: Convert = lambda rows: rows,
    ) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        if admit_after < 1:
            raise ValueError(f"admit_after must be at least 1, got {admit_after}")
        self.capacity_bytes = capacity_bytes
        self.admit_after = admit_after
        self.max_staleness = max_staleness
        self.stats = CacheStats()
        self._new_slab = slab
        self._convert = convert
        # Allocated at the first admission, when the rows' width and dtype are known.
        self._slab: Any = None
        self._row_bytes = 0
        self._dtype: np.dtype[Any] = np.dtype(np.float32)
        self._slot_of: dict[tuple[str, int], int] = {}
        self._entry_of_slot: dict[int, tuple[str, int]] = {}
        self._stamp: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._free: list[int] = []
        self._counts: dict[tuple[str, int], int] = {}
        # The incarnation each table's cached rows were read from.
        self._incarnation_of: dict[str, Hashable] = {}
        self._step = 0
        self._lock = threading.Lock()

    @property
    def bytes_used(self) -> int:
        return len(self._slot_of) * self._row_bytes

    def advance(self) -> None:
        """One training step has passed (for the `max_staleness` bound)."""
        with self._lock:
            self._step += 1

    def invalidate(self, table: str, keys: npt.NDArray[np.uint64]) -> None:
        """Forgets rows that were just pushed."""
        with self._lock:
            for key in keys.tolist():
                self._release((table, key))

    def _forget_table(self, table: str) -> None:
        for entry in [e for e in self._slot_of if e[0] == table]:
            self._release(entry)
        self._counts = {e: c for e, c in self._counts.items() if e[0] != table}

    def _note_incarnation(self, table: str, incarnation: Hashable) -> bool:
        """Records the incarnation `table`'s rows now come from; forgets its cached rows, and
        says so, when it is not the one they came from."""
        with self._lock:
            known = self._incarnation_of.setdefault(table, incarnation)
            if known == incarnation:
                return False
            self._forget_table(table)
            self._incarnation_of[table] = incarnation
            return True

    def _release(self, entry: tuple[str, int]) -> None:
        slot = self._slot_of.pop(entry, None)
        if slot is not None:
            del self._entry_of_slot[slot]
            self._free.append(slot)

    def lookup(
        self,
        table: str,
        keys: npt.NDArray[np.uint64],
        fetch: Callable[[npt.NDArray[np.uint64]], npt.NDArray[Any]],
        incarnation: Callable[[], Hashable] | None = None,
    ) -> Any:
        """Rows `[len(keys), width]` (of the slab's kind): cached ones gathered from the slab,
        the rest read once each through `fetch(distinct missing keys)`, which must return
        rows of one width and dtype while this cache holds rows. `incarnation()` says which
        table of this name `fetch` reads now (asked before and after fetching): rows cached
        from another one are not served."""
        if incarnation is not None:
            self._note_incarnation(table, incarnation())
        flat = keys.reshape(-1)
        unique, inverse = np.unique(flat, return_inverse=True)
        hit_slots = np.full(len(unique), -1, dtype=np.intp)
        with self._lock:
            for i, key in enumerate(unique.tolist()):
                entry = (table, key)
                self._counts[entry] = self._counts.get(entry, 0) + 1
                slot = self._slot_of.get(entry)
                if slot is not None and (
                    self.max_staleness is None
                    or self._step - self._stamp[slot] <= self.max_staleness
                ):
                    hit_slots[i] = slot
            is_hit = hit_slots >= 0
            hits = np.flatnonzero(is_hit)
            # Copied out under the lock: an admission may overwrite these slots next.
            cached = self._slab[hit_slots[hits]] if len(hits) else None
        missing = np.flatnonzero(~is_hit)
        # With no keys at all, the store's empty answer gives the rows' width and dtype.
        fetched = fetch(unique[missing]) if len(missing) or cached is None else None
        if (
            fetched is not None
            and incarnation is not None
            and self._note_incarnation(table, incarnation())
            and cached is not None
        ):
            # The table was created anew while we read: the hits are the old table's.
            missing, cached = np.arange(len(unique)), None
            is_hit[:] = False
            fetched = fetch(unique)
        if fetched is not None:
            width, dtype = int(fetched.shape[1]), fetched.dtype
            with self._lock:
                self._check_row_shape(table, width, dtype)
        else:
            assert cached is not None
            width, dtype = int(cached.shape[1]), self._dtype
        rows = self._new_slab(len(unique), width, dtype)
        if cached is not None:
            rows[hits] = cached
        with self._lock:
            hit_count = int(is_hit[inverse].sum())
            self.stats.hits += hit_count
            self.stats.misses += len(flat) - hit_count
            self.stats.bytes_saved += hit_count * width * dtype.itemsize
            if fetched is not None:
                converted = self._convert(fetched)
                rows[missing] = converted
                self._admit(table, unique[missing], converted, width, dtype)
        return rows[inverse]

    def _check_row_shape(self, table: str, width: int, dtype: np.dtype[Any]) -> None:
        if self._slot_of and (self._slab.shape[1], self._dtype) != (width, dtype):
            raise ValueError(
                f"table {table!r} gave rows of {width} {dtype}, but this cache holds rows "
                f"of {self._slab.shape[1]} {self._dtype}: one cache serves one row shape"
            )

    def _admit(
        self,
        table: str,
        keys: npt.NDArray[np.uint64],
        rows: Any,
        width: int,
        dtype: np.dtype[Any],
    ) -> None:
        admitted = [
            i
            for i, key in enumerate(keys.tolist())
            if self._counts.get((table, key), 0) >= self.admit_after
        ]
        if not admitted:
            return
        if self._slab is not None and (self._slab.shape[1], self._dtype) != (width, dtype):
            self._slab = None  # empty (`_check_row_shape`): made anew for the new shape
        if self._slab is None:
            self._row_bytes = width * dtype.itemsize
            self._dtype = dtype
            capacity = max(1, self.capacity_bytes // self._row_bytes)
            self._slab = self._new_slab(capacity, width, dtype)
            self._stamp = np.zeros(capacity, np.int64)
            self._free = list(range(capacity - 1, -1, -1))
        admitted = admitted[: len(self._stamp)]
        if len(self._free) < len(admitted):
            self._evict(len(admitted) - len(self._free))
        slots = []
        for i in admitted:
            entry = (table, int(keys[i]))
            self._release(entry)
            slot = self._free.pop()
            self._slot_of[entry] = slot
            self._entry_of_slot[slot] = entry
            self._stamp[slot] = self._step
            slots.append(slot)
        self._slab[np.array(slots, dtype=np.intp)] = rows[np.array(admitted, dtype=np.intp)]
        if len(self._counts) > 4 * max(len(self._stamp), 1024):
            # Age the counts so the cache follows a shifting distribution, and stay bounded.
            self._counts = {e: c // 2 for e, c in self._counts.items() if c > 1}

    def _evict(self, needed: int) -> None:
        """Frees at least `needed` slots, and a tenth of the slab, least asked-for first."""
        by_count = sorted(self._slot_of, key=lambda entry: self._counts.get(entry, 0))
        for entry in by_count[: max(needed, len(self._stamp) // 10)]:
            self._release(entry)
            self.stats.evictions += 1
