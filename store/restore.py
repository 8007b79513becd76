"""Restoring a checkpoint, crash-atomically.

1. Stage: every table of the checkpoint is rebuilt from its packs in `.restore-staging/`
   (each pack checked against its manifest first) and synced. Failing here (a bad pack, a
   full disk) removes the staging directory and changes nothing else.
2. Commit: `restore-intent.json` names the checkpoint, written and synced. From here on the
   restore happens even if the daemon dies: on start-up, an intent is rolled forward.
3. Roll forward (`finish`), each step safe to repeat from wherever a crash stopped it:
   `tables/` becomes `.restore-retired/`, `.restore-staging/` becomes `tables/`, the catalog
   takes the checkpoint's tables, steps and idempotency windows in one transaction, the push
   journal (which speaks of the old tables) is emptied, the intent is removed, and the
   retired tables are deleted.
Without an intent, start-up deletes what an unfinished restore staged or retired.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any

from store import _native
from store.catalog import Catalog
from store.checkpoints import ManifestChain, read_manifest, restore_table, spec_of
from store.crash_points import crash_point
from store.data_dir import (
    RESTORE_INTENT,
    RESTORE_RETIRED,
    RESTORE_STAGING,
    TABLES,
    fsync_dir,
    write_durably,
)


def stage(data_dir: str, target: dict[str, Any]) -> None:
    """Rebuilds every table of checkpoint `target` in the staging directory, durably."""
    staging = os.path.join(data_dir, RESTORE_STAGING)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    chain = ManifestChain(data_dir, target)
    try:
        for entry in target["tables"]:
            directory = os.path.join(staging, entry["name"])
            restore_table(chain, entry["name"], directory)
            fsync_dir(directory)
        fsync_dir(staging)
        fsync_dir(data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    crash_point("restore:staged")


def commit(data_dir: str, checkpoint_id: int) -> None:
    """The point of no return: the restore of `checkpoint_id` will be finished."""
    intent = json.dumps({"checkpoint": checkpoint_id}).encode()
    write_durably(os.path.join(data_dir, RESTORE_INTENT), intent)
    crash_point("restore:intent-written")


def pending(data_dir: str) -> int | None:
    """The checkpoint of a committed restore not yet finished, if any."""
    try:
        with open(os.path.join(data_dir, RESTORE_INTENT)) as f:
            checkpoint: int = json.load(f)["checkpoint"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        raise _native.TableFormatError(f"{RESTORE_INTENT} is damaged: {error}") from None
    return checkpoint


def finish(
    data_dir: str, catalog: Catalog, journal: _native.Journal, checkpoint_id: int
) -> dict[str, Any]:
    """Rolls a committed restore forward from wherever it stopped; returns its manifest."""
    target = read_manifest(data_dir, checkpoint_id)
    tables = os.path.join(data_dir, TABLES)
    staging = os.path.join(data_dir, RESTORE_STAGING)
    retired = os.path.join(data_dir, RESTORE_RETIRED)
    if os.path.isdir(staging):
        if os.path.isdir(tables):
            shutil.rmtree(retired, ignore_errors=True)
            os.rename(tables, retired)
            fsync_dir(data_dir)
            crash_point("restore:old-tables-retired")
        os.rename(staging, tables)
        fsync_dir(data_dir)
        crash_point("restore:new-tables-in-place")
    restored = [(spec_of(entry), entry["step"], entry["incarnation"]) for entry in target["tables"]]
    catalog.record_restore(restored, target["clients"], checkpoint_id)
    catalog.sync()
    crash_point("restore:catalog-updated")
    journal.reset()
    crash_point("restore:journal-reset")
    os.remove(os.path.join(data_dir, RESTORE_INTENT))
    fsync_dir(data_dir)
    crash_point("restore:intent-removed")
    shutil.rmtree(retired, ignore_errors=True)
    return target


def remove_unfinished(data_dir: str) -> None:
    """Without an intent: deletes what a restore that did not commit staged, and what one
    that finished had still to delete (also under the names older versions used)."""
    for name in os.listdir(data_dir):
        if name.startswith((".restore-", ".retired-")):
            shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(data_dir, f"{RESTORE_INTENT}.tmp"))  # an intent never written
