"""Turning user inputs (lists, numpy arrays, CPU tensors) into the arrays the engine takes.

Errors name the argument, so a bad call says which input was wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from store import _native
from store.errors import OutOfRangeError
from store.spec import UINT64_MAX, is_integer

# numpy has no bfloat16: those rows travel as their uint16 bit patterns
# (`torch.from_numpy(rows).view(torch.bfloat16)` reads them).
NUMPY_ROW_TYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,
    # Packed quantized rows: their bytes.
    "fp8_e4m3": np.uint8,
    "int8": np.uint8,
}


def bfloat16_to_float32(bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """bfloat16 values (their uint16 bit patterns) as float32, exactly: the high halves."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def numpy_row_type(dtype: str) -> np.dtype[Any]:
    """The numpy type holding rows of the row dtype `dtype`."""
    if dtype not in NUMPY_ROW_TYPES:
        raise ValueError(f"dtype must be one of {tuple(NUMPY_ROW_TYPES)}, got {dtype!r}")
    return np.dtype(NUMPY_ROW_TYPES[dtype])


def as_int64_array(values: Any, name: str) -> npt.NDArray[np.int64]:
    """Any integer array-like as a C-contiguous int64 array (shape kept)."""
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(array.shape, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds {array.max()}, above the int64 range")
    return np.ascontiguousarray(array, dtype=np.int64)


def as_token_mask(
    mask: Any, shape: tuple[int, ...], name: str = "token_mask"
) -> npt.NDArray[np.bool_]:
    """A token mask (True where a token takes part) as a C-contiguous bool array of `shape`;
    anything but booleans of that shape raises naming `name`."""
    array = np.asarray(mask)
    if array.dtype != np.bool_:
        raise TypeError(
            f"{name} must hold booleans (True: the token takes part), got dtype {array.dtype}"
        )
    if array.shape != shape:
        raise ValueError(
            f"{name} must have the shape of the token ids {list(shape)}, got {list(array.shape)}"
        )
    return np.ascontiguousarray(array)


def as_keys(keys: Any, name: str = "keys") -> npt.NDArray[np.uint64]:
    """Row keys of any shape as a flat uint64 array; negative keys, and keys beyond 2^64 - 1,
    raise OutOfRangeError (an IndexError, and a StoreError like every other refused key)."""
    array = np.asarray(keys)
    if array.size and array.dtype.kind in "fO" and not isinstance(keys, np.ndarray):
        array = _python_integers(keys, array, name)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.dtype == np.uint64:
        return np.ascontiguousarray(array.reshape(-1))
    return _native.keys_from_int64(as_int64_array(array, name).reshape(-1))


def as_rows(values: Any, num_keys: int, dim: int, name: str = "values") -> npt.NDArray[np.float32]:
    """Row values as a C-contiguous float32 `[num_keys, dim]` array."""
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold numbers, got dtype {array.dtype}")
    if array.size != num_keys * dim or (array.ndim and array.shape[-1] != dim):
        raise ValueError(f"{name} has shape {array.shape}, expected {num_keys} rows of dim {dim}")
    return np.ascontiguousarray(array, dtype=np.float32).reshape(num_keys, dim)


def _python_integers(keys: Any, array: np.ndarray, name: str) -> np.ndarray:
    """Python integers that numpy could not give one integer type (a negative key beside one
    above 2^63 makes float64; one beyond 2^64 makes objects), as uint64 when all are keys;
    `array` unchanged when some are not integers at all."""
    values = np.asarray(keys, dtype=object).reshape(-1)
    if not all(is_integer(v) for v in values):
        return array
    for i, value in enumerate(values):
        if value < 0:
            raise OutOfRangeError(f"{name}[{i}] = {value} is negative")
        if value > UINT64_MAX:
            raise OutOfRangeError(f"{name}[{i}] = {value} is beyond the last row key, 2^64 - 1")
    return np.array(values, dtype=np.uint64)
