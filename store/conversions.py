"""Every translation between the wire's protobuf messages and the store's typed objects, in
one place: the servicer, the catalog and checkpoints (which keep specs as protobuf bytes)
and the client call these, and nothing else builds or reads those messages' fields."""

from __future__ import annotations

import dataclasses

import numpy as np

from store._proto.engram.store.v1 import store_pb2 as pb
from store.spec import HashSpec, OptimizerSpec, TableSpec
from store.wire import check_array


def optimizer_from_proto(config: pb.OptimizerConfig) -> OptimizerSpec:
    kind = config.WhichOneof("kind") or "sgd"
    if kind == "adagrad":
        return OptimizerSpec(
            "adagrad",
            config.lr,
            eps=config.adagrad.eps,
            initial_accumulator_value=config.adagrad.initial_accumulator_value,
        )
    if kind == "rowwise_adagrad":
        return OptimizerSpec("rowwise_adagrad", config.lr, eps=config.rowwise_adagrad.eps)
    if kind == "adam":
        adam = config.adam
        return OptimizerSpec("adam", config.lr, eps=adam.eps, beta1=adam.beta1, beta2=adam.beta2)
    return OptimizerSpec("sgd", config.lr)


def optimizer_to_proto(spec: OptimizerSpec) -> pb.OptimizerConfig:
    config = pb.OptimizerConfig(lr=spec.lr)
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
    )
    if spec.hash_config is not None:
        message.hash_config.CopyFrom(hash_to_proto(spec.hash_config))
    return message


def table_spec_bytes(spec: TableSpec) -> bytes:
    """The spec as the catalog and checkpoint manifests keep it."""
    return table_spec_to_proto(spec).SerializeToString(deterministic=True)


def table_spec_of_bytes(data: bytes) -> TableSpec:
    return table_spec_from_proto(pb.TableSpec.FromString(data))
