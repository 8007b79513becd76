"""Step-synchronous pushes: the ranks of a data-parallel job push their gradients for step s
of a table, and the daemon applies the step once, when every rank has pushed, with the
reduction DDP uses (the mean over ranks unless `sum` is asked). Until then nothing of the step
is visible to lookups.

Each rank's gradients are held as the client sends them (summed per key) until the step is
applied, then added in rank order, so the result does not depend on the order in which ranks
arrive. A step whose ranks do not all push within its timeout fails for every rank that
pushed, with an error naming the missing ranks, and nothing of it is applied; a later push for
that step starts it afresh. A rank that retries a push it already made is not counted twice,
and a push for a step already applied is answered as a duplicate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from store.arrays import bfloat16_to_float32
from store.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    OutOfRangeError,
    ResourceExhaustedError,
    StepFailedError,
)
from store.requests import Packed, Push, PushOutcome
from store.served_table import ServedTable
from store.shared_buffers import RequestBuffers
from store.spec import SyncStep


@dataclass(frozen=True)
class StepShare:
    """One rank's share of a step of `table`, checked and copied out of its request."""

    table: ServedTable
    sync: SyncStep
    keys: np.ndarray
    grads: np.ndarray


@dataclass
class PendingStep:
    """The pushes of one step of one table received so far."""

    step: int
    world_size: int
    reduction: str
    deadline: float
    contributions: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    nbytes: int = 0
    applying: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    outcome: PushOutcome | None = None
    error: BaseException | None = None

    def missing(self) -> list[int]:
        return [r for r in range(self.world_size) if r not in self.contributions]

    def reduced(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct keys (ascending) and their gradients, the ranks' added in rank order (then
        divided by the world size for the mean)."""
        parts = [self.contributions[r] for r in range(self.world_size)]
        keys = np.concatenate([k for k, _ in parts])
        grads = np.concatenate([g for _, g in parts])
        if not len(keys):
            return keys, grads
        order = np.argsort(keys, kind="stable")
        distinct, starts = np.unique(keys[order], return_index=True)
        sums = np.add.reduceat(grads[order], starts, axis=0)
        if self.reduction == "mean":
            sums /= np.float32(self.world_size)
        return distinct, sums


class StepBarrier:
    """The pending step of every table (one at a time per table), bounded in memory."""

    def __init__(self, max_pending_bytes: int) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._lock = threading.Lock()
        self._pending: dict[str, PendingStep] = {}

    def push(
        self,
        table: str,
        applied_step: Callable[[], int],
        sync: SyncStep,
        keys: np.ndarray,
        grads: np.ndarray,
        apply: Callable[[np.ndarray, np.ndarray], PushOutcome],
    ) -> PushOutcome:
        """Adds one rank's gradients to `table`'s step `sync.step` and returns once the step is
        applied (by `apply`, on the thread of the rank that completed it) or has failed.
        `applied_step()` is the table's step now; `sync` was checked with the share."""
        timeout = sync.timeout
        with self._lock:
            pending = self._pending.get(table)
            if pending is None or pending.step != sync.step:
                # Read under the lock: a step applied meanwhile has left `_pending` only after
                # the table's step moved, so a late retry is seen as the duplicate it is.
                step_now = applied_step()
                if sync.step <= step_now:
                    return PushOutcome(0, step_now, duplicate=True)
                if sync.step != step_now + 1:
                    raise FailedPreconditionError(
                        f"table {table!r} is at step {step_now}: step {sync.step} cannot be "
                        f"pushed before step {step_now + 1}"
                    )
                if pending is not None:
                    raise FailedPreconditionError(
                        f"table {table!r} has step {pending.step} pending: step {sync.step} "
                        "cannot start before it is applied"
                    )
                pending = PendingStep(
                    sync.step, sync.world_size, sync.reduction, time.monotonic() + timeout
                )
                self._pending[table] = pending
            if (pending.world_size, pending.reduction) != (sync.world_size, sync.reduction):
                raise InvalidArgumentError(
                    f"step {sync.step} of table {table!r} was started with world size "
                    f"{pending.world_size} and reduction {pending.reduction!r}; this push says "
                    f"{sync.world_size} and {sync.reduction!r}"
                )
            if sync.rank not in pending.contributions:
                total = self._pending_bytes() + keys.nbytes + grads.nbytes
                if total > self.max_pending_bytes:
                    raise ResourceExhaustedError(
                        f"steps waiting for ranks would hold {total} bytes of gradients, over "
                        f"the server's limit of {self.max_pending_bytes} (--max-pending-step-bytes)"
                    )
                pending.contributions[sync.rank] = (keys, grads)
                pending.nbytes += keys.nbytes + grads.nbytes
            complete = len(pending.contributions) == pending.world_size and not pending.applying
            if complete:
                pending.applying = True
        if complete:
            try:
                pending.outcome = apply(*pending.reduced())
            except BaseException as error:
                pending.error = error
            finally:
                with self._lock:
                    if self._pending.get(table) is pending:
                        del self._pending[table]
                pending.done.set()
        elif not pending.done.wait(max(pending.deadline - time.monotonic(), 0)):
            with self._lock:
                if not pending.applying and self._pending.get(table) is pending:
                    del self._pending[table]
                    pending.error = StepFailedError(
                        f"step {pending.step} of table {table!r} failed: rank(s) "
                        f"{', '.join(map(str, pending.missing()))} of {pending.world_size} did "
                        f"not push within {timeout:g} s; nothing of the step was applied"
                    )
                    pending.done.set()
            pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.outcome is not None
        return pending.outcome

    def pending_bytes(self) -> int:
        with self._lock:
            return self._pending_bytes()

    def _pending_bytes(self) -> int:
        return sum(p.nbytes for p in self._pending.values())


def gradient_arrays(
    request: Push, buffers: RequestBuffers, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """A push's keys (uint64) and gradients (float32 `[n, dim]`), copied out of its message
    or shared buffers: a rank's share of a step outlives its request. Shapes and dtypes were
    checked with the push."""
    count = math.prod(request.keys.shape)
    keys = np.frombuffer(
        _read(request.keys, buffers, count * 8), "<i8" if request.keys.dtype == "int64" else "<u8"
    )
    if request.keys.dtype == "int64" and len(keys) and int(keys.min()) < 0:
        raise OutOfRangeError(f"key {int(keys.min())} is negative")
    dtype = request.grads.dtype
    raw = _read(request.grads, buffers, count * dim * (4 if dtype == "float32" else 2))
    if dtype == "float32":
        grads = np.frombuffer(raw, "<f4").copy()
    elif dtype == "float16":
        grads = np.frombuffer(raw, "<f2").astype(np.float32)
    else:  # bfloat16: the high half of a float32
        grads = bfloat16_to_float32(np.frombuffer(raw, "<u2"))
    return keys.astype(np.uint64), grads.reshape(count, dim)


def _read(array: Packed, buffers: RequestBuffers, nbytes: int) -> bytes:
    if array.buffer is None:
        if len(array.data) != nbytes:
            raise InvalidArgumentError(f"expected {nbytes} bytes of data, got {len(array.data)}")
        return array.data
    data = buffers.read(array.buffer, nbytes)
    if len(data) != nbytes:
        raise InvalidArgumentError(
            f"shared buffer {array.buffer.path} ends before the {nbytes} bytes the request names"
        )
    return data
