"""Replacing a live table with an import, crash-atomically.

The import is staged beside the table it replaces, in `tables/.replacing.<name>/` (a name no
table can have: table names start with a letter or digit), and the catalog records it under
"replacements"; the old table serves on meanwhile. Swapping it in (`swap_in`), with no push
in flight and the journal empty:
1. `tables/<name>/` becomes `tables/.replaced.<name>/`;
2. `tables/.replacing.<name>/` becomes `tables/<name>/`;
3. the catalog takes the new table (step 0, its own incarnation) and forgets the
   replacement, in one transaction: the point at which the swap is done;
4. the old table's files are deleted.
On start-up (`settle`) a swap cut short before step 3 is undone when the new table is not
yet in place (step 1 reversed), and finished when it is (step 3 done), so every table is
whole: the old one until the catalog says otherwise, the new one from then on.
"""

from __future__ import annotations

import os
import shutil

from store._native import TableFormatError
from store.catalog import Catalog
from store.crash_points import crash_point
from store.data_dir import TABLES, fsync_dir
from store.served_table import table_directory
from store.spec import TableSpec

STAGED_PREFIX = ".replacing."
RETIRED_PREFIX = ".replaced."


def staged_directory(data_dir: str, name: str) -> str:
    return table_directory(data_dir, STAGED_PREFIX + name)


def _retired_directory(data_dir: str, name: str) -> str:
    return table_directory(data_dir, RETIRED_PREFIX + name)


def swap_in(data_dir: str, catalog: Catalog, spec: TableSpec, incarnation: str) -> None:
    """Puts the staged replacement of table `spec.name` in its place, durably."""
    live = table_directory(data_dir, spec.name)
    staged = staged_directory(data_dir, spec.name)
    retired = _retired_directory(data_dir, spec.name)
    tables = os.path.join(data_dir, TABLES)
    shutil.rmtree(retired, ignore_errors=True)
    os.rename(live, retired)
    fsync_dir(tables)
    crash_point("replace:old-table-retired")
    try:
        os.rename(staged, live)
    except BaseException:
        os.rename(retired, live)  # the old table back in place, as if nothing was tried
        fsync_dir(tables)
        raise
    fsync_dir(tables)
    crash_point("replace:new-table-in-place")
    catalog.finish_replacement(spec, incarnation)
    catalog.sync()
    crash_point("replace:catalog-updated")
    shutil.rmtree(retired, ignore_errors=True)


def settle(data_dir: str, catalog: Catalog) -> None:
    """Undoes or finishes each swap a crash cut short (see the module's docstring)."""
    tables = os.path.join(data_dir, TABLES)
    for spec, incarnation in catalog.replacements():
        live = table_directory(data_dir, spec.name)
        staged = staged_directory(data_dir, spec.name)
        retired = _retired_directory(data_dir, spec.name)
        if os.path.isdir(staged):
            if not os.path.isdir(live) and os.path.isdir(retired):
                os.rename(retired, live)
                fsync_dir(tables)
        elif os.path.isdir(live) and os.path.isdir(retired):
            catalog.finish_replacement(spec, incarnation)
            catalog.sync()
        else:
            raise TableFormatError(
                f"{data_dir}: the replacement of table {spec.name!r} is recorded, but its "
                f"files are missing from {tables}; restore the data directory from a "
                "checkpoint (serve --restore)"
            )
