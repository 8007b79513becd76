"""Lookup answers written by the engine's wire encoder decode as the protocol's messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.connection import read_lookup_chunk
from store import _native
from store._proto.engram.store.v1 import store_pb2 as pb
from store.spec import TableSpec


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("offset", "result_shape"), [(0, [3, 2, 5]), (300, []), (2**40, [6, 5])])
def test_an_encoded_chunk_decodes_to_the_same_message(
    tmp_path: Path, dtype: str, offset: int, result_shape: list[int]
) -> None:
    table = _native.TrainableTable.create(str(tmp_path / "t"), TableSpec("t", 1000, 5).resolved())
    values = np.array([3, 999, 0, 3, 17, 500], np.uint64)
    keys = _native.Keys.from_array(values)
    encoded = table.lookup_chunk(keys, dtype, 1, 4, offset, 6, result_shape)
    expected = pb.LookupResponse(
        offset=offset,
        total_rows=6,
        rows=pb.Array(
            dtype=dtype,
            shape=[3, 5],
            data=table.lookup(_native.Keys.from_array(values[1:4]), dtype),
        ),
        result_shape=result_shape,
    )
    assert pb.LookupResponse.FromString(encoded) == expected


def test_an_encoded_chunk_checks_its_keys(tmp_path: Path) -> None:
    table = _native.TrainableTable.create(str(tmp_path / "t"), TableSpec("t", 10, 2).resolved())
    keys = _native.Keys.from_array(np.array([1, 10], np.uint64))
    with pytest.raises(IndexError, match=r"keys\[1\] = 10"):
        table.lookup_chunk(keys, "float32", 0, 2, 0, 2, [2, 2])


@pytest.mark.parametrize(
    "message",
    [
        pb.LookupResponse(
            offset=5,
            total_rows=9,
            rows=pb.Array(dtype="float16", shape=[2, 3], data=bytes(range(12))),
            result_shape=[9, 3],
        ),
        pb.LookupResponse(total_rows=4, in_shared_buffer=True, rows=pb.Array(dtype="float32")),
        pb.LookupResponse(),
    ],
)
def test_the_client_reads_any_lookup_response_with_rows_in_place(
    message: pb.LookupResponse,
) -> None:
    raw = message.SerializeToString()
    chunk = read_lookup_chunk(raw)
    assert (chunk.offset, chunk.total_rows, chunk.in_shared_buffer) == (
        message.offset,
        message.total_rows,
        message.in_shared_buffer,
    )
    assert chunk.result_shape == list(message.result_shape)
    assert (chunk.rows.dtype, chunk.rows.shape) == (message.rows.dtype, list(message.rows.shape))
    assert bytes(chunk.rows.data) == message.rows.data
    if message.rows.data:
        assert chunk.rows.data.obj is raw, "a view of the message, not a copy"


def test_a_truncated_lookup_response_is_refused() -> None:
    raw = pb.LookupResponse(rows=pb.Array(dtype="float32", data=b"x" * 8)).SerializeToString()
    with pytest.raises(ValueError, match="truncated"):
        read_lookup_chunk(raw[:-1])
