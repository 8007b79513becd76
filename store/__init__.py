"""Engram Store: the store side (memory-mapped tables now; the daemon builds on them)."""

from store._native import StoreError, TableFormatError
from store.hot_rows import HotRowCache, HotRowStats
from store.table import Table

__all__ = ["HotRowCache", "HotRowStats", "StoreError", "Table", "TableFormatError"]
