"""`EngramClient`: the store as one object, over one daemon or several that shard tables.

A table spread over n daemons is cut into n contiguous row ranges, shard i holding rows
`[i * R // n, (i + 1) * R // n)`; every client routes keys the same way because each shard
records its range (`first_row`, `num_rows`) and the client checks them against its address
list. Rows never written read the same initial values as one whole table would.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from client.batch import ShardBatch, split_by_shard
from client.changes import read_changes
from client.connection import RetryPolicy, Shard
from client.errors import InvalidRequestError, PreconditionFailedError, TableNotFoundError
from client.layout import TableLayout
from client.results import (
    BatchResult,
    ChangedRows,
    CheckpointInfo,
    DaemonStats,
    DamagedBlock,
    PushResult,
    TableInfo,
    VerifyReport,
)
from client.security import Security
from client.shared_memory import DEFAULT_DIRECTORY, SharedBufferPool, is_local
from client.transfer import RowTransfer
from store._proto.engram.store.v1 import store_pb2 as pb
from store.arrays import as_keys, as_rows, as_token_mask, numpy_row_type
from store.conversions import (
    hash_from_proto,
    sync_to_proto,
    table_spec_from_proto,
    table_spec_to_proto,
)
from store.errors import InvalidArgumentError
from store.spec import (
    FLOAT_DTYPES,
    UINT64_MAX,
    HashSpec,
    OptimizerSpec,
    SyncStep,
    TableSpec,
    check_table_argument,
    checked_bool,
    checked_integer,
    is_integer,
    row_width,
)

log = logging.getLogger(__name__)


def _described(out: Any) -> str:
    if isinstance(out, np.ndarray):
        return f"{out.dtype} {out.shape}"
    return type(out).__name__


def _checked_sync_step(share: Any) -> SyncStep:
    if not isinstance(share, SyncStep):
        raise InvalidArgumentError(f"sync must be a SyncStep, got {share!r}")
    return share.check()


def _entry_keys(entry: str, table: Any, keys: Any) -> npt.NDArray[np.uint64]:
    """The keys of a batch's `entry` as `as_keys` makes them, its table argument checked;
    errors name the entry."""
    try:
        check_table_argument(table)
        return as_keys(keys)
    except (TypeError, ValueError, IndexError) as error:  # the tree's errors are these too
        raise type(error)(f"{entry}: {error}") from None


class EngramClient:
    """A client of one store daemon or of several that shard tables by row range.

    `addresses` is one "host:port" or a list (the order defines the shards). Calls retry
    transient failures until `timeout_s`; pushes carry (client id, sequence) so a retried push
    is applied once. A dead shard raises `ShardUnavailableError` naming its address.

    Rows and gradients travel through shared memory (files in `shared_memory_dir`) with the
    daemons on this machine, by default (`shared_memory=None`) those at a loopback address;
    `True` tries it with every daemon, `False` never. A daemon that cannot use it gets the
    rows in messages instead.

    `client_id` names this client's pushes (default: a fresh random id); it must be this
    client's alone (see docs/reference/acknowledgements.md).

    `security` (a token, TLS files) defaults to `Security.from_environment()`
    (`ENGRAM_STORE_TOKEN`, `ENGRAM_STORE_TLS_CA`, ...).
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        client_id: str | None = None,
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
        shared_memory: bool | None = None,
        shared_memory_dir: str = DEFAULT_DIRECTORY,
        security: Security | None = None,
    ) -> None:
        one = isinstance(addresses, str) or not isinstance(addresses, Iterable)
        listed: list[Any] = [addresses] if one else list(addresses)
        if not listed or not all(isinstance(a, str) for a in listed):
            raise ValueError(f"addresses must be one or more 'host:port' strings, got {listed}")
        if client_id is not None and not isinstance(client_id, str):
            raise ValueError(f"client_id must be a string or None, got {client_id!r}")
        if shared_memory is not None:
            checked_bool("shared_memory", shared_memory)
        security = security if security is not None else Security.from_environment()
        self.shards = [
            Shard(a, timeout_s, retry or RetryPolicy(), interceptors, security) for a in listed
        ]
        usable = os.path.isdir(shared_memory_dir) and os.access(shared_memory_dir, os.W_OK)
        self._buffers = SharedBufferPool(shared_memory_dir)
        self._transfers = [
            RowTransfer(
                shard,
                self._buffers,
                usable and (is_local(shard.address) if shared_memory is None else shared_memory),
            )
            for shard in self.shards
        ]
        self.client_id = client_id or uuid.uuid4().hex
        self._sequence = itertools.count(1)
        self._sequence_lock = threading.Lock()
        self._layouts: dict[str, TableLayout] = {}
        # Where write_rows puts the rows of each import this client started: the import's
        # own layout (a replacement may have another shape than the table it replaces).
        self._import_layouts: dict[str, TableLayout] = {}
        # Server-side hashing fingerprints of the tables looked up by token ids.
        self._fingerprints: dict[str, int] = {}
        # Per-shard calls of one request, and whole requests run in the background: separate
        # pools, so background requests waiting on their shards cannot starve them.
        self._fanout = ThreadPoolExecutor(max_workers=max(2, 2 * len(self.shards)))
        self._background = ThreadPoolExecutor(max_workers=4)
        self._closed = False

    # lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True
        self._background.shutdown(wait=True)
        self._fanout.shutdown(wait=True)
        for shard in self.shards:
            shard.close()
        self._buffers.close()

    def __enter__(self) -> EngramClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> Any:
        # A copy would share this client's id: its pushes, numbered from 1 again, would be
        # taken by the daemons for retries of this client's and dropped.
        raise TypeError(
            "an EngramClient cannot be pickled or sent to another process: open one in each "
            "process (its channels, threads and push numbering are its own)"
        )

    @contextmanager
    def _layouts_forgotten_when_gone(self, tables: Iterable[str]) -> Iterator[None]:
        """Forgets the layouts of `tables` when a daemon says one is gone: dropped, or
        created anew (its incarnation no longer the one described)."""
        try:
            yield
        except TableNotFoundError:
            for table in tables:
                self._layouts.pop(table, None)
            raise

    def _check_open(self) -> None:
        if self._closed:
            # Its pools and channels are shut: they would say "cannot schedule new futures
            # after shutdown" or "Cannot invoke RPC on closed channel!".
            raise PreconditionFailedError("this client is closed")

    def _each_shard(self, call: Any) -> list[Any]:
        """`call(shard_index, shard)` on every shard in parallel, results in shard order."""
        self._check_open()
        futures = [self._fanout.submit(call, i, s) for i, s in enumerate(self.shards)]
        return [f.result() for f in futures]

    # tables ---------------------------------------------------------------------------

    def create_table(
        self,
        name: str,
        num_rows: int,
        dim: int,
        *,
        dtype: str = "float32",
        init: str = "normal",
        init_std: float = 0.02,
        seed: int = 0,
        optimizer: str | OptimizerSpec = "sgd",
        lr: float = 0.01,
        eps: float = 0.0,
        betas: tuple[float, float] = (0.0, 0.0),
        initial_accumulator_value: float = 0.0,
        weight_decay: float = 0.0,
        allow_non_finite: bool = False,
        hash_config: HashSpec | pb.HashConfig | None = None,
        row_checksums: bool = True,
        read_only: bool = False,
    ) -> TableInfo:
        """Creates a table, split over every shard. `optimizer` is a name (with `lr`, `eps`,
        `betas`, `initial_accumulator_value`, `weight_decay`) or an `OptimizerSpec`; weight
        decay is PyTorch's L2 form (`tune_table` changes it, and `lr`, later); hyper-parameters
        left at 0 take PyTorch's defaults (Adagrad eps 1e-10; SparseAdam betas (0.9, 0.999), eps
        1e-8). `hash_config` enables server-side token hashing, for single-daemon tables
        only. `row_checksums=False` makes pushes cheaper, and the daemon's `verify` blind to
        it. `read_only` tables serve lookups and refuse pushes."""
        if not isinstance(optimizer, OptimizerSpec):
            optimizer = OptimizerSpec(
                optimizer, lr, eps, betas[0], betas[1], initial_accumulator_value, weight_decay
            )
        if isinstance(hash_config, pb.HashConfig):
            hash_config = hash_from_proto(hash_config)
        spec = TableSpec(
            name,
            num_rows,
            dim,
            dtype=dtype,
            init=init,
            init_std=init_std,
            seed=seed,
            optimizer=optimizer.check(),
            allow_non_finite=allow_non_finite,
            row_checksums=row_checksums,
            read_only=read_only,
            hash_config=hash_config,
        )
        return self.create(spec)

    def create(
        self, spec: TableSpec, importing: bool = False, replace_existing: bool = False
    ) -> TableInfo:
        """Creates the table `spec` describes, cut into one row range per shard; with
        `importing`, hidden until `finish_import` (replacing an unfinished import). With
        `replace_existing` too, the import replaces the table of that name, which serves on
        until `finish_import` swaps the import in on each daemon."""
        spec.check_fields()  # named here: protobuf would refuse it without a name
        checked_bool("importing", importing)
        checked_bool("replace_existing", replace_existing)
        shards = len(self.shards)
        # Fewer rows than shards, but some: the daemons refuse none or fewer themselves.
        if 0 < spec.num_rows < shards:
            raise ValueError(f"num_rows {spec.num_rows} is below the {shards} shards")
        if spec.hash_config is not None and shards > 1:
            raise ValueError("hash_config needs a table on one daemon (hash locally otherwise)")
        bounds = [i * spec.num_rows // shards for i in range(shards + 1)]

        def create(i: int, shard: Shard) -> pb.TableInfo:
            part = dataclasses.replace(
                spec, num_rows=bounds[i + 1] - bounds[i], first_row=bounds[i]
            )
            request = pb.CreateTableRequest(
                spec=table_spec_to_proto(part),
                importing=importing,
                replace_existing=replace_existing,
            )
            info: pb.TableInfo = shard.call(lambda t: shard.stub.CreateTable(request, timeout=t))
            return info

        infos = self._each_shard(create)
        layout = TableLayout(
            np.array(bounds, dtype=np.uint64), spec.dim, tuple(i.incarnation for i in infos)
        )
        if importing:
            self._import_layouts[spec.name] = layout
        if replace_existing:
            # The table serves on as it was until the import is swapped in.
            return TableInfo.of_shards(infos)
        self._layouts[spec.name] = layout
        self._fingerprints.pop(spec.name, None)
        return TableInfo.of_shards(infos)

    def write_rows(self, table: str, first_row: int, rows: Any, dtype: str) -> None:
        """Stores `rows` as global rows `[first_row, first_row + len(rows))` of a table being
        imported, exactly: packed as the table stores them (`dtype`, its dtype; bfloat16 as
        uint16 bits, quantized rows as bytes, `[n, row bytes]`)."""
        checked_integer("first_row", first_row, 0, UINT64_MAX)
        packed = np.ascontiguousarray(rows)
        # Written as bytes: rows of another numpy type would be stored reinterpreted (through
        # shared memory nothing could tell), so they are refused, not converted.
        if packed.dtype != numpy_row_type(dtype) or packed.ndim != 2:
            raise ValueError(
                f"rows must be a 2-D {numpy_row_type(dtype)} array ({dtype} rows packed as "
                f"stored), got {packed.dtype} of shape {packed.shape}"
            )
        layout = self._import_layouts.get(table) or self._layout(table)
        stop = first_row + len(packed)
        if first_row < 0 or stop > int(layout.bounds[-1]):
            raise ValueError(
                f"rows [{first_row}, {stop}) fall outside table {table!r}'s "
                f"{int(layout.bounds[-1])} rows"
            )

        def write(i: int, shard: Shard) -> None:
            begin, end = (int(b) for b in layout.bounds[i : i + 2])
            lo, hi = max(first_row, begin), min(stop, end)
            if lo >= hi:
                return
            part = packed[lo - first_row : hi - first_row]
            request = pb.WriteRowsRequest(
                table=table,
                first_row=lo - begin,
                rows=pb.Array(dtype=dtype, shape=list(part.shape)),
            )
            self._transfers[i].write_rows(request, part)

        self._each_shard(write)

    def finish_import(self, table: str) -> TableInfo:
        """Makes an imported table durable on every shard, then visible."""
        check_table_argument(table)

        def finish(i: int, shard: Shard) -> pb.TableInfo:
            request = pb.FinishImportRequest(table=table)
            info: pb.TableInfo = shard.call(lambda t: shard.stub.FinishImport(request, timeout=t))
            return info

        infos = self._each_shard(finish)
        # A replacement swapped in is a table of another incarnation (and perhaps shape).
        self._layouts.pop(table, None)
        self._import_layouts.pop(table, None)
        self._fingerprints.pop(table, None)
        return TableInfo.of_shards(infos)

    def describe(self, name: str) -> TableInfo:
        return TableInfo.of_shards(self._describe_shards(name))

    def incarnation(self, table: str) -> tuple[str, ...]:
        """Which table of this name the client reads now: each shard's incarnation, new each
        time the table is created or imported. Asks no daemon once the table is described;
        changes when a call of this client's finds the table created anew."""
        return self._layout(table).incarnations

    def tune_table(self, name: str, lr: float, weight_decay: float = 0.0) -> TableInfo:
        """Sets a live table's learning rate and weight decay for its later pushes, on every
        shard (its optimizer's kind and state stay); later checkpoints record them."""

        check_table_argument(name, "name")
        OptimizerSpec(lr=lr, weight_decay=weight_decay).check_fields()

        def tune(i: int, shard: Shard) -> pb.TableInfo:
            request = pb.TuneTableRequest(name=name, lr=lr, weight_decay=weight_decay)
            info: pb.TableInfo = shard.call(lambda t: shard.stub.TuneTable(request, timeout=t))
            return info

        return TableInfo.of_shards(self._each_shard(tune))

    def spec(self, name: str) -> TableSpec:
        """The whole table's spec (as `create` takes it), from its shards'."""
        infos = self._describe_shards(name)
        spec = table_spec_from_proto(infos[0].spec)
        return dataclasses.replace(spec, num_rows=sum(i.spec.num_rows for i in infos), first_row=0)

    def replace_rows(self, name: str, rows: Any, chunk_rows: int = 1 << 16) -> TableInfo:
        """Makes `rows` the table's rows, packed as it stores them (`[num_rows, width]` of
        its dtype, as `write_rows` takes them): the table is imported anew with the same spec,
        so its optimizer starts afresh (step 0, no state), as a module's optimizer does after
        `load_state_dict`. The old table serves on until the new rows are all written, then
        each daemon swaps them in crash-atomically: a failure before that leaves the table as
        it was (and a replacement staged, which the next `replace_rows` starts over). On
        shards, a failure between the daemons' swaps leaves some shards replaced and others
        not, read as they are: run it again to finish. Every shard's rows are written before
        any daemon swaps, so that window is only each daemon's flush and swap."""
        checked_integer("chunk_rows", chunk_rows, 1, UINT64_MAX)
        spec = self.spec(name)
        packed = np.ascontiguousarray(rows)
        expected = (spec.num_rows, row_width(spec.dtype, spec.dim))
        if packed.shape != expected or packed.dtype != numpy_row_type(spec.dtype):
            raise ValueError(
                f"rows must be {numpy_row_type(spec.dtype)} of shape {expected} for table "
                f"{name!r} ({spec.dtype}), got {packed.dtype} {packed.shape}"
            )
        self.create(spec, importing=True, replace_existing=True)
        for start in range(0, spec.num_rows, chunk_rows):
            self.write_rows(name, start, packed[start : start + chunk_rows], spec.dtype)
        return self.finish_import(name)

    def _describe_shards(self, name: str) -> list[pb.TableInfo]:
        check_table_argument(name, "name")

        def describe(i: int, shard: Shard) -> pb.TableInfo:
            request = pb.DescribeTableRequest(name=name)
            info: pb.TableInfo = shard.call(lambda t: shard.stub.DescribeTable(request, timeout=t))
            return info

        infos: list[pb.TableInfo] = self._each_shard(describe)
        return infos

    def _layout(self, name: str) -> TableLayout:
        self._check_open()
        layout = self._layouts.get(check_table_argument(name, "table"))
        if layout is None:
            infos = self._describe_shards(name)
            bounds = [0]
            for i, info in enumerate(infos):
                if info.spec.first_row != bounds[-1]:
                    raise InvalidRequestError(
                        f"table {name!r}: shard {i} holds rows from {info.spec.first_row}, "
                        f"expected {bounds[-1]}; list the daemons in the order the table was "
                        "created with",
                        self.shards[i].address,
                    )
                bounds.append(bounds[-1] + info.spec.num_rows)
            layout = TableLayout(
                np.array(bounds, dtype=np.uint64),
                infos[0].spec.dim,
                tuple(info.incarnation for info in infos),
            )
            self._layouts[name] = layout
        return layout

    def tables(self) -> list[str]:
        reply = self.shards[0].call(
            lambda t: self.shards[0].stub.ListTables(pb.ListTablesRequest(), timeout=t)
        )
        return [t.spec.name for t in reply.tables]

    def list_tables(self) -> list[TableInfo]:
        """Every table, as `describe` gives it, in name order."""
        by_name: dict[str, list[pb.TableInfo]] = {}
        for reply in self._list_shards():
            for info in reply.tables:
                by_name.setdefault(info.spec.name, []).append(info)
        return [TableInfo.of_shards(by_name[name]) for name in sorted(by_name)]

    def unfinished_imports(self) -> list[str]:
        """The tables whose import is unfinished on some shard, in name order: hidden from
        every other call, they hold their disk until imported again or dropped."""
        return sorted({name for reply in self._list_shards() for name in reply.unfinished_imports})

    def _list_shards(self) -> list[pb.ListTablesResponse]:
        replies: list[pb.ListTablesResponse] = self._each_shard(
            lambda i, shard: shard.call(
                lambda t: shard.stub.ListTables(pb.ListTablesRequest(), timeout=t)
            )
        )
        return replies

    def drop_table(self, name: str, unfinished_import_only: bool = False) -> None:
        """Drops the table on every shard, with any replacement staged for it. With
        `unfinished_import_only`, drops only its unfinished import (a replacement staged, or
        a table not yet visible) wherever a shard holds one, and never a visible table:
        `TableNotFoundError` when no shard holds one."""
        check_table_argument(name, "name")
        checked_bool("unfinished_import_only", unfinished_import_only)
        request = pb.DropTableRequest(name=name, unfinished_import_only=unfinished_import_only)

        def drop(i: int, shard: Shard) -> TableNotFoundError | None:
            try:
                shard.call(lambda t: shard.stub.DropTable(request, timeout=t))
            except TableNotFoundError as error:
                if not unfinished_import_only:
                    raise
                return error  # an import interrupted before this shard had its part
            return None

        missing = self._each_shard(drop)
        if all(missing):
            raise missing[0]
        self._import_layouts.pop(name, None)
        if not unfinished_import_only:
            self._layouts.pop(name, None)
            self._fingerprints.pop(name, None)

    # rows -----------------------------------------------------------------------------

    def lookup(
        self,
        table: str,
        keys: Any,
        dtype: str = "float32",
        out: npt.NDArray[Any] | None = None,
    ) -> npt.NDArray[Any]:
        """Rows of `keys` (any shape) as an array of shape `keys.shape + (dim,)`; bfloat16
        rows come as their uint16 bits. For a quantized table, `dtype` may also be the
        stored dtype: rows packed as stored, uint8 of shape `keys.shape + (row bytes,)`.
        With `out` (C-contiguous, writeable, that shape and numpy type), the rows are
        written straight into it, and it is returned."""
        described = isinstance(table, str) and table in self._layouts
        try:
            return self._lookup(table, keys, dtype, out)
        except TableNotFoundError:
            if not described or table in self._layouts:
                raise
            # Created anew since this client described it: read it as it is laid out now.
            return self._lookup(table, keys, dtype, out)

    def _lookup(
        self, table: str, keys: Any, dtype: str, out: npt.NDArray[Any] | None
    ) -> npt.NDArray[Any]:
        row_type = numpy_row_type(dtype)
        shape = np.shape(keys)
        flat = as_keys(keys)
        layout = self._layout(table)
        width = row_width(dtype, layout.dim)
        if out is None:
            rows = np.empty((len(flat), width), row_type)
        elif (
            not isinstance(out, np.ndarray)
            or out.shape != (*shape, width)
            or out.dtype != row_type
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ValueError(
                f"out must be a writeable C-contiguous {row_type} array of shape "
                f"{(*shape, width)}, got {_described(out)}"
            )
        else:
            rows = out.reshape(len(flat), width)
        parts = layout.split(flat)

        def fetch(shard_index: int, positions: npt.NDArray[np.intp]) -> None:
            whole = len(parts) == 1

            def place(offset: int, got: npt.NDArray[Any]) -> None:
                if whole:
                    rows[offset : offset + len(got)] = got
                else:
                    rows[positions[offset : offset + len(got)]] = got

            local = flat[positions] - layout.bounds[shard_index]
            incarnation = layout.incarnation(shard_index)
            self._transfers[shard_index].lookup(table, local, dtype, width, place, incarnation)

        with self._layouts_forgotten_when_gone([table]):
            if len(parts) == 1:
                fetch(*parts[0])
            else:
                for future in [self._fanout.submit(fetch, s, p) for s, p in parts]:
                    future.result()
        return rows.reshape((*shape, width))

    def lookup_async(
        self, table: str, keys: Any, dtype: str = "float32"
    ) -> Future[npt.NDArray[Any]]:
        """`lookup` on a background thread; the keys are copied first."""
        keys = np.array(keys, copy=True)
        self._check_open()
        return self._background.submit(self.lookup, table, keys, dtype)

    def push(
        self,
        table: str,
        keys: Any,
        grads: Any,
        step: int | None = None,
        return_rows: bool = False,
        sync: SyncStep | None = None,
    ) -> PushResult:
        """Applies `grads` (`[len(keys), dim]`) with the table's optimizer; repeated keys are
        summed by the daemon. Exactly once, even when retried. With `return_rows`, the result
        carries each key's row as this push left it (a retried push that was already applied
        carries the rows as they are now).

        With `sync`, the push is this rank's share of step `sync.step` of a data-parallel job:
        it returns once every rank has pushed and the step is applied (their gradients
        reduced as DDP reduces them), or raises `StepFailedError` naming the ranks that did
        not push in time. Its keys may then be empty (`step` and `return_rows` are unused)."""
        if step is not None and (not is_integer(step) or step < 0):
            raise ValueError(f"step must be None or an integer >= 0, got {step!r}")
        checked_bool("return_rows", return_rows)
        flat = as_keys(keys)
        layout = self._layout(table)
        values = as_rows(grads, len(flat), layout.dim, "grads")
        if sync is not None:
            _checked_sync_step(sync)
            if return_rows:
                raise ValueError("return_rows is not available with sync: read the rows after")
        elif not len(flat):
            raise ValueError("push has no keys")
        with self._sequence_lock:
            sequence = next(self._sequence)
        updated = np.empty_like(values) if return_rows else None

        def send(shard_index: int, positions: npt.NDArray[np.intp]) -> pb.PushResponse:
            local = flat[positions] - layout.bounds[shard_index]
            rows = values if len(positions) == len(flat) else values[positions]
            request = pb.PushRequest(
                table=table,
                keys=pb.Array(dtype="uint64", shape=[len(local)]),
                grads=pb.Array(dtype="float32", shape=list(rows.shape)),
                step=step or 0,
                client_id=self.client_id,
                sequence=sequence,
                return_rows=return_rows,
                sync=sync_to_proto(sync) if sync is not None else None,
                incarnation=layout.incarnation(shard_index),
            )

            def keep(returned: npt.NDArray[np.float32]) -> None:
                if updated is not None:
                    updated[positions] = returned

            return self._transfers[shard_index].push(
                request, local, rows, keep if return_rows else None
            )

        parts = layout.split(flat, every_shard=sync is not None)
        with self._layouts_forgotten_when_gone([table]):
            if len(parts) == 1:
                replies = [send(*parts[0])]
            else:
                futures = [self._fanout.submit(send, s, p) for s, p in parts]
                replies = [f.result() for f in futures]
        return PushResult.of_shards(replies, updated)

    def push_async(
        self,
        table: str,
        keys: Any,
        grads: Any,
        step: int | None = None,
        return_rows: bool = False,
    ) -> Future[PushResult]:
        """`push` on a background thread; the keys and gradients are copied first."""
        keys, grads = np.array(keys, copy=True), np.array(grads, copy=True)
        self._check_open()
        return self._background.submit(self.push, table, keys, grads, step, return_rows)

    def batch(
        self,
        pushes: Sequence[tuple[str, Any, Any]] = (),
        lookups: Sequence[tuple[str, Any]] = (),
        return_rows: bool = False,
        sync: Sequence[SyncStep] | None = None,
        lookup_dtype: str = "float32",
    ) -> BatchResult:
        """Pushes `(table, keys, grads)` in order, then looks up `(table, keys)` (seeing those
        pushes): one call to each daemon involved, where separate calls would take one each.
        Pushes are exactly once, as with `push`; rows are float32. Lookups answered in
        messages must fit in one (shared memory has no such limit). With `sync` (one per push),
        every push is this rank's share of a step of its table (see `push`), and the lookups
        see the whole steps. Lookups return rows as `lookup_dtype` (a float dtype; bfloat16
        as uint16 bits, half float32's bytes on the wire)."""
        checked_bool("return_rows", return_rows)
        if lookup_dtype not in FLOAT_DTYPES:
            raise ValueError(f"lookup_dtype must be one of {FLOAT_DTYPES}, got {lookup_dtype!r}")
        if sync is not None:
            if len(sync) != len(pushes):
                raise ValueError(f"sync has {len(sync)} steps for {len(pushes)} pushes")
            for share in sync:
                _checked_sync_step(share)
            if return_rows:
                raise ValueError("return_rows is not available with sync: read the rows after")
            if len({table for table, _, _ in pushes}) != len(pushes):
                raise ValueError("with sync, a batch holds one push per table (one step each)")
        flat_pushes = []
        for i, (table, keys, grads) in enumerate(pushes):
            flat = _entry_keys(f"pushes[{i}]", table, keys)
            if not len(flat) and sync is None:
                raise ValueError(f"pushes[{i}]: a push to {table!r} has no keys")
            dim = self._layout(table).dim
            flat_pushes.append((table, flat, as_rows(grads, len(flat), dim, f"pushes[{i}] grads")))
        flat_lookups = [
            (table, _entry_keys(f"lookups[{i}]", table, keys), np.shape(keys))
            for i, (table, keys) in enumerate(lookups)
        ]
        with self._sequence_lock:
            sequences = [next(self._sequence) for _ in flat_pushes]
        updated = [np.empty_like(g) if return_rows else None for _, _, g in flat_pushes]
        outs = [
            np.empty((*shape, self._layout(table).dim), numpy_row_type(lookup_dtype))
            for table, _, shape in flat_lookups
        ]
        shares = [sync_to_proto(s) for s in sync] if sync is not None else [None] * len(pushes)
        parts = split_by_shard(
            self.client_id,
            [
                (t, flat, g, s, rows, self._layout(t), share)
                for (t, flat, g), s, rows, share in zip(
                    flat_pushes, sequences, updated, shares, strict=True
                )
            ],
            [
                (t, flat, out, self._layout(t))
                for (t, flat, _), out in zip(flat_lookups, outs, strict=True)
            ],
            lookup_dtype,
        )

        def send(shard_index: int, batch: ShardBatch) -> pb.BatchResponse:
            return self._transfers[shard_index].batch(batch)

        with self._layouts_forgotten_when_gone([t for t, *_ in flat_pushes + flat_lookups]):
            if len(parts) == 1:
                replies = {s: send(s, b) for s, b in parts.items()}
            else:
                futures = {s: self._fanout.submit(send, s, b) for s, b in parts.items()}
                replies = {s: f.result() for s, f in futures.items()}
        answers: dict[int, list[pb.PushResponse]] = {sequence: [] for sequence in sequences}
        for s, reply in replies.items():
            for part, answer in zip(parts[s].pushes, reply.pushes, strict=True):
                answers[part.sequence].append(answer)
        results = [
            PushResult.of_shards(answers[sequence], rows)
            for sequence, rows in zip(sequences, updated, strict=True)
        ]
        return BatchResult(results, outs)

    def checkpoint(self, full: bool = False) -> list[CheckpointInfo]:
        """A checkpoint on every daemon (each consistent on its own), by shard; pass them to
        `restore` to bring every shard back to it together."""

        def checkpoint(i: int, shard: Shard) -> CheckpointInfo:
            request = pb.CheckpointRequest(full=checked_bool("full", full))
            return CheckpointInfo.of(
                shard.call(lambda t: shard.stub.Checkpoint(request, timeout=t))
            )

        return self._each_shard(checkpoint)

    def list_checkpoints(self, shard: int = 0) -> list[CheckpointInfo]:
        """One daemon's checkpoints, oldest first (`shard`: its index in `addresses`)."""
        daemon = self._shard(shard)
        replies = daemon.call(
            lambda t: daemon.stub.ListCheckpoints(pb.ListCheckpointsRequest(), timeout=t)
        )
        return [CheckpointInfo.of(c) for c in replies.checkpoints]

    def list_checkpoints_by_shard(self) -> list[list[CheckpointInfo]]:
        """Every daemon's checkpoints, by shard."""
        return self._each_shard(lambda i, _: self.list_checkpoints(i))

    def restore(
        self, ids: int | Sequence[int | CheckpointInfo] | None = None
    ) -> list[CheckpointInfo]:
        """Restores every daemon: to what `checkpoint()` returned (one per shard), to one id
        on all, or with None to each daemon's latest. Each daemon's restore is atomic; a
        failure on one shard leaves the others restored, so restore again with the same ids.
        """
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"ids must be a checkpoint id, one per shard, or None; got {ids!r}")
        if ids is None or isinstance(ids, (int, np.integer)):
            per_shard = [ids or 0] * len(self.shards)
        else:
            per_shard = [i.id if isinstance(i, CheckpointInfo) else i for i in ids]
            if len(per_shard) != len(self.shards):
                raise ValueError(
                    f"ids has {len(per_shard)} checkpoint ids for {len(self.shards)} shards"
                )
        per_shard = [checked_integer("ids", i, 0, UINT64_MAX) for i in per_shard]

        def restore(i: int, shard: Shard) -> CheckpointInfo:
            request = pb.RestoreRequest(id=per_shard[i])
            reply = shard.call(lambda t: shard.stub.Restore(request, timeout=t))
            return CheckpointInfo.of(reply.checkpoint)

        restored = self._each_shard(restore)
        self._layouts.clear()
        self._import_layouts.clear()  # a restore drops unfinished imports
        self._fingerprints.clear()
        return restored

    def changed_rows(
        self,
        since_checkpoint: int = 0,
        shard: int = 0,
        save_to: str | os.PathLike[str] | None = None,
        store_id: str = "",
    ) -> ChangedRows:
        """What changed on one daemon from its checkpoint `since_checkpoint` (0: everything)
        to its latest, as checkpoint packs; `save_to` keeps them (see client.changes)."""
        checked_integer("since_checkpoint", since_checkpoint, 0, UINT64_MAX)
        daemon = self._shard(shard)
        if not isinstance(store_id, str):
            raise ValueError(f"store_id must be a string, got {store_id!r}")
        request = pb.ChangedRowsRequest(since_checkpoint=since_checkpoint, store_id=store_id)
        return daemon.call(
            lambda t: read_changes(
                since_checkpoint, daemon.stub.ChangedRows(request, timeout=t), save_to
            )
        )

    def stats(self) -> list[DaemonStats]:
        """Each daemon's request counters, by shard."""

        def stats(i: int, shard: Shard) -> DaemonStats:
            reply = shard.call(lambda t: shard.stub.Stats(pb.StatsRequest(), timeout=t))
            return DaemonStats.of(shard.address, reply)

        return self._each_shard(stats)

    def verify(self, table: str = "") -> VerifyReport:
        """Scrubs `table` (default: every table) on every daemon against its row checksums;
        damaged blocks are named by daemon and by row of the whole table."""
        check_table_argument(table)

        def verify(i: int, shard: Shard) -> pb.VerifyResponse:
            reply: pb.VerifyResponse = shard.call(
                lambda t: shard.stub.Verify(pb.VerifyRequest(table=table), timeout=t)
            )
            return reply

        replies: list[pb.VerifyResponse] = self._each_shard(verify)
        damaged = []
        for i, reply in enumerate(replies):
            for block in reply.damaged:
                first_row = int(self._layout(block.table).bounds[i]) + block.first_row
                damaged.append(
                    DamagedBlock(self.shards[i].address, block.table, block.file, first_row)
                )
        return VerifyReport(
            tables=max(r.tables for r in replies),
            written_rows=sum(r.written_rows for r in replies),
            damaged=damaged,
            unchecked=sorted({name for r in replies for name in r.unchecked}),
        )

    def lookup_tokens(
        self,
        table: str,
        token_ids: Any,
        dtype: str = "float32",
        last_position_only: bool = False,
        token_mask: Any = None,
    ) -> npt.NDArray[Any]:
        """Rows for raw token ids `[batch, seq]`, hashed by the daemon with the table's hash
        config (a table created with `hash_config`, on one daemon): shape
        `[batch, seq, heads, dim]`; bfloat16 rows come as their uint16 bits. For a decode
        step, send each sequence's last `max_ngram_size` tokens with `last_position_only`:
        the answer is the new token's rows, `[batch, 1, heads, dim]`. `token_mask`
        (`[batch, seq]` booleans, True where a token takes part) blocks the n-grams that
        reach a masked token, as `NgramHashMapping.hash` does; with a decode step, send the
        mask of those last tokens."""
        check_table_argument(table)
        checked_bool("last_position_only", last_position_only)
        row_type = numpy_row_type(dtype)
        ids = np.asarray(token_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token_ids must be integers of shape [batch, seq], got {ids.shape}")
        mask = None if token_mask is None else as_token_mask(token_mask, ids.shape)
        if len(self.shards) > 1:
            raise InvalidRequestError("lookup_tokens needs a table on one daemon (hash locally)")
        shard = self.shards[0]
        fingerprint = self._fingerprints.get(table)
        if fingerprint is None:
            fingerprint = self._fingerprints[table] = self.describe(table).hash_fingerprint
        if not fingerprint:
            raise InvalidRequestError(
                f"table {table!r} was created without a hash config; use lookup", shard.address
            )
        request = pb.LookupTokensRequest(
            table=table,
            token_ids=pb.Array(
                dtype="int64", shape=list(ids.shape), data=ids.astype("<i8").tobytes()
            ),
            hash_fingerprint=fingerprint,
            dtype=dtype,
            last_position_only=last_position_only,
            token_mask=None
            if mask is None
            else pb.Array(dtype="bool", shape=list(mask.shape), data=mask.tobytes()),
        )
        try:
            chunks = shard.call(lambda t: list(shard.lookup_tokens(request, timeout=t)))
        except (InvalidRequestError, TableNotFoundError):
            # The table may have been created anew with another hash config since it was
            # described: the next call describes it afresh rather than quote a stale one.
            self._fingerprints.pop(table, None)
            raise
        rows = np.concatenate([np.frombuffer(c.rows.data, row_type) for c in chunks])
        return rows.reshape(list(chunks[0].result_shape))

    def _shard(self, index: int) -> Shard:
        if not is_integer(index) or not 0 <= index < len(self.shards):
            raise ValueError(f"shard must be in [0, {len(self.shards)}), got {index!r}")
        return self.shards[index]
