"""Every translation between the wire's protobuf messages and the store's typed objects, in
one place: the servicer, the catalog and checkpoints (which keep specs as protobuf bytes)
and the client call these, and nothing else builds or reads those messages' fields."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from store._proto.engram.store.v1 import store_pb2 as pb
from store.errors import InvalidArgumentError
from store.pauses import Pause
from store.requests import (
    BatchOutcome,
    Changes,
    Lookup,
    Packed,
    Push,
    PushOutcome,
    RowChunk,
    RowsWrite,
    SharedRange,
    StatsResult,
    TableStatus,
    TokenLookup,
    VerifyResult,
)
from store.spec import REDUCTIONS, HashSpec, OptimizerSpec, SyncStep, TableSpec
from store.wire import check_array


def optimizer_from_proto(config: pb.OptimizerConfig) -> OptimizerSpec:
    kind = config.WhichOneof("kind") or "sgd"
    decay = config.weight_decay
    if kind == "adagrad":
        return OptimizerSpec(
            "adagrad",
            config.lr,
            eps=config.adagrad.eps,
            initial_accumulator_value=config.adagrad.initial_accumulator_value,
            weight_decay=decay,
        )
    if kind == "rowwise_adagrad":
        return OptimizerSpec(
            "rowwise_adagrad", config.lr, eps=config.rowwise_adagrad.eps, weight_decay=decay
        )
    if kind == "adam":
        adam = config.adam
        return OptimizerSpec(
            "adam", config.lr, eps=adam.eps, beta1=adam.beta1, beta2=adam.beta2, weight_decay=decay
        )
    return OptimizerSpec("sgd", config.lr, weight_decay=decay)


def optimizer_to_proto(spec: OptimizerSpec) -> pb.OptimizerConfig:
    config = pb.OptimizerConfig(lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "adagrad":
        config.adagrad.eps = spec.eps
        config.adagrad.initial_accumulator_value = spec.initial_accumulator_value
    elif spec.name == "rowwise_adagrad":
        config.rowwise_adagrad.eps = spec.eps
    elif spec.name == "adam":
        config.adam.beta1, config.adam.beta2, config.adam.eps = spec.beta1, spec.beta2, spec.eps
    else:
        spec.check()
        config.sgd.SetInParent()
    return config


def hash_from_proto(config: pb.HashConfig) -> HashSpec:
    fields = HashSpec(
        max_ngram_size=config.max_ngram_size,
        n_head_per_ngram=config.n_head_per_ngram,
        pad_id=config.pad_id,
        layer_id=config.layer_id,
        multipliers=tuple(config.multipliers),
        table_sizes=tuple(config.table_sizes),
        lookup_table=np.zeros(0, np.int64),
        tokenizer_sha256=config.tokenizer_sha256,
    ).check()  # the fields first, then the (large) lookup table
    check_array(config.lookup_table, "hash_config.lookup_table", ("int64",), 1)
    lookup = np.frombuffer(config.lookup_table.data, dtype="<i8").astype(np.int64)
    return dataclasses.replace(fields, lookup_table=lookup)


def hash_to_proto(spec: HashSpec) -> pb.HashConfig:
    lookup = np.ascontiguousarray(spec.lookup_table, dtype="<i8")
    return pb.HashConfig(
        max_ngram_size=spec.max_ngram_size,
        n_head_per_ngram=spec.n_head_per_ngram,
        pad_id=spec.pad_id,
        layer_id=spec.layer_id,
        multipliers=list(spec.multipliers),
        table_sizes=list(spec.table_sizes),
        lookup_table=pb.Array(dtype="int64", shape=[len(lookup)], data=lookup.tobytes()),
        tokenizer_sha256=spec.tokenizer_sha256,
    )


def table_spec_from_proto(spec: pb.TableSpec) -> TableSpec:
    """A spec as a request (or a stored catalog entry) carries it; empty fields take their
    defaults."""
    return TableSpec(
        name=spec.name,
        num_rows=spec.num_rows,
        dim=spec.dim,
        dtype=spec.dtype or "float32",
        init=spec.init or "normal",
        init_std=spec.init_std,
        seed=spec.seed,
        optimizer=optimizer_from_proto(spec.optimizer),
        allow_non_finite=spec.allow_non_finite,
        first_row=spec.first_row,
        row_checksums=not spec.skip_row_checksums,
        read_only=spec.read_only,
        hash_config=hash_from_proto(spec.hash_config) if spec.HasField("hash_config") else None,
    )


def table_spec_to_proto(spec: TableSpec) -> pb.TableSpec:
    message = pb.TableSpec(
        name=spec.name,
        num_rows=spec.num_rows,
        dim=spec.dim,
        dtype=spec.dtype,
        init=spec.init,
        init_std=spec.init_std,
        seed=spec.seed,
        optimizer=optimizer_to_proto(spec.optimizer),
        allow_non_finite=spec.allow_non_finite,
        first_row=spec.first_row,
        skip_row_checksums=not spec.row_checksums,
        read_only=spec.read_only,
    )
    if spec.hash_config is not None:
        message.hash_config.CopyFrom(hash_to_proto(spec.hash_config))
    return message


def table_spec_bytes(spec: TableSpec) -> bytes:
    """The spec as the catalog and checkpoint manifests keep it."""
    return table_spec_to_proto(spec).SerializeToString(deterministic=True)


def table_spec_of_bytes(data: bytes) -> TableSpec:
    return table_spec_from_proto(pb.TableSpec.FromString(data))


# requests ------------------------------------------------------------------------------


def _range(buffer: pb.SharedBuffer) -> SharedRange:
    return SharedRange(buffer.path, buffer.offset, buffer.token)


def packed(array: pb.Array, buffer: pb.SharedBuffer | None = None) -> Packed:
    """An array of a request, with its bytes in the message or (when given) in `buffer`."""
    return Packed(
        array.dtype,
        tuple(array.shape),
        array.data,
        _range(buffer) if buffer is not None else None,
    )


def lookup_from_proto(request: pb.LookupRequest) -> Lookup:
    keys_buffer = request.keys_buffer if request.HasField("keys_buffer") else None
    return Lookup(
        request.table,
        packed(request.keys, keys_buffer),
        request.dtype,
        request.rows_per_chunk,
        _range(request.out) if request.HasField("out") else None,
        request.incarnation,
    )


def token_lookup_from_proto(request: pb.LookupTokensRequest) -> TokenLookup:
    return TokenLookup(
        request.table,
        packed(request.token_ids),
        request.hash_fingerprint,
        request.dtype,
        request.rows_per_chunk,
        _range(request.out) if request.HasField("out") else None,
        request.last_position_only,
        packed(request.token_mask) if request.HasField("token_mask") else None,
    )


def push_from_proto(request: pb.PushRequest) -> Push:
    keys_buffer = request.keys_buffer if request.HasField("keys_buffer") else None
    grads_buffer = request.grads_buffer if request.HasField("grads_buffer") else None
    return Push(
        request.table,
        packed(request.keys, keys_buffer),
        packed(request.grads, grads_buffer),
        request.step,
        request.client_id,
        request.sequence,
        request.return_rows,
        sync_from_proto(request.sync) if request.HasField("sync") else None,
        request.incarnation,
    )


def sync_from_proto(sync: pb.SyncStep) -> SyncStep:
    if sync.reduction not in pb.SyncStep.Reduction.values():
        raise InvalidArgumentError(
            f"sync.reduction must be one of {REDUCTIONS}, got the number {sync.reduction}"
        )
    return SyncStep(
        sync.step,
        sync.rank,
        sync.world_size,
        pb.SyncStep.Reduction.Name(sync.reduction).lower(),
        sync.timeout_s,
    )


def sync_to_proto(sync: SyncStep) -> pb.SyncStep:
    return pb.SyncStep(
        step=sync.step,
        rank=sync.rank,
        world_size=sync.world_size,
        reduction=sync.reduction.upper(),
        timeout_s=sync.timeout_s,
    )


def rows_write_from_proto(request: pb.WriteRowsRequest) -> RowsWrite:
    rows_buffer = request.rows_buffer if request.HasField("rows_buffer") else None
    return RowsWrite(request.table, request.first_row, packed(request.rows, rows_buffer))


# answers -------------------------------------------------------------------------------


def _array(array: Packed) -> pb.Array:
    return pb.Array(dtype=array.dtype, shape=list(array.shape), data=array.data)


def chunk_to_proto(chunk: RowChunk) -> pb.LookupResponse:
    return pb.LookupResponse(
        offset=chunk.offset,
        total_rows=chunk.total_rows,
        rows=_array(chunk.rows),
        result_shape=list(chunk.result_shape),
        in_shared_buffer=chunk.in_shared_buffer,
    )


def chunk_bytes(chunk: RowChunk) -> bytes:
    """A chunk as a serialised `LookupResponse`; rows still pending are gathered once,
    straight into those bytes (by the engine's wire encoder)."""
    pending = chunk.pending
    if pending is None:
        return chunk_to_proto(chunk).SerializeToString()
    return pending.table.lookup_chunk(
        pending.keys,
        chunk.rows.dtype,
        pending.start,
        pending.end,
        chunk.offset,
        chunk.total_rows,
        list(chunk.result_shape),
    )


def push_outcome_to_proto(outcome: PushOutcome) -> pb.PushResponse:
    response = pb.PushResponse(rows=outcome.rows, step=outcome.step, duplicate=outcome.duplicate)
    if outcome.updated_rows is not None:
        response.updated_rows.CopyFrom(_array(outcome.updated_rows))
    return response


def batch_to_proto(outcome: BatchOutcome) -> pb.BatchResponse:
    return pb.BatchResponse(
        pushes=[push_outcome_to_proto(p) for p in outcome.pushes],
        lookups=[chunk_to_proto(c) for c in outcome.lookups],
    )


def table_status_to_proto(status: TableStatus) -> pb.TableInfo:
    return pb.TableInfo(
        spec=table_spec_to_proto(status.spec),
        step=status.step,
        written_rows=status.written_rows,
        hash_fingerprint=status.hash_fingerprint,
        state_dim=status.state_dim,
        incarnation=status.incarnation,
    )


def verify_to_proto(result: VerifyResult) -> pb.VerifyResponse:
    return pb.VerifyResponse(
        tables=result.tables,
        written_rows=result.written_rows,
        damaged=[
            pb.DamagedBlock(table=b.table, file=b.file, first_row=b.first_row)
            for b in result.damaged
        ],
        unchecked=result.unchecked,
    )


def _durable_step_stats(pause: Pause | None) -> pb.DurableStepStats:
    pause = pause or Pause()
    return pb.DurableStepStats(
        count=pause.count,
        longest_hold_s=pause.longest_hold_s,
        longest_total_s=pause.longest_total_s,
        last_hold_s=pause.last_hold_s,
        last_total_s=pause.last_total_s,
    )


def stats_to_proto(result: StatsResult) -> pb.StatsResponse:
    return pb.StatsResponse(
        uptime_s=result.uptime_s,
        checkpoints=result.checkpoints,
        store_id=result.store_id,
        follows=result.follow.leader,
        followed_checkpoint=result.follow.checkpoint,
        follow_error=result.follow.error,
        flushes=_durable_step_stats(result.pauses.get("flushes")),
        checkpoints_taken=_durable_step_stats(result.pauses.get("checkpoints")),
        tables=[
            pb.TableStats(
                name=t.name,
                lookups=t.lookups,
                rows_looked_up=t.rows_looked_up,
                pushes=t.pushes,
                rows_pushed=t.rows_pushed,
                duplicate_pushes=t.duplicate_pushes,
            )
            for t in result.tables
        ],
    )


def checkpoint_to_proto(manifest: dict[str, Any]) -> pb.CheckpointInfo:
    """A checkpoint's manifest as the wire describes it."""
    return pb.CheckpointInfo(
        id=manifest["id"],
        parent=manifest["parent"],
        created_unix=manifest["created_unix"],
        tables=[
            pb.CheckpointTable(
                name=t["name"],
                file=t["file"],
                rows=t["rows"],
                step=t["step"],
                bytes=t["bytes"],
                crc32=t["crc32"],
            )
            for t in manifest["tables"]
        ],
    )


def changes_header_to_proto(changes: Changes) -> pb.ChangedRowsResponse:
    """The first message of a ChangedRows answer; the packs' bytes follow."""
    return pb.ChangedRowsResponse(
        header=pb.ChangedRowsHeader(
            store_id=changes.store_id,
            checkpoint=changes.checkpoint,
            manifest_json=json.dumps(changes.manifest) if changes.manifest else "",
            tables=[
                pb.ChangedTable(
                    name=t.name,
                    reset=t.reset,
                    packs=[
                        pb.ChangedPack(
                            checkpoint=p.checkpoint,
                            rows=p.rows,
                            step=p.step,
                            bytes=p.bytes,
                            crc32=p.crc32,
                        )
                        for p in t.packs
                    ],
                )
                for t in changes.tables
            ],
        )
    )


def pack_chunk_to_proto(table: str, checkpoint: int, data: bytes) -> pb.ChangedRowsResponse:
    return pb.ChangedRowsResponse(chunk=pb.PackChunk(table=table, checkpoint=checkpoint, data=data))


def packs_to_files(
    header: pb.ChangedRowsHeader,
    messages: Iterable[pb.ChangedRowsResponse],
    paths: Sequence[str | None],
) -> None:
    """Writes the packs of a ChangedRows answer that follow its `header`, each to its path
    in `paths` (in the header's order; None: read and dropped), refusing packs out of
    order, longer than announced, or an answer that ends before its last pack."""
    expected = [(t.name, p.checkpoint, p.bytes) for t in header.tables for p in t.packs]
    index, written, out = -1, 0, None
    try:
        for message in messages:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgumentError("a second header in a ChangedRows answer")
            chunk = message.chunk
            if index < 0 or written == expected[index][2]:
                if out is not None:
                    out.close()
                    out = None
                index, written = index + 1, 0
                if index >= len(expected):
                    raise InvalidArgumentError("a ChangedRows answer holds more packs than it said")
                path = paths[index]
                if path is not None:
                    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                    out = open(path, "wb")  # noqa: SIM115 (closed here or below)
            if (chunk.table, chunk.checkpoint) != expected[index][:2]:
                raise InvalidArgumentError(
                    f"pack {chunk.table}@{chunk.checkpoint} came out of order"
                )
            written += len(chunk.data)
            if written > expected[index][2]:
                raise InvalidArgumentError(f"pack {chunk.table}@{chunk.checkpoint} overruns")
            if out is not None:
                out.write(chunk.data)
    finally:
        if out is not None:
            out.close()
    if expected and (index != len(expected) - 1 or written != expected[-1][2]):
        raise InvalidArgumentError("a ChangedRows answer ended before its last pack")
