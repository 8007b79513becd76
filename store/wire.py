"""Validation and conversion of the protocol's packed arrays and configs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from store._proto.engram.store.v1 import store_pb2 as pb
from store.errors import InvalidArgumentError

__all__ = [
    "ITEM_SIZES",
    "PackedArray",
    "check_array",
    "check_client_id",
    "numpy_array",
]

# Packed quantized rows travel as their bytes: `[rows, row bytes]` of one-byte items.
ITEM_SIZES = {
    "uint64": 8,
    "int64": 8,
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "fp8_e4m3": 1,
    "int8": 1,
    "bool": 1,
}
# A client id is a key of the catalog (LMDB keys hold at most 511 bytes) and of every
# checkpoint's manifest: bounded here, at the door, so that no push can make a later
# checkpoint or flush fail.
MAX_CLIENT_ID_BYTES = 128


def check_client_id(client_id: str) -> str:
    encoded = client_id.encode()
    if len(encoded) > MAX_CLIENT_ID_BYTES or not client_id.isprintable():
        raise InvalidArgumentError(
            f"client_id must be at most {MAX_CLIENT_ID_BYTES} bytes of printable characters, "
            f"got {len(encoded)} bytes starting {client_id[:32]!r}"
        )
    return client_id


class PackedArray(Protocol):
    """An array's wire form: a protocol `Array` or a `store.requests.Packed`."""

    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> Sequence[int]: ...
    @property
    def data(self) -> bytes: ...


def check_array(
    array: PackedArray,
    name: str,
    dtypes: tuple[str, ...],
    ndim: int | None,
    data_elsewhere: bool = False,
) -> None:
    """Fails unless `array` has one of `dtypes`, `ndim` dimensions (when given), and exactly
    the bytes its shape needs (unless its data travels in a shared buffer)."""
    if array.dtype not in dtypes:
        raise InvalidArgumentError(
            f"{name} must have dtype {' or '.join(dtypes)}, got {array.dtype!r}"
        )
    if ndim is not None and len(array.shape) != ndim:
        raise InvalidArgumentError(
            f"{name} must have {ndim} dimensions, got shape {list(array.shape)}"
        )
    if any(d < 0 for d in array.shape):
        raise InvalidArgumentError(f"{name} has a negative dimension: {list(array.shape)}")
    expected = math.prod(array.shape) * ITEM_SIZES[array.dtype]
    if not data_elsewhere and len(array.data) != expected:
        raise InvalidArgumentError(
            f"{name} of shape {list(array.shape)} and dtype {array.dtype} needs {expected} "
            f"bytes, got {len(array.data)}"
        )


def numpy_array(values: npt.NDArray[np.generic]) -> pb.Array:
    """A numpy array as a packed LE protocol array."""
    dtype = {
        np.dtype(np.uint64): "uint64",
        np.dtype(np.int64): "int64",
        np.dtype(np.float32): "float32",
        np.dtype(np.float16): "float16",
    }.get(values.dtype)
    if dtype is None:
        raise InvalidArgumentError(f"cannot send dtype {values.dtype}")
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return pb.Array(
        dtype=dtype, shape=list(values.shape), data=np.ascontiguousarray(little).tobytes()
    )
