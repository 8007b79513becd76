"""A client-side cache of hot rows.

Engram's n-gram ids are Zipf-distributed: a small set of rows takes most lookups. The cache
holds up to `capacity_bytes` of rows in host memory, admits a row once it has been asked
for `admit_after` times (so one-off rows do not evict hot ones), and evicts the least
frequently asked. It is exact for frozen tables (inference); in training, the owner's own
pushes invalidate their rows, and `max_staleness` bounds how many steps (`advance()` calls)
a cached row may outlive other clients' pushes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


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
        self, capacity_bytes: int, admit_after: int = 2, max_staleness: int | None = None
    ) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        if admit_after < 1:
            raise ValueError(f"admit_after must be at least 1, got {admit_after}")
        self.capacity_bytes = capacity_bytes
        self.admit_after = admit_after
        self.max_staleness = max_staleness
        self.stats = CacheStats()
        self._rows: dict[tuple[str, int], tuple[npt.NDArray[np.float32], int]] = {}
        self._counts: dict[tuple[str, int], int] = {}
        self._bytes = 0
        self._step = 0
        self._lock = threading.Lock()

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def advance(self) -> None:
        """One training step has passed (for the `max_staleness` bound)."""
        with self._lock:
            self._step += 1

    def invalidate(self, table: str, keys: npt.NDArray[np.uint64]) -> None:
        """Forgets rows that were just pushed."""
        with self._lock:
            for key in keys.tolist():
                entry = self._rows.pop((table, key), None)
                if entry is not None:
                    self._bytes -= entry[0].nbytes

    def lookup(
        self,
        table: str,
        keys: npt.NDArray[np.uint64],
        fetch: Callable[[npt.NDArray[np.uint64]], npt.NDArray[np.float32]],
    ) -> npt.NDArray[np.float32]:
        """Rows `[len(keys), dim]`: cached ones copied, the rest read once each through
        `fetch(distinct missing keys)`."""
        flat = keys.reshape(-1)
        unique, inverse = np.unique(flat, return_inverse=True)
        found: list[npt.NDArray[np.float32] | None] = []
        with self._lock:
            for key in unique.tolist():
                slot = (table, key)
                self._counts[slot] = self._counts.get(slot, 0) + 1
                entry = self._rows.get(slot)
                fresh = entry is not None and (
                    self.max_staleness is None or self._step - entry[1] <= self.max_staleness
                )
                found.append(entry[0] if entry is not None and fresh else None)
        missing = np.array([i for i, row in enumerate(found) if row is None], dtype=np.intp)
        fetched = fetch(unique[missing]) if len(missing) else None
        dim = (
            fetched.shape[1]
            if fetched is not None
            else next(r for r in found if r is not None).shape[0]
        )
        rows = np.empty((len(unique), dim), np.float32)
        is_hit = np.zeros(len(unique), dtype=bool)
        for i, row in enumerate(found):
            if row is not None:
                rows[i] = row
                is_hit[i] = True
        if fetched is not None:
            rows[missing] = fetched
        with self._lock:
            hits = int(is_hit[inverse].sum())
            self.stats.hits += hits
            self.stats.misses += len(flat) - hits
            self.stats.bytes_saved += hits * dim * 4
            if fetched is not None:
                self._admit(table, unique[missing], fetched)
        return rows[inverse]

    def _admit(
        self, table: str, keys: npt.NDArray[np.uint64], rows: npt.NDArray[np.float32]
    ) -> None:
        for key, row in zip(keys.tolist(), rows, strict=True):
            slot = (table, key)
            if self._counts.get(slot, 0) < self.admit_after:
                continue
            old = self._rows.pop(slot, None)
            if old is not None:
                self._bytes -= old[0].nbytes
            self._rows[slot] = (row.copy(), self._step)
            self._bytes += row.nbytes
        if self._bytes > self.capacity_bytes:
            self._evict()
        if len(self._counts) > 4 * max(len(self._rows), 1024):
            # Age the counts so the cache follows a shifting distribution, and stay bounded.
            self._counts = {s: c // 2 for s, c in self._counts.items() if c > 1}

    def _evict(self) -> None:
        """Drops the least asked-for rows until 90% of the capacity is used."""
        by_count = sorted(self._rows, key=lambda slot: self._counts.get(slot, 0))
        target = int(self.capacity_bytes * 0.9)
        for slot in by_count:
            if self._bytes <= target:
                break
            row, _ = self._rows.pop(slot)
            self._bytes -= row.nbytes
            self.stats.evictions += 1
