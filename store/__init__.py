"""Engram Store: the store side (memory-mapped tables now; the daemon builds on them)."""

from store._native import StoreError, TableFormatError
from store.table import Table

__all__ = ["StoreError", "Table", "TableFormatError"]
