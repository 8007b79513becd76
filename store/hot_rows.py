"""An in-process cache of a table's most-read rows, for serving tables larger than memory.

Engram's n-gram ids are Zipf-distributed: a small share of rows takes most reads. Through the
page cache alone every hot row keeps a whole 4 KiB page resident, and a table larger than
memory keeps trading hot pages for cold ones. A `HotRowCache` holds the hot rows themselves,
packed as stored, in memory of its own; `Table.gather(keys, cache=...)` reads hits from it
and converts them exactly as from the table, so answers never change. Admission is TinyLFU's
(a count-min sketch of reads; a row enters after `admit_after` reads, and in place of a row
read less), all in the Rust core (`rust/src/table/hot_rows.rs`). `capacity_bytes` bounds the
rows held; their bookkeeping (an index of each row's place, read counts) takes about 45 to
80 bytes a row beside them.

One cache serves one table. A write through that `Table` object empties the cache; writes
by another process to the same file are not seen: cache tables that are served frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

from store import _native


@dataclass(frozen=True)
class HotRowStats:
    hits: int
    misses: int
    admissions: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class HotRowCache:
    def __init__(self, capacity_bytes: int, admit_after: int = 2) -> None:
        if not isinstance(capacity_bytes, int) or capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be a positive integer, got {capacity_bytes!r}")
        if not isinstance(admit_after, int) or not 1 <= admit_after <= 255:
            raise ValueError(f"admit_after must be an integer in 1..255, got {admit_after!r}")
        self.native = _native.HotRowCache(capacity_bytes, admit_after)

    @property
    def capacity_bytes(self) -> int:
        return self.native.capacity_bytes

    @property
    def bytes_used(self) -> int:
        return self.native.bytes_used

    @property
    def stats(self) -> HotRowStats:
        return HotRowStats(*self.native.stats())

    def clear(self) -> None:
        """Forgets every row and count; the cache may then serve another table."""
        self.native.clear()
