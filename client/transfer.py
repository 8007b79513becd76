"""How keys, rows and gradients travel between the client and one daemon.

With a daemon on this machine they go through a shared buffer (a file both sides map: the
client writes keys and gradients into it and reads rows in place); with others, in the
messages. The choice is made here and nowhere else, and turned off for good for a daemon
that refuses buffers or when no buffer can be made (a full /dev/shm).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from client.batch import ShardBatch
from client.connection import Shard
from client.errors import EngramClientError, PreconditionFailedError
from client.shared_memory import SharedBufferPool, aligned
from store._proto.engram.store.v1 import store_pb2 as pb
from store.arrays import numpy_row_type
from store.spec import step_timeout

log = logging.getLogger(__name__)
T = TypeVar("T")

# Where rows `[offset, offset + len(rows))` of a lookup's answer go.
RowPlacer = Callable[[int, npt.NDArray[Any]], None]


def step_wait(request: pb.PushRequest) -> float:
    """How long the daemon may hold a push that is a rank's share of a step."""
    return step_timeout(request.sync.timeout_s) if request.HasField("sync") else 0.0


class _Attempts:
    """Counts the attempts of one request, over both ways of sending it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, send: Callable[[float], T]) -> Callable[[float], T]:
        def attempt(timeout: float) -> T:
            self.count += 1
            return send(timeout)

        return attempt

    def check_new(self, shard: Shard, client_id: str, answers: list[tuple[int, bool]]) -> None:
        """Refuses answers that call a push a duplicate when it was sent once: no attempt of
        this client's could have applied it, so another client pushes under the same id,
        and each would have the other's pushes dropped as retries. (A rank's share of a
        data-parallel step is a duplicate by its step, not its id: not checked here.)"""
        for sequence, duplicate in answers:
            if duplicate and self.count == 1:
                raise PreconditionFailedError(
                    f"push {sequence} of client id {client_id!r} was applied before this "
                    "client sent it: another client uses the same id (give each EngramClient "
                    "its own id, or none for a random one); this push was not applied",
                    shard.address,
                )


class RowTransfer:
    """The row traffic of one shard: lookups, pushes and batches, each sent once through a
    shared buffer or in messages."""

    def __init__(self, shard: Shard, buffers: SharedBufferPool, shared_memory: bool) -> None:
        self.shard = shard
        self.shared_memory = shared_memory
        self._buffers = buffers

    def lookup(
        self,
        table: str,
        keys: npt.NDArray[np.uint64],
        dtype: str,
        width: int,
        place: RowPlacer,
        incarnation: str = "",
    ) -> None:
        """Gives `place` the rows of `keys` (local to the shard) as `dtype` values, `width`
        of them a row (bytes of a packed quantized row), from the table's `incarnation`
        (when given)."""
        shard = self.shard
        row_type = numpy_row_type(dtype)
        request = pb.LookupRequest(
            table=table,
            keys=pb.Array(dtype="uint64", shape=[len(keys)]),
            dtype=dtype,
            incarnation=incarnation,
        )

        def through_shared_memory() -> None:
            # Keys first, the rows after them. Writing the keys here is their first copy;
            # the daemon's decode out of its mapping (`Keys.from_shared`) is the second
            # and last.
            rows_at = aligned(keys.nbytes)
            with self._buffers.lease(rows_at + len(keys) * width * row_type.itemsize) as buffer:
                buffer.view(np.dtype("<u8"), keys.shape)[:] = keys
                request.keys_buffer.CopyFrom(buffer.message())
                request.out.CopyFrom(buffer.message(rows_at))
                # The answer is one small message: a unary Batch costs less than a stream.
                batch = pb.BatchRequest(lookups=[request])
                reply = shard.call(lambda t: shard.stub.Batch(batch, timeout=t))
                if not reply.lookups[0].in_shared_buffer:
                    raise EngramClientError("the daemon ignored the shared buffer", shard.address)
                place(0, buffer.view(row_type, (len(keys), width), rows_at))

        def through_messages() -> None:
            request.ClearField("keys_buffer")
            request.ClearField("out")
            request.keys.data = keys.astype("<u8", copy=False).tobytes()

            def attempt(timeout: float) -> None:
                for chunk in shard.lookup(request, timeout=timeout):
                    rows = np.frombuffer(chunk.rows.data, row_type)
                    place(chunk.offset, rows.reshape(chunk.rows.shape[0], width))

            shard.call(attempt)

        self._either(through_shared_memory, through_messages)

    def push(
        self,
        request: pb.PushRequest,
        keys: npt.NDArray[np.uint64],
        grads: npt.NDArray[np.float32],
        keep_rows: Callable[[npt.NDArray[np.float32]], None] | None,
    ) -> pb.PushResponse:
        """Sends `request` with `keys` and float32 `grads`; `keep_rows` gets the rows the push
        left when the request asks for them."""
        shard = self.shard
        attempts = _Attempts()
        push = attempts(lambda t: shard.stub.Push(request, timeout=t))

        def through_shared_memory() -> pb.PushResponse:
            # Keys first, the gradients after them (and the rows over the gradients).
            grads_at = aligned(keys.nbytes)
            with self._buffers.lease(grads_at + grads.size * 4) as buffer:
                buffer.view(np.dtype("<u8"), keys.shape)[:] = keys
                in_buffer = buffer.view(np.dtype("<f4"), grads.shape, grads_at)
                in_buffer[:] = grads
                request.keys_buffer.CopyFrom(buffer.message())
                request.grads_buffer.CopyFrom(buffer.message(grads_at))
                reply: pb.PushResponse = shard.call(push, step_wait(request))
                if keep_rows is not None:
                    keep_rows(in_buffer)
                return reply

        def through_messages() -> pb.PushResponse:
            # Same sequence: a push the daemon refused was not applied.
            request.ClearField("keys_buffer")
            request.ClearField("grads_buffer")
            request.keys.data = keys.astype("<u8", copy=False).tobytes()
            request.grads.data = grads.astype("<f4", copy=False).tobytes()
            reply: pb.PushResponse = shard.call(push, step_wait(request))
            if keep_rows is not None:
                keep_rows(np.frombuffer(reply.updated_rows.data, "<f4").reshape(grads.shape))
            return reply

        reply = self._either(through_shared_memory, through_messages)
        if not request.HasField("sync"):
            attempts.check_new(shard, request.client_id, [(request.sequence, reply.duplicate)])
        return reply

    def write_rows(self, request: pb.WriteRowsRequest, rows: npt.NDArray[Any]) -> None:
        """Sends `request` with `rows` (C-contiguous, packed as the table stores them)."""
        shard = self.shard

        def through_shared_memory() -> None:
            with self._buffers.lease(rows.nbytes) as buffer:
                buffer.view(rows.dtype, rows.shape)[:] = rows
                request.rows_buffer.CopyFrom(buffer.message())
                shard.call(lambda t: shard.stub.WriteRows(request, timeout=t))

        def through_messages() -> None:
            request.ClearField("rows_buffer")
            request.rows.data = rows.tobytes()
            shard.call(lambda t: shard.stub.WriteRows(request, timeout=t))

        self._either(through_shared_memory, through_messages)

    def batch(self, batch: ShardBatch) -> pb.BatchResponse:
        """Sends the shard's part of a batch and places its answers."""
        shard = self.shard
        attempts = _Attempts()

        def through_shared_memory() -> pb.BatchResponse:
            with self._buffers.lease(batch.buffer_bytes()) as buffer:
                request = batch.in_buffer(buffer)
                reply: pb.BatchResponse = shard.call(
                    attempts(lambda t: shard.stub.Batch(request, timeout=t)), batch.waits_s
                )
                batch.take_from_buffer(buffer)
                return reply

        def through_messages() -> pb.BatchResponse:
            # Same sequences: pushes the daemon refused were not applied.
            request = batch.in_messages()
            reply: pb.BatchResponse = shard.call(
                attempts(lambda t: shard.stub.Batch(request, timeout=t)), batch.waits_s
            )
            batch.take_from_messages(reply)
            return reply

        reply = self._either(through_shared_memory, through_messages)
        answers = [
            (p.sequence, a.duplicate)
            for p, a in zip(batch.pushes, reply.pushes, strict=True)
            if p.sync is None
        ]
        attempts.check_new(shard, batch.client_id, answers)
        return reply

    def _either(
        self, through_shared_memory: Callable[[], T], through_messages: Callable[[], T]
    ) -> T:
        if not self.shared_memory:
            return through_messages()
        try:
            return through_shared_memory()
        except EngramClientError as error:
            if error.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            reason = str(error)
        except OSError as error:
            reason = f"cannot make a shared buffer: {error}"
        # The same call in messages; if the daemon refuses that too, the refusal was the
        # call's own (a read-only daemon), not the buffer's, and buffers stay in use.
        result = through_messages()
        self.shared_memory = False
        log.info("%s; sending rows in messages from now on", reason)
        return result
