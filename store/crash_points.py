"""Named points in the daemon's durable steps where a test can kill it.

Every rename and fsync that publishes state (checkpoints, restores, flushes) is followed by
`crash_point(name)`. With ENGRAM_STORE_CRASH_AT=<name> in its environment, the daemon kills
itself with SIGKILL there, as an OOM kill would stop it; the crash tests take every name in
POINTS (and the engine's points inside a push, `_native.PUSH_CRASH_POINTS`) in turn and
check what a restart finds.
"""

from __future__ import annotations

import os
import signal

ENV = "ENGRAM_STORE_CRASH_AT"

POINTS = (
    # checkpoints
    "checkpoint:packs-synced",
    "checkpoint:manifest-synced",
    "checkpoint:published",
    "checkpoint:recorded",
    # restores
    "restore:staged",
    "restore:intent-written",
    "restore:old-tables-retired",
    "restore:new-tables-in-place",
    "restore:catalog-updated",
    "restore:journal-reset",
    "restore:intent-removed",
    # a table's replacement swapped in
    "replace:old-table-retired",
    "replace:new-table-in-place",
    "replace:catalog-updated",
    # flushes
    "flush:journal-cut",
    "flush:tables-synced",
    "flush:catalog-synced",
    # a follower catching up
    "follow:marked",
    "follow:packs-applied",
    "follow:recorded",
)


# With ENGRAM_STORE_CRASH_AFTER=<n> as well, the daemon passes the point n times before it
# dies there: a test kills a periodic flush under load, not the one start-up runs.
PASSES_ENV = "ENGRAM_STORE_CRASH_AFTER"
_passed: dict[str, int] = {}


def crash_point(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}")
    if os.environ.get(ENV) == name:
        _passed[name] = _passed.get(name, 0) + 1
        if _passed[name] > int(os.environ.get(PASSES_ENV, "0")):
            os.kill(os.getpid(), signal.SIGKILL)
