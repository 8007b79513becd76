"""One daemon's share of a batch (pushes, then lookups, in one Batch call): the request,
laid out in messages or in a shared buffer, and the answers put back in place."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from client.layout import TableLayout
from client.shared_memory import SharedBuffer, aligned
from store._proto.engram.store.v1 import store_pb2 as pb
from store.spec import step_timeout


@dataclass
class PushPart:
    """The keys of one push that this daemon holds, at `positions` of the push's keys."""

    table: str
    sequence: int
    positions: npt.NDArray[np.intp]
    keys: npt.NDArray[np.uint64]  # local to the shard
    grads: npt.NDArray[np.float32]
    # Where the rows the push left go, at `positions` (with return_rows).
    updated: npt.NDArray[np.float32] | None
    # The rank's share of a data-parallel step this push is, if it is one.
    sync: pb.SyncStep | None = None
    incarnation: str = ""  # of the table on this shard (TableLayout.incarnations)


@dataclass
class LookupPart:
    table: str
    positions: npt.NDArray[np.intp]
    keys: npt.NDArray[np.uint64]  # local to the shard
    out: npt.NDArray[Any]  # the whole lookup's rows; this part fills `positions`
    dtype: str = "float32"  # of the rows asked for (`out` holds them)
    incarnation: str = ""  # of the table on this shard (TableLayout.incarnations)


class ShardBatch:
    """The parts of a batch bound for one daemon (complete before it is laid out)."""

    def __init__(self, client_id: str, pushes: list[PushPart], lookups: list[LookupPart]):
        self.client_id = client_id
        self.pushes = pushes
        self.lookups = lookups

    def _request(self) -> pb.BatchRequest:
        return pb.BatchRequest(
            pushes=[
                pb.PushRequest(
                    table=p.table,
                    keys=pb.Array(dtype="uint64", shape=[len(p.keys)]),
                    grads=pb.Array(dtype="float32", shape=list(p.grads.shape)),
                    client_id=self.client_id,
                    sequence=p.sequence,
                    return_rows=p.updated is not None,
                    sync=p.sync,
                    incarnation=p.incarnation,
                )
                for p in self.pushes
            ],
            lookups=[
                pb.LookupRequest(
                    table=q.table,
                    keys=pb.Array(dtype="uint64", shape=[len(q.keys)]),
                    dtype=q.dtype,
                    incarnation=q.incarnation,
                )
                for q in self.lookups
            ],
        )

    def in_messages(self) -> pb.BatchRequest:
        request = self._request()
        for message, p in zip(request.pushes, self.pushes, strict=True):
            message.keys.data = p.keys.astype("<u8", copy=False).tobytes()
            message.grads.data = p.grads.astype("<f4", copy=False).tobytes()
        for lookup, q in zip(request.lookups, self.lookups, strict=True):
            lookup.keys.data = q.keys.astype("<u8", copy=False).tobytes()
        return request

    def take_from_messages(self, reply: pb.BatchResponse) -> None:
        for answer, p in zip(reply.pushes, self.pushes, strict=True):
            if p.updated is not None:
                rows = np.frombuffer(answer.updated_rows.data, "<f4")
                p.updated[p.positions] = rows.reshape(p.grads.shape)
        for rows_answer, q in zip(reply.lookups, self.lookups, strict=True):
            rows = np.frombuffer(rows_answer.rows.data, q.out.dtype.newbyteorder("<"))
            rows = rows.reshape(len(q.keys), q.out.shape[1])
            _place(q, rows)

    @property
    def waits_s(self) -> float:
        """How long the daemon may hold the call: its steps' timeouts, one after the other."""
        return sum(step_timeout(p.sync.timeout_s) for p in self.pushes if p.sync is not None)

    def buffer_bytes(self) -> int:
        return self._offsets[-1]

    @cached_property
    def _offsets(self) -> list[int]:
        """Offsets in the buffer: each push's keys and gradients, then each lookup's keys and
        rows, each region on its own cache line; the last entry is the total."""
        sizes: list[int] = []
        for p in self.pushes:
            sizes += [p.keys.nbytes, p.grads.nbytes]
        for q in self.lookups:
            sizes += [q.keys.nbytes, len(q.keys) * q.out.shape[1] * q.out.itemsize]
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + aligned(size))
        return offsets

    def in_buffer(self, buffer: SharedBuffer) -> pb.BatchRequest:
        request = self._request()
        at = iter(self._offsets)
        for message, p in zip(request.pushes, self.pushes, strict=True):
            keys_at, grads_at = next(at), next(at)
            buffer.view(np.dtype("<u8"), p.keys.shape, keys_at)[:] = p.keys
            buffer.view(np.dtype("<f4"), p.grads.shape, grads_at)[:] = p.grads
            message.keys_buffer.CopyFrom(buffer.message(keys_at))
            message.grads_buffer.CopyFrom(buffer.message(grads_at))
        for lookup, q in zip(request.lookups, self.lookups, strict=True):
            keys_at, rows_at = next(at), next(at)
            buffer.view(np.dtype("<u8"), q.keys.shape, keys_at)[:] = q.keys
            lookup.keys_buffer.CopyFrom(buffer.message(keys_at))
            lookup.out.CopyFrom(buffer.message(rows_at))
        return request

    def take_from_buffer(self, buffer: SharedBuffer) -> None:
        at = iter(self._offsets)
        for p in self.pushes:
            _, grads_at = next(at), next(at)
            if p.updated is not None:
                # The daemon wrote the rows over the gradients.
                p.updated[p.positions] = buffer.view(np.dtype("<f4"), p.grads.shape, grads_at)
        for q in self.lookups:
            _, rows_at = next(at), next(at)
            row_type = q.out.dtype.newbyteorder("<")
            _place(q, buffer.view(row_type, (len(q.keys), q.out.shape[1]), rows_at))


def split_by_shard(
    client_id: str,
    pushes: list[
        tuple[
            str,
            npt.NDArray[np.uint64],
            npt.NDArray[np.float32],
            int,
            npt.NDArray[np.float32] | None,
            TableLayout,
            pb.SyncStep | None,
        ]
    ],
    lookups: list[tuple[str, npt.NDArray[np.uint64], npt.NDArray[Any], TableLayout]],
    lookup_dtype: str = "float32",
) -> dict[int, ShardBatch]:
    """Each daemon's share of a batch, by shard index. `pushes`: (table, keys, grads,
    sequence, array for the updated rows or None, table layout, share of a data-parallel
    step or None); `lookups`: (table, keys, array for the rows, of any shape ending in dim,
    table layout), their rows as `lookup_dtype`. A step's share goes to every shard of its
    table, if empty: each shard waits for every rank's."""
    parts: dict[int, ShardBatch] = {}

    def of(shard: int) -> ShardBatch:
        return parts.setdefault(shard, ShardBatch(client_id, [], []))

    for table, keys, grads, sequence, updated, layout, sync in pushes:
        for shard, positions in layout.split(keys, every_shard=sync is not None):
            local = keys[positions] - layout.bounds[shard]
            part_grads = grads if len(positions) == len(keys) else grads[positions]
            of(shard).pushes.append(
                PushPart(
                    table,
                    sequence,
                    positions,
                    local,
                    part_grads,
                    updated,
                    sync,
                    layout.incarnation(shard),
                )
            )
    for table, keys, out, layout in lookups:
        rows = out.reshape(len(keys), layout.dim)
        for shard, positions in layout.split(keys):
            local = keys[positions] - layout.bounds[shard]
            of(shard).lookups.append(
                LookupPart(table, positions, local, rows, lookup_dtype, layout.incarnation(shard))
            )
    return parts


def _place(part: LookupPart, rows: npt.NDArray[Any]) -> None:
    if len(part.positions) == len(part.out):
        part.out[:] = rows
    else:
        part.out[part.positions] = rows
