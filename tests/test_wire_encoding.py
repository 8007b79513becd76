"""Lookup answers written by the engine's wire encoder decode as the protocol's messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from store import _native
from store._proto.engram.store.v1 import store_pb2 as pb
from store.spec import TableSpec


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("offset", "result_shape"), [(0, [3, 2, 5]), (300, []), (2**40, [6, 5])])
def test_an_encoded_chunk_decodes_to_the_same_message(
    tmp_path: Path, dtype: str, offset: int, result_shape: list[int]
) -> None:
    table = _native.EmbeddingTable.create(str(tmp_path / "t"), TableSpec("t", 1000, 5).resolved())
    keys = _native.Keys.from_array(np.array([3, 999, 0, 3, 17, 500], np.uint64))
    encoded = table.lookup_message(keys, dtype, 1, 4, offset, 6, result_shape)
    expected = pb.LookupResponse(
        offset=offset,
        total_rows=6,
        rows=pb.Array(dtype=dtype, shape=[3, 5], data=table.lookup_bytes(keys, dtype, 1, 4)),
        result_shape=result_shape,
    )
    assert pb.LookupResponse.FromString(encoded) == expected


def test_an_encoded_chunk_checks_its_keys(tmp_path: Path) -> None:
    table = _native.EmbeddingTable.create(str(tmp_path / "t"), TableSpec("t", 10, 2).resolved())
    keys = _native.Keys.from_array(np.array([1, 10], np.uint64))
    with pytest.raises(IndexError, match=r"keys\[1\] = 10"):
        table.lookup_message(keys, "float32", 0, 2, 0, 2, [2, 2])
