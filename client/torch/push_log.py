"""A table's record of its pushes: their numbers (1, 2, ...), which are still in flight, the
keys each changed and, on request, the rows each left. Readers that fetched rows ahead of
some pushes ask it what those pushes changed; `TrainPipeline` reports each push's end to it."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import numpy as np

from client.cache import RowCache

# How many pushes' keys a log remembers, for rows read ahead of them.
PUSH_LOG_LENGTH = 64


class PushLog:
    """The pushes of one store table. At most `max_in_flight` are outstanding: `reserve`
    waits for a slot, and a push's end frees it. With a `cache`, a push's end also drops the
    cached rows of its keys."""

    def __init__(self, table: str, max_in_flight: int, cache: RowCache | None = None) -> None:
        self.table = table
        self.cache = cache
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._pending: list[tuple[int, Future[Any]]] = []
        self._keys: dict[int, np.ndarray] = {}
        self._updated_rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.keeps_updated_rows = False
        self.issued = 0

    def try_reserve(self) -> bool:
        """Takes a slot for a push if one is free now."""
        return self._slots.acquire(blocking=False)

    def reserve(self) -> None:
        """Takes a slot for a push, waiting for one."""
        self._slots.acquire()

    def issue(self, keys: np.ndarray, done: Future[Any]) -> int:
        """Numbers a push of `keys` (holding a slot) that `done` completes."""
        with self._lock:
            self.issued += 1
            self._keys[self.issued] = keys
            # Nobody reads rows older than a prefetch depth: keep the log short.
            self._keys.pop(self.issued - PUSH_LOG_LENGTH, None)
            self._pending.append((self.issued, done))
            return self.issued

    def ended(self, number: int, keys: np.ndarray, rows: np.ndarray | None) -> None:
        """Push `number` of (distinct) `keys` is over, applied or failed; `rows` are the rows
        it left, when the daemon returned them."""
        if rows is not None and self.keeps_updated_rows:
            with self._lock:
                self._updated_rows[number] = (keys, rows)
        # After the push, so no fetch in between can cache the old rows again.
        if self.cache is not None:
            self.cache.invalidate(self.table, keys)
        self._slots.release()

    def keep_updated_rows(self, keep: bool) -> None:
        self.keeps_updated_rows = keep
        if not keep:
            self.forget_updated_rows(through=self.issued)

    def updated_rows(self, numbers: Any) -> list[tuple[np.ndarray, np.ndarray]] | None:
        with self._lock:
            found = [self._updated_rows.get(n) for n in numbers]
        return None if None in found else [f for f in found if f is not None]

    def forget_updated_rows(self, through: int) -> None:
        with self._lock:
            for n in [n for n in self._updated_rows if n <= through]:
                del self._updated_rows[n]

    def keys_since(self, number: int) -> np.ndarray:
        with self._lock:
            recent = [k for n, k in self._keys.items() if n > number]
        return np.concatenate(recent) if recent else np.zeros(0, np.uint64)

    def applied_through(self) -> int:
        """The number n such that pushes 1..n are all over (pushes run concurrently, so a
        later one may finish first)."""
        with self._lock:
            unfinished = [n for n, f in self._pending if not f.done()]
            return min(unfinished) - 1 if unfinished else self.issued

    def wait(self) -> None:
        """Blocks until every push issued so far is over, raising the first one's error."""
        with self._lock:
            pending = list(self._pending)
        for _, future in pending:
            future.result()
        # Forgotten only once done: `applied_through` counts what is still listed as pending.
        with self._lock:
            self._pending = [(n, f) for n, f in self._pending if not f.done()]
