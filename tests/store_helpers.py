"""Building requests and reading responses of the store protocol in tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from store._proto.engram.store.v1 import store_pb2 as pb
from store.conversions import push_from_proto, table_spec_from_proto
from store.requests import Push
from store.spec import TableSpec
from store.wire import numpy_array


def table_spec(name: str = "t", **fields: Any) -> TableSpec:
    """`spec(...)` as the engine takes it."""
    return table_spec_from_proto(spec(name, **fields))


def push_command(table: str, keys_: Iterable[int], grads: Any, **fields: Any) -> Push:
    """`push(...)` as the engine takes it."""
    return push_from_proto(push(table, keys_, grads, **fields))


def spec(
    name: str = "t",
    num_rows: int = 1000,
    dim: int = 8,
    optimizer: str = "sgd",
    lr: float = 0.1,
    **fields: Any,
) -> pb.TableSpec:
    config = pb.OptimizerConfig(lr=lr)
    getattr(config, optimizer).SetInParent()
    return pb.TableSpec(name=name, num_rows=num_rows, dim=dim, optimizer=config, **fields)


def keys(values: Iterable[int] | npt.NDArray[Any]) -> pb.Array:
    return numpy_array(np.asarray(values, dtype=np.uint64))


def rows_of(responses: Iterable[pb.LookupResponse]) -> npt.NDArray[np.float32]:
    """Reassembles a streamed float32 lookup into `result_shape`."""
    chunks = list(responses)
    shape = list(chunks[0].result_shape)
    out = np.empty((chunks[0].total_rows, shape[-1]), np.float32)
    for chunk in chunks:
        assert chunk.rows.dtype == "float32"
        n = chunk.rows.shape[0]
        out[chunk.offset : chunk.offset + n] = np.frombuffer(chunk.rows.data, "<f4").reshape(n, -1)
    return out.reshape(shape)


def raw_rows(responses: Iterable[pb.LookupResponse]) -> bytes:
    return b"".join(chunk.rows.data for chunk in responses)


def push(
    table: str, key_values: Any, grads: npt.NDArray[np.float32], **fields: Any
) -> pb.PushRequest:
    return pb.PushRequest(table=table, keys=keys(key_values), grads=numpy_array(grads), **fields)
