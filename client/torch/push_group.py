"""Pushes of several `StoreTable`s sent together: one call per backward pass.

Every Engram layer's backward pushes its gradient; sent one by one, a model with k layers
pays k round trips per step. Tables sharing a `PushGroup` hold their pushes until the
backward pass ends and send them in one `EngramClient.batch` call, which can also carry the
next batch's lookups (a `Prefetcher` asks for that), so a training step costs one round trip.
Outside a backward pass a push is sent at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from client.client import EngramClient
from client.results import PushResult
from client.torch.push_log import PushLog


@dataclass
class RowsRequest:
    """Lookups to send with the next pushes: `(table, keys)`; `rows` gets their rows (float32,
    `keys.shape + (dim,)`) once every push before them is applied."""

    lookups: Sequence[tuple[str, np.ndarray]]
    rows: Future[list[np.ndarray]] = field(default_factory=Future)


@dataclass
class _Push:
    log: PushLog
    number: int
    keys: np.ndarray
    grads: np.ndarray
    done: Future[PushResult]


def _in_backward() -> bool:
    """Whether this thread runs a backward pass now (torch has no public way to ask; DDP and
    FSDP rely on the same calls to act when a backward pass ends)."""
    return bool(torch._C._current_graph_task_id() != -1)


class PushGroup:
    """Tables of one client whose pushes travel together (see the module's docstring).

    Sends run on one thread, in order: a table's pushes are applied in the order issued, and
    lookups sent with pushes see every push issued before them.
    """

    def __init__(self, client: EngramClient) -> None:
        self.client = client
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="push-group")
        self._lock = threading.Lock()
        self._waiting: list[_Push] = []
        self._flush_queued = False
        self._reader: Callable[[], RowsRequest | None] | None = None
        self.calls = 0

    def set_reader(self, reader: Callable[[], RowsRequest | None] | None) -> None:
        """`reader()` is asked, at each send, for lookups to send with it (None: none); one
        reader at a time."""
        with self._lock:
            if reader is not None and self._reader is not None:
                raise ValueError("this PushGroup already sends another reader's lookups")
            self._reader = reader

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
        """Sends the pushes waiting (with the reader's lookups, if it has any)."""
        with self._lock:
            pushes, self._waiting = self._waiting, []
            self._flush_queued = False
            if not pushes:
                return
            # Under the lock: every push issued so far is in this send or an earlier one.
            rows = self._reader() if self._reader is not None else None
            self._sender.submit(self._send, pushes, rows)

    def _send(self, pushes: list[_Push], rows: RowsRequest | None) -> None:
        keep = any(p.log.keeps_updated_rows for p in pushes)
        self.calls += 1
        try:
            sent = [_sum_per_key(p.keys, p.grads) for p in pushes]
            result = self.client.batch(
                [(p.log.table, k, g) for p, (k, g) in zip(pushes, sent, strict=True)],
                rows.lookups if rows is not None else (),
                return_rows=keep,
            )
        except BaseException as error:
            for p in pushes:
                p.log.ended(p.number, p.keys, None)
                p.done.set_exception(error)
            if rows is not None:
                rows.rows.set_exception(error)
            return
        for p, (keys, _), outcome in zip(pushes, sent, result.pushes, strict=True):
            p.log.ended(p.number, keys, outcome.updated_rows)
            p.done.set_result(outcome)
        if rows is not None:
            rows.rows.set_result(result.lookups)

    def close(self) -> None:
        self.flush()
        self._sender.shutdown(wait=True)


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
