"""A training step's traffic with the store: one object owns it.

`TrainPipeline` numbers every table's pushes (a `PushLog` per table), holds the pushes of a
backward pass until it ends and sends them in one `EngramClient.batch` call, and sends the
lookups of the next batch in that same call, after the pushes (`reads`): with a
`Prefetcher` hashing ahead, a training step costs one round trip and its rows see every
update of the steps before it. Outside a backward pass a push is sent at once.

With `step_sync` (a rank of a data-parallel job, see `data_parallel.py`), each send is this
rank's share of one step of every table it pushes (a table's pushes of one backward pass are
summed into one), and returns once every rank's share is applied.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from client.cache import RowCache
from client.client import EngramClient
from client.results import BatchResult, PushResult
from client.torch.data_parallel import StepSync
from client.torch.push_log import PushLog


@dataclass
class _Push:
    log: PushLog
    number: int
    keys: np.ndarray
    grads: np.ndarray
    done: Future[PushResult]


@dataclass
class QueuedRead:
    """A batch's lookups, `(log of the table, keys)`, waiting for the pipeline's next send."""

    lookups: Sequence[tuple[PushLog, np.ndarray]]
    # The rows' dtype (a float dtype; bfloat16 as uint16 bits).
    dtype: str = "float32"
    # Set by each send that carries the lookups (a later send replaces an earlier one):
    # their rows, and how many pushes of each table were issued before them.
    rows: Future[list[np.ndarray]] | None = None
    pushes_seen: list[int] = field(default_factory=list)


def _in_backward() -> bool:
    """Whether this thread runs a backward pass now (torch has no public way to ask; DDP and
    FSDP rely on the same calls to act when a backward pass ends)."""
    return bool(torch._C._current_graph_task_id() != -1)


class TrainPipeline:
    """The pushes and reads of the tables of one client (see the module's docstring).

    Sends run on one thread, in order: a table's pushes are applied in the order issued, and
    lookups sent with pushes see every push issued before them.
    """

    def __init__(self, client: EngramClient, step_sync: StepSync | None = None) -> None:
        self.client = client
        self.step_sync = step_sync
        # With step_sync: each table's next step (from the daemon, at its first push).
        self._next_step: dict[str, int] = {}
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train-pipeline")
        self._lock = threading.Lock()
        self._waiting: list[_Push] = []
        self._flush_queued = False
        self._reads: deque[QueuedRead] | None = None
        self.calls = 0

    def push_log(self, table: str, max_in_flight: int, cache: RowCache | None) -> PushLog:
        """A new log numbering the pushes of `table` sent through this pipeline."""
        return PushLog(table, max_in_flight, cache)

    # pushes ----------------------------------------------------------------------------

    def push(self, log: PushLog, keys: np.ndarray, grads: np.ndarray) -> None:
        """Numbers the push in its table's `log` (which holds a slot for it) and sends it with
        the others at the end of the current backward pass (now, outside one)."""
        in_backward = _in_backward()
        with self._lock:
            done: Future[PushResult] = Future()
            number = log.issue(keys, done)
            self._waiting.append(_Push(log, number, keys, grads, done))
            queue = in_backward and not self._flush_queued
            self._flush_queued |= queue
        if queue:
            # Runs when the whole backward pass is over, on its thread.
            torch.autograd.Variable._execution_engine.queue_callback(self.flush)
        elif not in_backward:
            self.flush()

    def flush(self) -> None:
        """Sends the pushes waiting, with the oldest queued read after them."""
        with self._lock:
            pushes, self._waiting = self._waiting, []
            self._flush_queued = False
            if not pushes:
                return
            # Under the lock: every push issued so far is in this send or an earlier one.
            read = self._reads[0] if self._reads else None
            if read is not None:
                read.rows = Future()
                read.pushes_seen = [log.issued for log, _ in read.lookups]
                self._sender.submit(self._send, pushes, read, read.rows)
            else:
                self._sender.submit(self._send, pushes, None, None)

    def _send(
        self,
        pushes: list[_Push],
        read: QueuedRead | None,
        rows: Future[list[np.ndarray]] | None,
    ) -> None:
        self.calls += 1
        try:
            send = self._send_asynchronously if self.step_sync is None else self._send_step
            result, pushed_keys = send(pushes, read)
        except BaseException as error:
            for p in pushes:
                p.log.ended(p.number, p.keys, None)
                p.done.set_exception(error)
            if rows is not None:
                rows.set_exception(error)
            return
        for p, (keys, outcome) in zip(pushes, pushed_keys, strict=True):
            p.log.ended(p.number, keys, outcome.updated_rows)
            p.done.set_result(outcome)
        if rows is not None:
            rows.set_result(result.lookups)

    def _send_asynchronously(
        self, pushes: list[_Push], read: QueuedRead | None
    ) -> tuple[BatchResult, list[tuple[np.ndarray, PushResult]]]:
        """Each push applied on its own; (the keys it sent, its result) for each push."""
        sent = [_sum_per_key(p.keys, p.grads) for p in pushes]
        result = self.client.batch(
            [(p.log.table, k, g) for p, (k, g) in zip(pushes, sent, strict=True)],
            _named(read.lookups if read else ()),
            return_rows=any(p.log.keeps_updated_rows for p in pushes),
            lookup_dtype=read.dtype if read else "float32",
        )
        return result, [(k, r) for (k, _), r in zip(sent, result.pushes, strict=True)]

    def _send_step(
        self, pushes: list[_Push], read: QueuedRead | None
    ) -> tuple[BatchResult, list[tuple[np.ndarray, PushResult]]]:
        """This rank's share of the next step of each table pushed (its pushes summed)."""
        assert self.step_sync is not None
        tables = list(dict.fromkeys(p.log.table for p in pushes))
        sent = {
            t: _sum_per_key(
                np.concatenate([p.keys.reshape(-1) for p in pushes if p.log.table == t]),
                np.concatenate([p.grads for p in pushes if p.log.table == t]),
            )
            for t in tables
        }
        result = self.client.batch(
            [(t, *sent[t]) for t in tables],
            _named(read.lookups if read else ()),
            sync=[self.step_sync.share(self._step_of(t)) for t in tables],
            lookup_dtype=read.dtype if read else "float32",
        )
        for t in tables:
            self._next_step[t] += 1
        outcome = dict(zip(tables, result.pushes, strict=True))
        return result, [(sent[p.log.table][0], outcome[p.log.table]) for p in pushes]

    def table_replaced(self, table: str) -> None:
        """`table` was made anew (its step is 0 again): its steps are numbered afresh."""
        self._next_step.pop(table, None)

    def _step_of(self, table: str) -> int:
        """The step of `table` this rank pushes next: the one after the daemon's, at first
        (so a job restarted from a checkpoint goes on from the step it holds)."""
        if table not in self._next_step:
            self._next_step[table] = self.client.describe(table).step + 1
        return self._next_step[table]

    # reads -----------------------------------------------------------------------------

    def start_reads(self) -> None:
        """From now on `queue_read` is open (to one reader at a time, until `stop_reads`)."""
        with self._lock:
            if self._reads is not None:
                raise ValueError("this TrainPipeline already sends another reader's lookups")
            self._reads = deque()

    def stop_reads(self) -> None:
        with self._lock:
            self._reads = None

    def queue_read(
        self, lookups: Iterable[tuple[PushLog, np.ndarray]], dtype: str = "float32"
    ) -> QueuedRead:
        """Queues a batch's lookups, their rows wanted as `dtype`; reads are taken in the
        order queued."""
        read = QueuedRead(list(lookups), dtype)
        with self._lock:
            if self._reads is None:
                raise ValueError("queue_read before start_reads")
            self._reads.append(read)
        return read

    def take_read(self, read: QueuedRead) -> tuple[list[np.ndarray], bool]:
        """The rows of the oldest queued read, `read`, and whether they came with pushes: those
        of the last send that carried them or, when no send did, read now (after every push
        issued so far), in one call. `read.pushes_seen` then says what they include."""
        with self._lock:
            if not self._reads or self._reads[0] is not read:
                raise ValueError("reads are taken in the order they were queued")
            self._reads.popleft()
            rows = read.rows
        if rows is not None:
            return rows.result(), True
        for log, _ in read.lookups:
            log.wait()
        read.pushes_seen = [log.issued for log, _ in read.lookups]
        batch = self.client.batch(lookups=_named(read.lookups), lookup_dtype=read.dtype)
        return batch.lookups, False

    def close(self) -> None:
        self.flush()
        self._sender.shutdown(wait=True)


def _named(lookups: Sequence[tuple[PushLog, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    return [(log.table, keys) for log, keys in lookups]


def _sum_per_key(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys (ascending) and each one's rows summed: fewer bytes to send when keys
    repeat (n-grams do). Summed by torch's own coalesce, so the sums equal bit for bit those
    of a sparse gradient that torch's optimizers apply (the order in which it adds repeated
    keys' rows has changed between torch versions)."""
    if not len(keys):
        return keys.reshape(0).astype(np.int64), rows.reshape(0, rows.shape[1])
    flat = torch.from_numpy(keys.reshape(-1).astype(np.int64, copy=False))
    gradient = torch.sparse_coo_tensor(
        flat[None],
        torch.from_numpy(rows),
        (int(flat.max()) + 1, rows.shape[1]),
        check_invariants=False,
    ).coalesce()
    return gradient.indices()[0].numpy(), gradient.values().numpy()
