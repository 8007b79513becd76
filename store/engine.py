"""The store service's logic, independent of gRPC: tables, lookups, pushes, checkpoints.

It takes and answers the typed objects of `store.requests` and `store.spec`, never protobuf
(the servicer translates, through `store.conversions`); lookups, pushes and hashing run in
the Rust engine with the GIL released, so concurrent requests use every core.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from store import _native, replacement, restore
from store.answer_budget import DEFAULT_MAX_ANSWER_BYTES, AnswerBudget
from store.catalog import Catalog
from store.checkpoints import (
    apply_checked_pack,
    published_ids,
    read_manifest,
    remove_unpublished,
    spec_of,
    write_checkpoint,
)
from store.config import DEFAULT_MAX_MESSAGE_BYTES
from store.crash_points import crash_point
from store.data_dir import CATALOG, JOURNAL, TABLES, boot_id
from store.data_dir import lock as data_dir_lock
from store.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from store.gate import Gate
from store.idempotency import ClientWindows
from store.lookup_answers import DEFAULT_MAX_CHUNK_BYTES, LookupAnswers
from store.pauses import Pauses
from store.read_only_media import check_clean, is_read_only_media
from store.replication import plan_changes
from store.requests import (
    BatchOutcome,
    ChangedTable,
    Changes,
    DamagedBlock,
    FollowStatus,
    Lookup,
    Packed,
    Push,
    PushOutcome,
    RowChunk,
    RowsWrite,
    StatsResult,
    TableStatus,
    TokenLookup,
    VerifyResult,
)
from store.served_table import ServedTable, table_directory
from store.shared_buffers import RequestBuffers
from store.spec import (
    FLOAT_DTYPES,
    QUANTIZED_DTYPES,
    TableSpec,
    row_bytes,
    row_width,
)
from store.step_sync import StepBarrier, StepShare, gradient_arrays
from store.wire import check_array, check_client_id
from store.wording import counted

log = logging.getLogger(__name__)

# A follower waiting for a checkpoint holds a request thread: not for long.
MAX_CHANGES_WAIT_S = 60.0
# Pages of a table file probed for page-cache residency (a few milliseconds of mincore
# calls); files of more pages are estimated from that many spread over them.
RESIDENCY_PROBES = 4096


@dataclasses.dataclass(frozen=True)
class _JournalCut:
    """Where a flush cut the journal, and what the catalog is to hold for it."""

    tables: list[ServedTable]
    steps: dict[str, int]
    windows: dict[str, dict[str, Any]]
    fence: int
    segment: int


class StoreEngine:
    def __init__(
        self,
        data_dir: str,
        max_lookup_rows: int = 1 << 26,
        shared_buffer_dir: str | None = "/dev/shm",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        read_only: bool = False,
        max_sync_world_size: int = 14,
        max_pending_step_bytes: int = 1 << 30,
        follows: str = "",
        overcommit_disk: bool = False,
        max_tables: int = 1024,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    ) -> None:
        """Opens (or creates) the data directory and recovers from a crash of the daemon:
        a committed restore is finished, a push cut short is undone, and the steps and
        idempotency windows of acknowledged pushes are replayed from the journal. After a
        crash of the machine the rows cannot be trusted: `needs_restore` says why, and the
        daemon must restore a checkpoint before it serves.

        A follower (`follows`: the leader's address) takes no change from its callers, only
        the leader's checkpoints (`apply_changes`); one whose last catch-up was cut short, or
        whose machine went down, starts empty and catches up afresh."""
        self.data_dir = os.path.abspath(data_dir)
        self.max_lookup_rows = max_lookup_rows
        self.max_tables = max_tables
        self.answers = LookupAnswers(
            max_lookup_rows, max_message_bytes, max_chunk_bytes, AnswerBudget(max_answer_bytes)
        )
        self.shared_buffer_dir = shared_buffer_dir
        self.follows = follows
        self.overcommit_disk = overcommit_disk
        self.read_only = read_only or bool(follows)
        # Read-only media (store/read_only_media.py): nothing is written in the directory.
        self.media_read_only = read_only and not follows and is_read_only_media(self.data_dir)
        self.follow_error = ""
        self._checkpoint_published = threading.Condition()
        self._waits_ended = False
        # Each rank of a step waits on a request thread of its own (see server.py).
        self.max_sync_world_size = max_sync_world_size
        self._steps = StepBarrier(max_pending_step_bytes)
        if self.media_read_only:
            self._lock_file = None
            self._open_read_only()
        else:
            os.makedirs(self.data_dir, exist_ok=True)
            self._lock_file = data_dir_lock(self.data_dir)
            try:
                self._open()
            except BaseException:
                if hasattr(self, "catalog"):
                    self.catalog.close()
                self._lock_file.close()
                raise
        log.info("opened %s from %s", counted(len(self._tables), "table"), self.data_dir)

    def _open_read_only(self) -> None:
        """Opens a directory on read-only media, writing nothing: the catalog read-only,
        every visible table's files mapped copy-on-write; refused unless its daemon stopped
        cleanly (store/read_only_media.py)."""
        self._init_state()
        self.catalog = Catalog(os.path.join(self.data_dir, CATALOG), read_only=True)
        try:
            check_clean(self.data_dir, self.catalog)
            self.store_id = self.catalog.get_meta("store_id")
            self._clients = ClientWindows(self.catalog.clients())
            importing = self.catalog.importing()
            for spec, step, incarnation in self.catalog.tables():
                if spec.name in importing:
                    continue  # hidden while unfinished, and nothing here can finish it
                directory = table_directory(self.data_dir, spec.name)
                table = ServedTable.open(directory, spec, step, incarnation, media_read_only=True)
                self._tables[spec.name] = table
        except BaseException:
            self.catalog.close()
            raise
        self.needs_restore = ""

    def _init_state(self) -> None:
        """The engine's in-memory state, before any table is opened."""
        self._started = time.monotonic()
        self._tables: dict[str, ServedTable] = {}
        # Imports staged to replace the live table of their name (store/replacement.py).
        self._replacements: dict[str, ServedTable] = {}
        self._tables_lock = threading.Lock()
        # Pushes hold it shared; checkpoints, restores, drops, and flushes while they cut the
        # journal, exclusively. Lookups never take it.
        self._gate = Gate()
        # One flush at a time, and none beside a step that retires or replaces tables: a
        # flush writes its tables back after it has let pushes go on (see `flush`). Taken
        # before the gate, never after it.
        self._durability = threading.Lock()
        self.pauses = Pauses()

    def _open(self) -> None:
        tables_dir = os.path.join(self.data_dir, TABLES)
        catalog_path = os.path.join(self.data_dir, CATALOG)
        existing_tables = os.listdir(tables_dir) if os.path.isdir(tables_dir) else []
        if not os.path.isdir(catalog_path) and existing_tables:
            raise FailedPreconditionError(
                f"{catalog_path} is missing but {tables_dir} holds {len(existing_tables)} "
                "tables: the catalog was deleted; restore it (or move the data away)"
            )
        os.makedirs(tables_dir, exist_ok=True)
        self.catalog = Catalog(catalog_path)
        if self.catalog.get_meta("created") == "" and not self.catalog.tables():
            if existing_tables:
                raise FailedPreconditionError(
                    f"{catalog_path} is empty but {tables_dir} holds {len(existing_tables)} "
                    "tables: the catalog was truncated or replaced"
                )
            self.catalog.put_meta("created", str(time.time()))
        if not self.catalog.get_meta("store_id"):
            self.catalog.put_meta("store_id", uuid.uuid4().hex)
        self.store_id = self.catalog.get_meta("store_id")
        self._init_state()
        self.needs_restore = self._unclean_machine_crash()
        if self.follows and (self.needs_restore or self.catalog.get_meta("follow_applying")):
            log.warning("the last catch-up with the leader was cut short: starting afresh")
            self.catalog.record_followed([], {}, "", 0)
            self.catalog.sync()
            shutil.rmtree(tables_dir)
            os.makedirs(tables_dir)
            self.needs_restore = ""
        self.journal, records = _native.Journal.open(os.path.join(self.data_dir, JOURNAL))
        pending = restore.pending(self.data_dir)
        if pending is not None:
            log.warning("finishing the restore of checkpoint %d cut short by a crash", pending)
            restore.finish(self.data_dir, self.catalog, self.journal, pending)
            records = []
            self.needs_restore = ""
        restore.remove_unfinished(self.data_dir)
        remove_unpublished(self.data_dir)
        self._reconcile_checkpoints()
        self._clients = ClientWindows(self.catalog.clients())
        self._open_tables(records)
        if not self.needs_restore:
            self.catalog.put_meta("running_boot", boot_id())
        self._flush_unlocked()

    def _reconcile_checkpoints(self) -> None:
        """A crash between publishing a checkpoint and recording it leaves the directory as
        the truth: record what was published, forget what is gone."""
        known = {m["id"] for m in self.catalog.checkpoints()}
        published = set(published_ids(self.data_dir))
        for checkpoint_id in sorted(published - known):
            self.catalog.put_checkpoint(read_manifest(self.data_dir, checkpoint_id))
        for checkpoint_id in known - published:
            self.catalog.delete_checkpoint(checkpoint_id)

    def _unclean_machine_crash(self) -> str:
        """Why the tables cannot be trusted, or "": the daemon was running when the machine
        went down, so writes to the mapped rows that had not reached the disk are lost."""
        running = self.catalog.get_meta("running_boot")
        if running and running != boot_id():
            return (
                "the machine went down while the daemon was running: rows changed since the "
                "last checkpoint may be partly lost; start with --restore latest (or an id)"
            )
        return ""

    def _open_tables(self, records: list[tuple[int, str, str, int, int]]) -> None:
        """Opens every table of the catalog, undoing a push the journal does not hold and
        replaying the steps and windows of the pushes it does."""
        fenced = int(self.catalog.get_meta("pushes_fenced", "0"))
        committed = {token for token, *_ in records}
        steps: dict[str, int] = {}
        for _, table_name, client_id, sequence, step in records:
            steps[table_name] = max(steps.get(table_name, 0), step)
            if client_id:
                self._clients.window(client_id).record(sequence)
        highest = max([fenced, *committed])
        replacement.settle(self.data_dir, self.catalog)
        catalogued = self.catalog.tables()
        importing = self.catalog.importing()
        staged = self.catalog.replacements()
        known = {spec.name for spec, _, _ in catalogued}
        known |= {replacement.STAGED_PREFIX + spec.name for spec, _ in staged}
        for name in sorted(set(os.listdir(os.path.join(self.data_dir, TABLES))) - known):
            log.warning("removing tables/%s, which a crash left while it was being created", name)
            shutil.rmtree(table_directory(self.data_dir, name), ignore_errors=True)
        for spec, step, incarnation in catalogued:
            directory = table_directory(self.data_dir, spec.name)
            table = ServedTable.open(
                directory, spec, max(step, steps.get(spec.name, 0)), incarnation
            )
            undone = table.native.recover(committed, fenced)
            if undone is not None:
                log.warning(
                    "table %s: undid push %d (%d rows), cut short by a crash before it was "
                    "acknowledged",
                    spec.name,
                    *undone,
                )
            highest = max(highest, table.native.last_push_token())
            table.native.attach_journal(self.journal)
            table.importing = spec.name in importing
            self._tables[spec.name] = table
        for spec, incarnation in staged:
            directory = replacement.staged_directory(self.data_dir, spec.name)
            self._replacements[spec.name] = ServedTable.open(directory, spec, 0, incarnation)
            self._replacements[spec.name].importing = True
        self.journal.tokens_after(highest)

    # tables ----------------------------------------------------------------------------

    def table(self, name: str) -> ServedTable:
        """A visible table (not one being imported)."""
        table = self._any_table(name)
        if table.importing:
            raise NotFoundError(f"table {name!r} does not exist yet: its import is unfinished")
        return table

    def _quoted_table(self, name: str, incarnation: str) -> ServedTable:
        """The visible table `name`, when it is the incarnation a request quotes (if any)."""
        table = self.table(name)
        if incarnation and incarnation != table.incarnation:
            raise NotFoundError(
                f"table {name!r} is not the one the client described (dropped and created "
                "anew since): describe it again"
            )
        return table

    def _any_table(self, name: str) -> ServedTable:
        with self._tables_lock:
            table = self._tables.get(name)
        if table is None:
            raise NotFoundError(f"table {name!r} does not exist")
        return table

    def _visible(self) -> list[ServedTable]:
        with self._tables_lock:
            tables = [t for t in self._tables.values() if not t.importing]
        return sorted(tables, key=lambda t: t.name)

    def _writable(self, action: str) -> None:
        if self.follows:
            raise FailedPreconditionError(
                f"this daemon follows {self.follows} (serve --follow): it does not {action}; "
                "ask the leader"
            )
        if self.read_only:
            raise FailedPreconditionError(
                f"this daemon serves read-only (serve --read-only): it does not {action}"
            )

    def create_table(
        self, spec: TableSpec, importing: bool = False, replace_existing: bool = False
    ) -> TableStatus:
        """Creates a table; `importing` creates it hidden (see `write_rows`), replacing an
        unfinished import of the same name; with `replace_existing` too, an import of a
        table that exists is staged to replace it at `finish_import`."""
        self._writable("create tables")
        if replace_existing and not importing:
            raise InvalidArgumentError(
                "replace_existing needs importing: a table is replaced by an import"
            )
        spec.check()
        self.answers.check_row_fits(spec)
        # Exclusive: a restore swapping the tables directory meanwhile would lose the table.
        with self._gate.exclusive(), self._tables_lock:
            existing = self._tables.get(spec.name)
            if replace_existing and existing is not None and not existing.importing:
                table = self._stage_replacement(spec)
                log.info("staged a replacement of table %s", spec.name)
                return table.status()
            if existing is not None and not (importing and existing.importing):
                unfinished = " as an unfinished import (drop it, or import again)"
                how = unfinished if existing.importing else ""
                raise AlreadyExistsError(f"table {spec.name!r} already exists{how}")
            if existing is None:
                self._check_table_count()
            if existing is not None:
                log.info("dropping the unfinished import of %s to import it again", spec.name)
                del self._tables[spec.name]
                self.catalog.delete_table(spec.name)
            table = self._new_table(table_directory(self.data_dir, spec.name), spec)
            table.native.attach_journal(self.journal)
            table.importing = importing
            self.catalog.put_table(spec, 0, table.incarnation, importing=importing)
            self._tables[spec.name] = table
        log.info(
            "created table %s (%d x %d %s)",
            spec.name,
            spec.num_rows,
            spec.dim,
            spec.dtype,
        )
        return table.status()

    def _stage_replacement(self, spec: TableSpec) -> ServedTable:
        """Creates the import that will replace live table `spec.name`, starting over one
        staged before."""
        if self._replacements.pop(spec.name, None) is None:
            self._check_table_count()
        else:
            log.info("dropping the unfinished replacement of %s to import it again", spec.name)
            self.catalog.delete_replacement(spec.name)
        table = self._new_table(replacement.staged_directory(self.data_dir, spec.name), spec)
        table.importing = True
        self.catalog.put_replacement(spec, table.incarnation)
        self._replacements[spec.name] = table
        return table

    def _check_table_count(self) -> None:
        count = len(self._tables) + len(self._replacements)
        if count >= self.max_tables:
            staged = f" ({len(self._replacements)} staged to replace others)"
            raise ResourceExhaustedError(
                f"this daemon serves {count} tables{staged if self._replacements else ''}, "
                "its limit (--max-tables): drop one first, or raise the limit"
            )

    def _new_table(self, directory: str, spec: TableSpec) -> ServedTable:
        """A table of a new incarnation in `directory` (emptied first: a crashed create may
        have left files), if the disk has room for it."""
        shutil.rmtree(directory, ignore_errors=True)
        # Created first (in O(1)): a spec the engine cannot map is refused as such.
        try:
            table = ServedTable.create(directory, spec, uuid.uuid4().hex)
            self._check_room(spec)
        except Exception as error:
            shutil.rmtree(directory, ignore_errors=True)
            if isinstance(error, OSError) and error.errno == errno.EFBIG:
                raise ResourceExhaustedError(
                    f"table {spec.name!r} needs files larger than the file system of "
                    f"{self.data_dir} allows ({spec.num_rows} rows of "
                    f"{spec.disk_bytes_per_row()} bytes with optimizer state); use fewer "
                    "rows, or shard the table over several daemons"
                ) from error
            raise
        return table

    def _check_room(self, spec: TableSpec) -> None:
        """Refuses a table that could not be written whole on the disk's free space, less
        what the tables here may still take as their unwritten rows are written (rows take
        disk when first written). `overcommit_disk` allows it: rows that do not fit are then
        refused when pushed (RESOURCE_EXHAUSTED), as on a disk filled by something else."""
        if self.overcommit_disk:
            return
        needed = spec.num_rows * spec.disk_bytes_per_row()
        disk = os.statvfs(self.data_dir)
        free = disk.f_bavail * disk.f_frsize
        promised = sum(
            (t.spec.num_rows - t.native.written_count()) * t.spec.disk_bytes_per_row()
            for t in [*self._tables.values(), *self._replacements.values()]
        )
        if needed > free - promised:
            raise ResourceExhaustedError(
                f"table {spec.name!r} takes {needed} bytes once every row is written "
                f"({spec.num_rows} rows of {spec.disk_bytes_per_row()} bytes with optimizer "
                f"state), but the disk of {self.data_dir} has {free} bytes free, "
                f"{min(promised, free)} of them promised to the unwritten rows of tables "
                "here; free room, use fewer rows, or serve with --overcommit-disk"
            )

    def tune_table(self, name: str, lr: float, weight_decay: float) -> TableStatus:
        """Sets a live table's learning rate and weight decay for later pushes; its spec in
        the catalog (and so in later checkpoints) says so from then on."""
        self._writable("tune tables")
        # Exclusive, after a flush: no push in flight, and the catalog's step for the table
        # is the one its rows on disk hold when the new spec is recorded beside it.
        with self._exclusive():
            table = self.table(name)
            if table.spec.read_only or table.spec.dtype in QUANTIZED_DTYPES:
                raise FailedPreconditionError(f"table {name!r} is not trained: nothing to tune")
            optimizer = dataclasses.replace(
                table.spec.optimizer, lr=lr, weight_decay=weight_decay
            ).check()
            spec = dataclasses.replace(table.spec, optimizer=optimizer)
            self._flush_unlocked()
            table.native.retune(lr, weight_decay)
            self.catalog.put_table(spec, table.native.step, table.incarnation)
            self.catalog.sync()
            table.spec = spec
        log.info("tuned table %s: lr %g, weight decay %g", name, lr, weight_decay)
        return table.status()

    def drop_table(self, name: str, unfinished_import_only: bool = False) -> None:
        """Drops table `name` and any replacement staged for it; with
        `unfinished_import_only`, only its unfinished import (never a visible table)."""
        self._writable("drop tables")
        with self._exclusive():
            with self._tables_lock:
                if unfinished_import_only and self._drop_replacement(name):
                    log.info("dropped the unfinished replacement of table %s", name)
                    return
                table = self._tables.get(name)
                if unfinished_import_only and (table is None or not table.importing):
                    raise NotFoundError(f"table {name!r} has no unfinished import")
                if self._tables.pop(name, None) is None:
                    raise NotFoundError(f"table {name!r} does not exist")
                self._drop_replacement(name)
                self.catalog.delete_table(name)
                # In-flight lookups keep their mapping of the unlinked files.
                shutil.rmtree(table_directory(self.data_dir, name), ignore_errors=True)
            # Empties the journal: its records of this table must not be replayed onto a
            # table created later under the same name.
            self._flush_unlocked()
        log.info("dropped table %s", name)

    def _drop_replacement(self, name: str) -> bool:
        """Drops the replacement staged for table `name`, if any (tables lock held)."""
        if self._replacements.pop(name, None) is None:
            return False
        self.catalog.delete_replacement(name)
        shutil.rmtree(replacement.staged_directory(self.data_dir, name), ignore_errors=True)
        return True

    def list_tables(self) -> list[TableStatus]:
        return [t.status() for t in self._visible()]

    def unfinished_imports(self) -> list[str]:
        """The names of the tables whose import is unfinished (replacements staged for
        live tables among them), in order."""
        with self._tables_lock:
            importing = {t.name for t in self._tables.values() if t.importing}
            return sorted(importing | set(self._replacements))

    # imports ---------------------------------------------------------------------------

    def write_rows(self, request: RowsWrite) -> int:
        """Stores rows of a table being imported exactly as given (no optimizer, no journal:
        an import is durable when `finish_import` acknowledges it)."""
        self._writable("import rows")
        table = self._import(request.table)
        if not table.importing:
            raise FailedPreconditionError(
                f"table {request.table!r} is not being imported: WriteRows only fills tables "
                "created with importing=true"
            )
        rows = request.rows
        stored, width = table.spec.dtype, row_width(table.spec.dtype, table.spec.dim)
        in_buffer = rows.buffer is not None
        if in_buffer and rows.data:
            raise InvalidArgumentError("rows carry data and a rows_buffer: send one of them")
        check_array(rows, "rows", (stored,), 2, data_elsewhere=in_buffer)
        if rows.shape[1] != width:
            raise InvalidArgumentError(
                f"rows must have shape [n, {width}] ({stored} rows of dim {table.spec.dim}), "
                f"got {list(rows.shape)}"
            )
        count = rows.shape[0]
        if count > self.max_lookup_rows:
            raise ResourceExhaustedError(
                f"a write of {count} rows exceeds the server's limit of {self.max_lookup_rows}"
            )
        with RequestBuffers(self.shared_buffer_dir) as buffers:
            source = buffers.region(rows.buffer) if rows.buffer is not None else rows.data
            table.native.write_packed(request.first_row, count, source)
        return count

    def finish_import(self, name: str) -> TableStatus:
        """Makes an imported table's rows durable, then the table visible."""
        self._writable("import tables")
        table = self._import(name)
        if not table.importing:
            raise FailedPreconditionError(f"table {name!r} is not being imported")
        # Hidden, the table takes no pushes: its rows go to disk without holding others up.
        table.native.flush()
        with self._exclusive():
            if self._import(name) is not table:
                raise FailedPreconditionError(
                    f"the import of table {name!r} was dropped or started over meanwhile"
                )
            if self._replacements.get(name) is table:
                table = self._swap_in(table)
            else:
                self.catalog.finish_import(name)
                self.catalog.sync()
                table.importing = False
        log.info(
            "import of table %s finished (%s)", name, counted(table.native.written_count(), "row")
        )
        return table.status()

    def _import(self, name: str) -> ServedTable:
        """The table an import of `name` fills: the replacement staged for it, if any."""
        with self._tables_lock:
            staged = self._replacements.get(name)
        return staged if staged is not None else self._any_table(name)

    def _swap_in(self, staged: ServedTable) -> ServedTable:
        """Makes the staged replacement the table of its name (exclusive gate held)."""
        # The old table's pushes to disk and the journal emptied: none of its records may
        # be replayed onto the new table.
        self._flush_unlocked()
        replacement.swap_in(self.data_dir, self.catalog, staged.spec, staged.incarnation)
        # Opened afresh where it now lives; in-flight lookups keep their mappings of the old.
        directory = table_directory(self.data_dir, staged.name)
        table = ServedTable.open(directory, staged.spec, 0, staged.incarnation)
        table.native.attach_journal(self.journal)
        with self._tables_lock:
            old = self._tables.get(staged.name)
            if old is not None:
                table.counters = old.counters  # the same name serves on: its stats go on
            self._tables[staged.name] = table
            del self._replacements[staged.name]
        return table

    # lookups ---------------------------------------------------------------------------

    def lookup(self, request: Lookup) -> Iterator[RowChunk]:
        table = self._quoted_table(request.table, request.incarnation)
        with RequestBuffers(self.shared_buffer_dir) as buffers:
            data = self._keys(request, self.max_lookup_rows, buffers)
            return self.answers.answer(table, data, list(request.keys.shape), request, buffers)

    def _keys(self, request: Lookup | Push, limit: int, buffers: RequestBuffers) -> _native.Keys:
        """The request's keys, decoded once (every later call of the request takes them as
        they are, and checks them against a table in constant time). From a shared buffer
        they are copied twice end to end: by the client into the buffer, and by
        `Keys.from_shared` out of its mapping into the engine's memory."""
        at = request.keys.buffer
        if at is None:
            check_array(request.keys, "keys", ("uint64", "int64"), None)
            return _native.Keys.from_bytes(request.keys.data, request.keys.dtype)
        if request.keys.data:
            raise InvalidArgumentError("keys carry data and a keys_buffer: send one of them")
        check_array(request.keys, "keys", ("uint64", "int64"), None, data_elsewhere=True)
        count = math.prod(request.keys.shape)
        if count > limit:
            raise ResourceExhaustedError(
                f"a request of {count} keys exceeds the server's limit of {limit}"
            )
        return _native.Keys.from_shared(buffers.region(at), count, request.keys.dtype)

    def lookup_tokens(self, request: TokenLookup) -> Iterator[RowChunk]:
        table = self.table(request.table)
        keys = table.token_keys(
            request.token_ids,
            request.hash_fingerprint,
            self.max_lookup_rows,
            request.last_position_only,
            request.token_mask,
        )
        with RequestBuffers(self.shared_buffer_dir) as buffers:
            hashed = _native.Keys.from_array(keys.reshape(-1))
            return self.answers.answer(table, hashed, list(keys.shape), request, buffers)

    # pushes ----------------------------------------------------------------------------

    def push(self, request: Push) -> PushOutcome:
        if request.sync is not None:
            return self._push_step_share(request)
        # The table is found inside the gate: a restore or drop in between replaces it, and
        # a push applied to the replaced table would be acknowledged and lost.
        with RequestBuffers(self.shared_buffer_dir) as buffers, self._gate.shared():
            table = self._check_push(request)
            keys = self._keys(request, self.max_lookup_rows, buffers)
            return self._apply_once(table, keys, request, buffers)

    def _push_step_share(self, request: Push) -> PushOutcome:
        """One rank's share of a data-parallel step (store/step_sync.py): held until every
        rank has pushed, then applied once."""
        with RequestBuffers(self.shared_buffer_dir) as buffers, self._gate.shared():
            share = self._step_share(request, buffers)
        return self._join_step(share)

    def _step_share(self, request: Push, buffers: RequestBuffers) -> StepShare:
        """A rank's share of a step, checked and copied out of its request."""
        assert request.sync is not None
        sync = request.sync.check()
        if sync.world_size > self.max_sync_world_size:
            raise ResourceExhaustedError(
                f"a step of {sync.world_size} ranks needs a request thread for each while they "
                f"wait: this daemon serves steps of at most {self.max_sync_world_size} ranks "
                "(serve --workers)"
            )
        table = self._check_push(request)
        keys, grads = gradient_arrays(request, buffers, table.spec.dim)
        table.native.check_keys(_native.Keys.from_array(keys))
        return StepShare(table, sync, keys, grads)

    def _join_step(self, share: StepShare) -> PushOutcome:
        """Holds `share` until its step is applied or fails; no lock is held meanwhile."""
        table, sync = share.table, share.sync

        def apply(keys: npt.NDArray[np.uint64], grads: npt.NDArray[np.float32]) -> PushOutcome:
            with self._gate.shared():
                live = self.table(table.name)
                if live is not table or live.native.step != sync.step - 1:
                    raise FailedPreconditionError(
                        f"table {table.name!r} was replaced or moved to step "
                        f"{live.native.step} while step {sync.step} waited for its ranks: "
                        "nothing of the step was applied"
                    )
                if not len(keys):
                    # No rank had rows here: only the step count moves, recorded in the
                    # catalog (no journal record carries it) so that a restarted daemon
                    # takes the next step. Rows are unchanged, so the catalog's promise that
                    # its step's rows are on disk holds as before.
                    table.native.set_step(sync.step)
                    self.catalog.put_table(table.spec, sync.step, table.incarnation)
                    self.catalog.sync()
                    return PushOutcome(0, sync.step)
                rows, step, _ = table.native.push(
                    _native.Keys.from_array(keys), grads, "float32", sync.step, False, "", 0
                )
                table.counters.add(pushes=1, rows_pushed=rows)
                return PushOutcome(rows, step)

        return self._steps.push(
            table.name, lambda: table.native.step, sync, share.keys, share.grads, apply
        )

    def _check_push(self, request: Push) -> ServedTable:
        """The push's table, after checking the request's shapes, dtypes and client id."""
        self._writable("apply pushes")
        check_client_id(request.client_id)
        table = self._quoted_table(request.table, request.incarnation)
        if table.spec.read_only:
            raise FailedPreconditionError(
                f"table {table.name!r} is read-only (created with read_only): pushes are refused"
            )
        if table.spec.dtype in QUANTIZED_DTYPES:
            raise InvalidArgumentError(
                f"table {table.name!r} stores {table.spec.dtype} rows, which are for serving: "
                "pushes are refused (import its checkpoint into a float32 table to train it)"
            )
        if len(request.keys.shape) != 1:
            raise InvalidArgumentError(f"keys must be 1-D, got shape {list(request.keys.shape)}")
        in_buffer = request.grads.buffer is not None
        if in_buffer and request.grads.data:
            raise InvalidArgumentError("grads carry data and a grads_buffer: send one of them")
        check_array(request.grads, "grads", FLOAT_DTYPES, 2, data_elsewhere=in_buffer)
        n = request.keys.shape[0]
        if list(request.grads.shape) != [n, table.spec.dim]:
            raise InvalidArgumentError(
                f"grads must have shape [{n}, {table.spec.dim}], got {list(request.grads.shape)}"
            )
        return table

    def _apply_once(
        self, table: ServedTable, keys: _native.Keys, request: Push, buffers: RequestBuffers
    ) -> PushOutcome:
        """Applies the push unless its (client_id, sequence) was applied before."""
        if not request.client_id:
            return self._apply(table, keys, request, buffers)
        window = self._clients.window(request.client_id)
        with window.lock:
            if window.seen(request.sequence):
                table.counters.add(duplicate_pushes=1)
                return self._current_rows(table, keys, request, buffers)
            response = self._apply(table, keys, request, buffers)
            window.record(request.sequence)
            return response

    def batch(self, pushes: Sequence[Push], lookups: Sequence[Lookup]) -> BatchOutcome:
        """Every push in order, then every lookup (each answered in one chunk). All keys,
        shapes and dtypes are checked before anything is applied. A batch without pushes
        takes no lock a flush or a checkpoint holds, as a lookup does not."""
        shares = [push.sync for push in pushes if push.sync is not None]
        if shares:
            if len(shares) != len(pushes):
                raise InvalidArgumentError(
                    "a batch's pushes are all shares of a data-parallel step (sync), or none"
                )
            return self._batch_of_step_shares(pushes, lookups)
        if not pushes:
            with RequestBuffers(self.shared_buffer_dir) as buffers:
                checked = self._checked_lookups(pushes, lookups, buffers)
                return BatchOutcome([], *self._read_lookups(lookups, checked, buffers))
        applied = []
        with RequestBuffers(self.shared_buffer_dir) as buffers, self._gate.shared():
            push_tables = [self._check_push(push) for push in pushes]
            push_keys = [self._keys(p, self.max_lookup_rows, buffers) for p in pushes]
            for table, keys in zip(push_tables, push_keys, strict=True):
                table.native.check_keys(keys)
            checked = self._checked_lookups(pushes, lookups, buffers)
            for table, keys, push in zip(push_tables, push_keys, pushes, strict=True):
                applied.append(self._apply_once(table, keys, push, buffers))
            return BatchOutcome(applied, *self._read_lookups(lookups, checked, buffers))

    def _read_lookups(
        self,
        lookups: Sequence[Lookup],
        checked: tuple[list[ServedTable], list[_native.Keys], list[str]],
        buffers: RequestBuffers,
    ) -> tuple[list[RowChunk], int]:
        """A batch's checked lookups answered, each in one chunk, and the bytes of the answer
        budget that the rows answered in the message took first."""
        in_message = sum(
            len(keys) * row_bytes(dtype, table.spec.dim)
            for lookup, table, keys, dtype in zip(lookups, *checked, strict=True)
            if lookup.out is None
        )
        held = self.answers.budget.take(in_message) if in_message else 0
        answers = []
        try:
            for lookup, table, keys, dtype in zip(lookups, *checked, strict=True):
                shape = list(lookup.keys.shape)
                if lookup.out is not None:
                    answer = self.answers.into_buffer(
                        table, keys, shape, dtype, lookup.out, buffers
                    )
                else:
                    answer = self.answers.in_message(table, keys, shape, dtype)
                answers.append(answer)
        except BaseException:
            self.answers.budget.give_back(held)
            raise
        return answers, held

    def _checked_lookups(
        self, pushes: Sequence[Push], lookups: Sequence[Lookup], buffers: RequestBuffers
    ) -> tuple[list[ServedTable], list[_native.Keys], list[str]]:
        """A batch's lookups checked: their tables, keys (decoded) and row dtypes."""
        tables = [self._quoted_table(q.table, q.incarnation) for q in lookups]
        keys = [self._keys(q, self.max_lookup_rows, buffers) for q in lookups]
        dtypes = [
            self.answers.check(table, k, lookup.dtype)
            for table, k, lookup in zip(tables, keys, lookups, strict=True)
        ]
        for table, k in zip(tables, keys, strict=True):
            table.native.check_keys(k)
        self.answers.check_reply_size(pushes, lookups, tables, keys, dtypes)
        return tables, keys, dtypes

    def _batch_of_step_shares(
        self, pushes: Sequence[Push], lookups: Sequence[Lookup]
    ) -> BatchOutcome:
        """A rank's shares of a data-parallel step (one per table), then lookups that see the
        whole step: everything is checked first, then each share waits for its step (in the
        order sent: every rank sends its tables in one order), then the lookups are read."""
        with RequestBuffers(self.shared_buffer_dir) as buffers, self._gate.shared():
            shares = [self._step_share(push, buffers) for push in pushes]
            self._checked_lookups(pushes, lookups, buffers)
        joined = [self._join_step(share) for share in shares]
        outcome = self.batch([], lookups) if lookups else BatchOutcome([], [])
        return BatchOutcome(joined, outcome.lookups, outcome.held_bytes)

    def _apply(
        self, table: ServedTable, keys: _native.Keys, request: Push, buffers: RequestBuffers
    ) -> PushOutcome:
        grads = request.grads
        rows, applied, returned = table.native.push(
            keys,
            buffers.region(grads.buffer) if grads.buffer is not None else grads.data,
            grads.dtype,
            request.step or None,
            request.return_rows,
            request.client_id,
            request.sequence,
        )
        updated = Packed(grads.dtype, grads.shape, returned) if returned is not None else None
        table.counters.add(pushes=1, rows_pushed=rows)
        return PushOutcome(rows, applied, updated_rows=updated)

    def _current_rows(
        self, table: ServedTable, keys: _native.Keys, request: Push, buffers: RequestBuffers
    ) -> PushOutcome:
        """A duplicate push's answer: no change, and the rows as they are now if asked."""
        step = table.native.step
        if not request.return_rows:
            return PushOutcome(0, step, duplicate=True)
        grads = request.grads
        if grads.buffer is not None:
            table.native.lookup(keys, grads.dtype, into=buffers.region(grads.buffer))
            return PushOutcome(0, step, duplicate=True)
        rows = Packed(grads.dtype, grads.shape, table.native.lookup(keys, grads.dtype))
        return PushOutcome(0, step, duplicate=True, updated_rows=rows)

    # durability ------------------------------------------------------------------------

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """No push in flight and no flush writing back: for steps that flush and then retire,
        replace or re-step tables."""
        with self._durability, self._gate.exclusive():
            yield

    def flush(self) -> None:
        """Makes every table, step and idempotency window durable. Pushes are held off only
        while the journal is cut: as long as the pushes in flight then take to finish, and
        independent of how much there is to write. The rows are written back while pushes
        and lookups go on; lookups never wait for a flush. On read-only media, nothing."""
        if self.media_read_only:
            return
        with self._durability:
            started = time.monotonic()
            with self._gate.exclusive():
                cut = self._cut_journal()
            held = time.monotonic() - started
            self._write_back(cut)
        self.pauses.record("flushes", held, time.monotonic() - started)

    def _flush_unlocked(self) -> None:
        """A flush with no push in flight (the caller holds `_exclusive`, or is opening the
        engine): afterwards the journal is empty."""
        self._write_back(self._cut_journal())

    def _cut_journal(self) -> _JournalCut:
        """With no push in flight: every table's step, every window, the token below which
        every push so far is recorded, and the journal cut there (its records so far in a
        retired segment, later pushes appending to a new one)."""
        with self._tables_lock:
            tables = list(self._tables.values())
        fence = self.journal.fence_token()
        steps = {t.name: t.native.step for t in tables}
        windows = self._clients.snapshot()
        segment = self.journal.cut()
        crash_point("flush:journal-cut")
        return _JournalCut(tables, steps, windows, fence, segment)

    def _write_back(self, cut: _JournalCut) -> None:
        """Rows to disk (pushes made since the cut may reach it too, which is harmless: their
        records are in the new segment), then the cut's steps and windows to the catalog
        with its fence, then the cut segments deleted."""
        for table in cut.tables:
            table.native.flush()
        crash_point("flush:tables-synced")
        self.catalog.record_flush(cut.steps, cut.windows, cut.fence)
        self.catalog.sync()
        crash_point("flush:catalog-synced")
        self.journal.retire(cut.segment)

    def checkpoint(self, full: bool) -> dict[str, Any]:
        """Writes a checkpoint of every table. It holds pushes off (never lookups) while it
        writes the rows changed since the last checkpoint (every row, for a full one) and
        then flushes: for as long as writing those rows takes."""
        self._writable("write checkpoints")
        started = time.monotonic()
        with self._exclusive():
            history = self.catalog.checkpoints()
            checkpoint_id = (history[-1]["id"] + 1) if history else 1
            basis = int(self.catalog.get_meta("basis", "0"))
            parent = next((m for m in history if m["id"] == basis), None)
            tables = self._visible()
            manifest = write_checkpoint(
                self.data_dir,
                checkpoint_id,
                parent,
                tables,
                self._clients.snapshot(),
                full or parent is None,
            )
            self.catalog.put_checkpoint(manifest)
            self.catalog.put_meta("basis", str(checkpoint_id))
            crash_point("checkpoint:recorded")
            # Only now: had publishing failed, the next checkpoint would still see the rows.
            for table in tables:
                table.native.clear_dirty()
            self._flush_unlocked()
        took = time.monotonic() - started
        self.pauses.record("checkpoints", took, took)
        with self._checkpoint_published:
            self._checkpoint_published.notify_all()
        log.info(
            "checkpoint %d written (%s)",
            checkpoint_id,
            "full" if manifest["parent"] == 0 else f"incremental on {manifest['parent']}",
        )
        return manifest

    def checkpoints(self) -> list[dict[str, Any]]:
        return self.catalog.checkpoints()

    def restore(self, checkpoint_id: int) -> dict[str, Any]:
        """Brings every table back to checkpoint `checkpoint_id` (0: the latest), bit for bit;
        tables created since are dropped. Crash-atomic (see store/restore.py): a failure
        before the commit changes nothing, a crash after it is finished on start-up."""
        self._writable("restore checkpoints")
        with self._exclusive():
            history = self.catalog.checkpoints()
            if not history:
                raise FailedPreconditionError("there is no checkpoint to restore")
            target_id = checkpoint_id or history[-1]["id"]
            target = read_manifest(self.data_dir, target_id)
            restore.stage(self.data_dir, target)
            restore.commit(self.data_dir, target_id)
            with self._tables_lock:
                # Stats count since the daemon started: a table that outlives the restore
                # keeps its counters.
                counters = {name: table.counters for name, table in self._tables.items()}
                # In-flight lookups keep their mappings of the retired files.
                self._tables = {}
                self._replacements = {}
                restore.finish(self.data_dir, self.catalog, self.journal, target_id)
                self._clients = ClientWindows(target["clients"])
                self._open_tables([])
                for name, table in self._tables.items():
                    table.counters = counters.get(name, table.counters)
            self.needs_restore = ""
            self.catalog.put_meta("running_boot", boot_id())
            self._flush_unlocked()
        log.info("restored checkpoint %d (%s)", target_id, counted(len(target["tables"]), "table"))
        return target

    def verify(self, name: str) -> VerifyResult:
        """Checks the rows of table `name` (every table when empty) against their checksums."""
        tables = [self.table(name)] if name else self._visible()
        damaged: list[DamagedBlock] = []
        for table in tables:
            damaged += [DamagedBlock(table.name, f, row) for f, row in table.native.verify()]
        if damaged:
            log.error("verify: %d damaged blocks, first %s", len(damaged), damaged[0])
        return VerifyResult(
            tables=len(tables),
            written_rows=sum(t.native.written_count() for t in tables),
            damaged=damaged,
            unchecked=[t.name for t in tables if not t.native.row_checksums],
        )

    def page_cache_bytes(self) -> dict[str, int]:
        """Bytes of each table's files in the page cache, estimated from a bounded number of
        pages per file (exact for files of at most that many)."""
        return {t.name: t.native.resident_bytes(RESIDENCY_PROBES) for t in self._visible()}

    def pending_step_bytes(self) -> int:
        """Gradient bytes held by data-parallel steps waiting for their ranks."""
        return self._steps.pending_bytes()

    def stats(self) -> StatsResult:
        tables = self._visible()
        return StatsResult(
            uptime_s=time.monotonic() - self._started,
            checkpoints=self.catalog.checkpoint_count(),
            tables=[t.counters.snapshot(t.name) for t in tables],
            store_id=self.store_id,
            follow=self.follow_status(),
            pauses=self.pauses.snapshot(),
        )

    # replication -----------------------------------------------------------------------

    def changes_since(self, since: int, store_id: str, wait_s: float) -> Changes:
        """What turns checkpoint `since` of store `store_id` (empty: this one) into this
        store's latest checkpoint; with nothing newer, waits up to `wait_s` for one."""
        if store_id and store_id != self.store_id:
            since = 0  # another store's checkpoint ids say nothing of this one's
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_CHANGES_WAIT_S)
        with self._checkpoint_published:
            while not self._waits_ended:
                latest = self.catalog.latest_checkpoint()
                if latest is not None and latest["id"] != since:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._checkpoint_published.wait(left)
        return plan_changes(self.store_id, self.catalog.checkpoints(), since, self.data_dir)

    def end_waits(self) -> None:
        """Answers every call waiting for a new checkpoint now, and later ones at once: the
        daemon is stopping, and a wait would hold its shutdown for as long as it asks."""
        with self._checkpoint_published:
            self._waits_ended = True
            self._checkpoint_published.notify_all()

    def follow_status(self) -> FollowStatus:
        if not self.follows:
            return FollowStatus()
        return FollowStatus(
            self.follows, int(self.catalog.get_meta("followed_checkpoint", "0")), self.follow_error
        )

    def follow_position(self) -> tuple[str, int]:
        """The leader's store id and the checkpoint of it this follower holds: ("", 0)
        before the first catch-up, and (id, 0) after one that failed midway, so that the
        next begins afresh."""
        store_id = self.catalog.get_meta("followed_store")
        if self.catalog.get_meta("follow_applying"):
            return store_id, 0
        return store_id, int(self.catalog.get_meta("followed_checkpoint", "0"))

    def apply_changes(self, changes: Changes) -> None:
        """Makes a follower's tables equal the leader's checkpoint `changes.checkpoint`,
        from packs received into files (`ChangedPack.path`). A crash midway leaves a mark
        that makes the next start begin afresh; lookups meanwhile see each table's rows
        move from one checkpoint to the next."""
        manifest = changes.manifest
        if manifest is None:
            return
        entries = {e["name"]: e for e in manifest["tables"]}
        if [t.name for t in changes.tables] != list(entries):
            raise InvalidArgumentError("the changes do not list the tables of their manifest")
        with self._exclusive():
            self.catalog.put_meta("follow_applying", str(changes.checkpoint))
            self.catalog.sync()
            crash_point("follow:marked")
            with self._tables_lock:
                gone = set(self._tables) - set(entries)
                for name in gone:
                    del self._tables[name]
                    shutil.rmtree(table_directory(self.data_dir, name), ignore_errors=True)
            updated = []
            for change in changes.tables:
                entry = entries[change.name]
                updated.append(self._apply_table_change(change, entry))
            with self._tables_lock:
                self._tables.update({t.name: t for t in updated})
            for table in updated:
                table.native.flush()
            crash_point("follow:packs-applied")
            self.catalog.record_followed(
                [(t.spec, t.native.step, t.incarnation) for t in updated],
                manifest["clients"],
                changes.store_id,
                changes.checkpoint,
            )
            self.catalog.sync()
            crash_point("follow:recorded")
            self._clients = ClientWindows(manifest["clients"])
        log.info(
            "caught up with checkpoint %d of %s (%s)",
            changes.checkpoint,
            self.follows,
            counted(sum(len(t.packs) for t in changes.tables), "pack"),
        )

    def _apply_table_change(self, change: ChangedTable, entry: dict[str, Any]) -> ServedTable:
        spec = spec_of(entry)
        with self._tables_lock:
            table = self._tables.get(change.name)
        if change.reset:
            directory = table_directory(self.data_dir, change.name)
            # In-flight lookups keep their mappings of the unlinked files.
            shutil.rmtree(directory, ignore_errors=True)
            reset = ServedTable.create(directory, spec, entry["incarnation"])
            if table is not None:
                reset.counters = table.counters
            table = reset
        elif table is None or table.incarnation != entry["incarnation"]:
            raise FailedPreconditionError(
                f"table {change.name!r} changed on the leader from a copy this follower "
                "does not hold"
            )
        for pack in change.packs:
            apply_checked_pack(table, pack.path, pack.rows, pack.step, pack.bytes, pack.crc32)
        table.native.clear_dirty()
        table.spec = spec
        return table

    def close(self) -> None:
        """Flushes everything and records a clean stop (the next start trusts the rows even
        if the machine goes down in between); on read-only media, only closes."""
        if self._lock_file is None:  # read-only media: nothing to write
            self.catalog.close()
            return
        with self._exclusive():
            self._flush_unlocked()
            if not self.needs_restore:
                self.catalog.delete_meta("running_boot")
            self.catalog.sync()
        self.catalog.close()
        self._lock_file.close()
