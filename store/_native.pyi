# Type stubs of the Rust extension (rust/src/py/); kept honest by mypy.stubtest.
import os
from typing import Any, final

import numpy as np
import numpy.typing as npt

from store.spec import TableSpec

__all__ = [
    "BUFFER_HEADER_BYTES",
    "BUFFER_MAGIC",
    "BUFFER_TOKEN_BYTES",
    "PUSH_CRASH_POINTS",
    "TABLE_FORMAT_VERSION",
    "Journal",
    "Keys",
    "NgramHasher",
    "StoreError",
    "Table",
    "TableFormatError",
    "TrainableTable",
    "compress_ids",
    "keys_from_int64",
    "parse_lookup_chunk",
    "set_thread_count",
    "table_sizes",
    "verify_pack",
]

TABLE_FORMAT_VERSION: int
PUSH_CRASH_POINTS: list[str]
BUFFER_MAGIC: bytes
BUFFER_TOKEN_BYTES: int
BUFFER_HEADER_BYTES: int

class StoreError(Exception): ...
class TableFormatError(StoreError): ...

@final
class NgramHasher:
    def __new__(
        cls,
        max_ngram_size: int,
        n_head_per_ngram: int,
        pad_id: int,
        multipliers: list[list[int]],
        primes: list[list[int]],
        lookup: npt.NDArray[np.int64] | None = None,
    ) -> NgramHasher: ...
    @property
    def heads_per_layer(self) -> int: ...
    @property
    def fingerprint(self) -> int: ...
    def hash_into(self, input_ids: npt.NDArray[np.int64], out: npt.NDArray[np.int64]) -> None: ...

@final
class Table:
    @staticmethod
    def create(
        path: str | os.PathLike[str],
        num_rows: int,
        dim: int,
        dtype: str = "float32",
        init: str = "normal",
        std: float = 0.02,
        seed: int = 0,
        first_row: int = 0,
    ) -> Table: ...
    @staticmethod
    def open(path: str | os.PathLike[str]) -> Table: ...
    @property
    def path(self) -> str: ...
    @property
    def num_rows(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def init(self) -> str: ...
    @property
    def std(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def file_len(self) -> int: ...
    @property
    def first_row(self) -> int: ...
    def gather_into(
        self, keys: npt.NDArray[np.uint64], out: npt.NDArray[Any], dtype: str
    ) -> None: ...
    def scatter_add(
        self, keys: npt.NDArray[np.uint64], values: npt.NDArray[np.float32]
    ) -> None: ...
    def write_rows(self, keys: npt.NDArray[np.uint64], values: npt.NDArray[np.float32]) -> None: ...
    def written(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]: ...
    def written_count(self) -> int: ...
    def flush(self) -> None: ...

@final
class Keys:
    @staticmethod
    def from_bytes(data: bytes, dtype: str) -> Keys: ...
    @staticmethod
    def from_shared(
        fd: int, path: str | os.PathLike[str], offset: int, count: int, dtype: str
    ) -> Keys: ...
    @staticmethod
    def from_array(keys: npt.NDArray[np.uint64]) -> Keys: ...
    def __len__(self) -> int: ...

@final
class TrainableTable:
    @staticmethod
    def create(dir: str | os.PathLike[str], spec: TableSpec) -> TrainableTable: ...
    @staticmethod
    def open(dir: str | os.PathLike[str], spec: TableSpec, step: int) -> TrainableTable: ...
    @property
    def num_rows(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def state_dim(self) -> int: ...
    def written_count(self) -> int: ...
    def lookup_bytes(self, keys: Keys, dtype: str) -> bytes: ...
    def lookup_message(
        self,
        keys: Keys,
        dtype: str,
        start: int,
        end: int,
        offset: int,
        total_rows: int,
        result_shape: list[int],
    ) -> bytes: ...
    def check_keys(self, keys: Keys) -> None: ...
    def lookup_into_fd(
        self, keys: Keys, fd: int, path: str | os.PathLike[str], offset: int, dtype: str
    ) -> None: ...
    def push_from_fd(
        self,
        keys: Keys,
        fd: int,
        path: str | os.PathLike[str],
        offset: int,
        grads_dtype: str,
        step: int | None = None,
        return_rows: bool = False,
        client_id: str = "",
        sequence: int = 0,
    ) -> tuple[int, int]: ...
    def gather_into(self, keys: npt.NDArray[np.uint64], out: npt.NDArray[np.float32]) -> None: ...
    def push_bytes(
        self,
        keys: Keys,
        grads: bytes,
        grads_dtype: str,
        step: int | None = None,
        client_id: str = "",
        sequence: int = 0,
    ) -> tuple[int, int]: ...
    def push_bytes_returning_rows(
        self,
        keys: Keys,
        grads: bytes,
        grads_dtype: str,
        step: int | None = None,
        client_id: str = "",
        sequence: int = 0,
    ) -> tuple[int, int, bytes]: ...
    def push(
        self,
        keys: npt.NDArray[np.uint64],
        grads: npt.NDArray[np.float32],
        step: int | None = None,
    ) -> tuple[int, int]: ...
    def write_pack(
        self, path: str | os.PathLike[str], incremental: bool
    ) -> tuple[int, int, int, int]: ...
    def apply_pack(self, path: str | os.PathLike[str]) -> tuple[int, int, int, int]: ...
    def attach_journal(self, journal: Journal) -> None: ...
    def last_push_token(self) -> int: ...
    def recover(self, committed: set[int], committed_through: int) -> tuple[int, int] | None: ...
    @property
    def row_checksums(self) -> bool: ...
    def verify(self) -> list[tuple[str, int]]: ...
    def clear_dirty(self) -> None: ...
    def flush(self) -> None: ...

@final
class Journal:
    @staticmethod
    def open(
        path: str | os.PathLike[str],
    ) -> tuple[Journal, list[tuple[int, str, str, int, int]]]: ...
    def tokens_after(self, token: int) -> None: ...
    def fence_token(self) -> int: ...
    def reset(self) -> None: ...

def set_thread_count(threads: int) -> None: ...
def parse_lookup_chunk(
    data: bytes,
) -> tuple[int, int, str, list[int], list[int], bool, int, int]: ...
def verify_pack(path: str | os.PathLike[str]) -> tuple[int, int, int, int]: ...
def table_sizes(
    vocab_sizes: list[int], n_head_per_ngram: int, n_layers: int
) -> list[list[list[int]]]: ...
def compress_ids(
    ids: npt.NDArray[np.int64], lookup: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]: ...
def keys_from_int64(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]: ...
