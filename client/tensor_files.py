"""Reading and writing safetensors files without holding a tensor in memory.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length,
a JSON header naming each tensor's dtype, shape and byte range of the data that follows.
Files are memory-mapped: a tensor's rows are read where they lie, a slice at a time. A
sharded checkpoint is a `*.safetensors.index.json` whose `weight_map` names each tensor's
file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import mmap
import os
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeGuard

import numpy as np
import numpy.typing as npt

# safetensors dtype -> (numpy type holding its bytes, bytes per value).
DTYPES: dict[str, tuple[type[np.generic], int]] = {
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    "BF16": (np.uint16, 2),
    "F8_E4M3": (np.uint8, 1),
    "F8_E8M0": (np.uint8, 1),
    "I8": (np.int8, 1),
    "U8": (np.uint8, 1),
}
# A header is JSON of a few entries per tensor; refuse absurd lengths before reading.
MAX_HEADER_BYTES = 100 << 20


class TensorFileError(ValueError):
    """A file that is not a valid safetensors file (or not one this module reads)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    path: str
    start: int  # byte offset of the data in the file
    nbytes: int

    @property
    def row_bytes(self) -> int:
        per_value = DTYPES[self.dtype][1]
        return per_value * int(np.prod(self.shape[1:], dtype=np.int64))


class SafetensorsFile:
    """One file, mapped; `rows(name, start, stop)` reads a slice of a tensor's rows."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise TensorFileError(f"{self.path}: too short for a safetensors file")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise TensorFileError(f"{self.path}: header length {length} is impossible")
            header = _json_object(f.read(length), f"{self.path}: header")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        data_start = 8 + length
        self.tensors: dict[str, TensorInfo] = {}
        # safetensors' free-form metadata: text keys and values.
        raw = header.get("__metadata__", {})
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise TensorFileError(f"{self.path}: __metadata__ is not an object of strings")
        self.metadata: dict[str, str] = raw
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            self.tensors[name] = self._tensor_info(name, entry, data_start, size)

    def _tensor_info(self, name: str, entry: Any, data_start: int, size: int) -> TensorInfo:
        """A header entry checked: a known dtype, dimensions and offsets that are
        non-negative JSON integers, and a byte range that holds exactly the shape and lies
        inside the file (computed in Python integers: no dimensions can overflow it)."""
        if not isinstance(entry, dict):
            raise TensorFileError(f"{self.path}: header entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise TensorFileError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not _natural_numbers(shape):
            raise TensorFileError(
                f"{self.path}: tensor {name!r} has shape {shape!r}, not a list of sizes"
            )
        if not _natural_numbers(offsets) or len(offsets) != 2:
            raise TensorFileError(
                f"{self.path}: tensor {name!r} has data_offsets {offsets!r}, not [begin, end]"
            )
        begin, end = offsets
        if end - begin != DTYPES[dtype][1] * math.prod(shape) or data_start + end > size:
            raise TensorFileError(f"{self.path}: tensor {name!r} has a bad byte range")
        return TensorInfo(name, dtype, tuple(shape), self.path, data_start + begin, end - begin)

    def rows(self, name: str, start: int, stop: int) -> npt.NDArray[Any]:
        """Rows `[start, stop)` of tensor `name`, read from the mapping (copied: the slice
        outlives the mapping, which closes with the file)."""
        info = self.tensors[name]
        numpy_type = DTYPES[info.dtype][0]
        begin = info.start + start * info.row_bytes
        assert self._map is not None
        view = np.frombuffer(
            self._map,
            numpy_type,
            (stop - start) * info.row_bytes // np.dtype(numpy_type).itemsize,
            begin,
        )
        return view.reshape((stop - start, *info.shape[1:])).copy()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()


class Checkpoint:
    """A safetensors file, or a sharded checkpoint through its `*.index.json`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = os.fspath(path)
        self._files: dict[str, SafetensorsFile] = {}
        if path.endswith(".json"):
            with open(path, "rb") as f:
                weight_map = _json_object(f.read(), f"{path}: index").get("weight_map")
            if not isinstance(weight_map, dict) or not all(
                isinstance(file, str) for file in weight_map.values()
            ):
                raise TensorFileError(f"{path}: weight_map is not an object of file names")
            directory = os.path.dirname(path)
            for file_name in sorted(set(weight_map.values())):
                if os.path.basename(file_name) != file_name:
                    raise TensorFileError(
                        f"{path}: weight_map names {file_name!r} outside its folder"
                    )
                self._files[file_name] = SafetensorsFile(os.path.join(directory, file_name))
            self._where = {name: self._files[file] for name, file in weight_map.items()}
        else:
            self._files[path] = SafetensorsFile(path)
            self._where = dict.fromkeys(self._files[path].tensors, self._files[path])
        for name, holder in self._where.items():
            if name not in holder.tensors:
                raise TensorFileError(f"{holder.path} lacks tensor {name!r} its index names")

    def names(self) -> list[str]:
        return sorted(self._where)

    def metadata(self) -> dict[str, str]:
        """The files' metadata, merged (a sharded checkpoint's files each carry some)."""
        merged: dict[str, str] = {}
        for file in self._files.values():
            merged.update(file.metadata)
        return merged

    def info(self, name: str) -> TensorInfo:
        return self._where[name].tensors[name]

    def rows(self, name: str, start: int, stop: int) -> npt.NDArray[Any]:
        return self._where[name].rows(name, start, stop)

    def close(self) -> None:
        for file in self._files.values():
            file.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to write: its name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return DTYPES[self.dtype][1] * int(np.prod(self.shape, dtype=np.int64))


class SafetensorsWriter:
    """Writes a file whose tensors are declared first and filled row range by row range,
    so no tensor is ever whole in memory. The file appears under its name only when
    `close` succeeds (written to a temporary name, then renamed)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        tensors: list[TensorSpec],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise IsADirectoryError(errno.EISDIR, "a directory, not a file to write", self.path)
        twice = sorted(name for name, n in Counter(t.name for t in tensors).items() if n > 1)
        if twice:
            # The file would be unreadable ("invalid offset for tensor").
            raise ValueError(
                f"{self.path}: two tensors would be named {twice[0]!r} (a table given twice, "
                "or a scale suffix that gives a scale another tensor's name)"
            )
        self._tmp = f"{self.path}.partial"
        header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        self._offsets: dict[str, int] = {}
        for tensor in tensors:
            header[tensor.name] = {
                "dtype": tensor.dtype,
                "shape": list(tensor.shape),
                "data_offsets": [offset, offset + tensor.nbytes],
            }
            self._offsets[tensor.name] = offset
            offset += tensor.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # data 8-byte aligned, as safetensors does
        self._data_start = 8 + len(encoded)
        self._specs = {t.name: t for t in tensors}
        self._file: BinaryIO = open(self._tmp, "wb")  # noqa: SIM115 (closed by close/abort)
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)
        self._file.truncate(self._data_start + offset)

    def write_rows(self, name: str, start: int, rows: npt.NDArray[Any]) -> None:
        """Writes `rows` (C-contiguous) as rows `[start, start + len(rows))` of `name`."""
        spec = self._specs[name]
        row_bytes = spec.nbytes // spec.shape[0] if spec.shape[0] else 0
        self._file.seek(self._data_start + self._offsets[name] + start * row_bytes)
        self._file.write(np.ascontiguousarray(rows).tobytes())

    def close(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def _json_object(text: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
        raise TensorFileError(f"{what} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise TensorFileError(f"{what} is not a JSON object")
    return value


def _natural_numbers(value: Any) -> TypeGuard[list[int]]:
    """Whether `value` is a list of JSON integers >= 0 (not booleans, not floats)."""
    return isinstance(value, list) and all(type(item) is int and item >= 0 for item in value)


def row_ranges(rows: int, step: int) -> Iterator[tuple[int, int]]:
    for start in range(0, rows, step):
        yield start, min(rows, start + step)
