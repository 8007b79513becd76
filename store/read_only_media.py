"""Serving a data directory on read-only media (`serve --read-only` where the directory is
not writable: a snapshot on a ReadOnlyMany volume that many pods serve at once).

Nothing is written there: no `LOCK` (many daemons may serve one snapshot, so none holds it),
no catalog transaction (LMDB opened read-only, without its lock file), no journal, no
recovery, no flush; table files are opened for reading and mapped copy-on-write, so the page
cache is shared with every reader and no byte can reach the files. That is only sound for a
directory that needs no recovery, so one is refused, naming why, unless the daemon that
wrote it stopped cleanly: its journal empty, no restore half done, and no record of a daemon
still running (a copy taken while one ran, or after it crashed, holds rows that only its
recovery can vouch for). Not guarded: the snapshot must not change while it is served (no
lock says another daemon writes it), and imports or replacements left unfinished in it stay
hidden.
"""

from __future__ import annotations

import os

from store.catalog import Catalog
from store.data_dir import JOURNAL, RESTORE_INTENT
from store.errors import FailedPreconditionError


def is_read_only_media(data_dir: str) -> bool:
    """Whether this process cannot write the directory (a read-only mount or its modes)."""
    return os.path.isdir(data_dir) and not os.access(data_dir, os.W_OK)


def check_clean(data_dir: str, catalog: Catalog) -> None:
    """Refuses a directory that only a writable start could make consistent."""
    reasons = []
    if catalog.get_meta("running_boot"):
        reasons.append(
            "its catalog says a daemon was running: it was copied while one ran, or that "
            "daemon crashed"
        )
    journal = os.path.join(data_dir, JOURNAL)
    if os.path.exists(journal) and os.path.getsize(journal) > 0:
        reasons.append("its push journal holds pushes not yet flushed")
    retired = [n for n in os.listdir(data_dir) if n.startswith(f"{JOURNAL}.retired.")]
    if retired:
        reasons.append(f"a flush was cut short ({', '.join(sorted(retired))})")
    if os.path.exists(os.path.join(data_dir, RESTORE_INTENT)):
        reasons.append("a restore was cut short")
    if reasons:
        raise FailedPreconditionError(
            f"data directory {data_dir} is read-only, and cannot be served as it is: "
            f"{'; '.join(reasons)}. Serve it writable once (it recovers), stop that daemon, "
            "then snapshot it; or snapshot a restored checkpoint"
        )
