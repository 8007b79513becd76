"""Counts in words a user reads: "1 row", "2 rows"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str = "") -> str:
    """`count` and `noun`, made plural (with `plural`, or an "s") unless count is 1."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
