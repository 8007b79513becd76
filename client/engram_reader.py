"""An inference engine's read path for one Engram layer, in process: the layer's table file
opened read-only and mapped copy-on-write, so every process on the machine shares one copy
in the page cache, and rows gathered by Rust threads with the GIL released straight into
the engine's buffer. (`client/daemon_layer_reader.py` reads the same rows through a daemon.)

What engines ask of it, as the issue that asked for it quotes vLLM's and DeepSeek's code
(we could not read those here; each rule is an argument): vLLM computes the ids itself
(`[T, H]` global ids, head offsets included) and splits a layer over tensor-parallel ranks
by whole heads, a rank's lookup filling `out[T, local_heads, D]` for its heads only
(`heads=range(...)`); DeepSeek's own code splits by contiguous row ranges and returns zero
rows for ids a rank does not hold (`rows=(start, stop)`); Mooncake's EngramStore addresses
rows by per-head local ids (`local_ids=True`). Masked positions (image tokens) read as zero
rows. An FP8 scale byte of 0 reads as 2^-127, as torch's float8_e8m0fnu decodes it
(`e8m0="torch"`, the default), or as zero, as vLLM decodes it (`byte << 23` read as
float32; `e8m0="zero"`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from store import _native

E8M0_RULES = ("torch", "zero")
_OUT_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.uint16): "bfloat16"}


class LayerReads(ABC):
    """What both readers share: a reader's share of a layer (`head_sizes`: its heads' prime
    sizes, in hash-id column order): the whole layer, the heads of `heads`, or the global
    rows `rows = (start, stop)`; the checks of a read's arguments; reads submitted ahead."""

    def __init__(
        self,
        head_sizes: Sequence[int],
        heads: range | None,
        rows: tuple[int, int] | None,
        local_ids: bool,
        e8m0: str,
    ) -> None:
        if e8m0 not in E8M0_RULES:
            raise ValueError(f"e8m0 must be one of {E8M0_RULES}, got {e8m0!r}")
        if heads is not None and (not isinstance(heads, range) or heads.step != 1):
            raise ValueError(f"heads must be a range of step 1, got {heads!r}")
        self.share = _native.EngineRows(
            [int(s) for s in head_sizes],
            heads=None if heads is None else (heads.start, heads.stop),
            rows=None if rows is None else (int(rows[0]), int(rows[1])),
            local_ids=local_ids,
        )
        self.e8m0 = e8m0
        self.dim = 0
        self._pool: ThreadPoolExecutor | None = None

    @property
    def heads_read(self) -> int:
        """How many heads a position reads: the `H_local` of `out[T, H_local, D]`."""
        return int(self.share.columns_read)

    def _arguments(
        self, ids: Any, out: npt.NDArray[Any], token_mask: Any
    ) -> tuple[np.ndarray, np.ndarray | None, str]:
        """`ids` as C-contiguous int64, the mask as booleans, `out`'s dtype name."""
        ids = np.asarray(ids)
        heads = self.share.heads
        if ids.ndim != 2 or ids.shape[1] != heads or ids.dtype.kind not in "iu":
            raise ValueError(
                f"ids must be integers of shape [T, {heads}], got {ids.dtype} {list(ids.shape)}"
            )
        if ids.dtype == np.uint64 and len(ids) and int(ids.max()) > np.iinfo(np.int64).max:
            raise ValueError("ids must be below 2^63")
        dtype = _OUT_DTYPES.get(out.dtype)
        expected = (len(ids), self.heads_read, self.dim)
        if dtype is None or tuple(out.shape) != expected or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous float32 or uint16 (bfloat16) array of shape "
                f"{list(expected)}, got {out.dtype} {list(out.shape)}"
            )
        mask = None
        if token_mask is not None:
            mask = np.ascontiguousarray(token_mask)
            if mask.dtype != np.bool_ or mask.shape != ids.shape[:1]:
                raise ValueError(f"token_mask must be booleans of shape [{ids.shape[0]}]")
        return np.ascontiguousarray(ids, dtype=np.int64), mask, dtype

    def lookup_into(
        self,
        ids: npt.NDArray[Any],
        out: npt.NDArray[Any],
        token_mask: npt.NDArray[Any] | None = None,
    ) -> npt.NDArray[Any]:
        """Fills `out` (`[T, heads read, D]`: float32, or uint16 holding bfloat16 bits)
        with the rows of `ids` (`[T, H]`), zero rows where the reader's share holds none or
        the position is masked; returns it."""
        ids, mask, dtype = self._arguments(ids, out, token_mask)
        self._fill(ids, mask, out.reshape(-1, self.dim), dtype)
        return out

    @abstractmethod
    def _fill(self, ids: np.ndarray, mask: np.ndarray | None, out: np.ndarray, dtype: str) -> None:
        """Writes the rows of `ids` (int64 `[T, H]`, checked) into `out` (`[T * heads read,
        D]` of `dtype`): from a table file, or through daemons."""

    def submit(
        self,
        ids: npt.NDArray[Any],
        out: npt.NDArray[Any],
        token_mask: npt.NDArray[Any] | None = None,
    ) -> Future[npt.NDArray[Any]]:
        """`lookup_into` started now: the gather runs with the GIL released while the
        caller computes; the future's `result()` returns `out` once the rows are in it.
        `out` must not be read or written until then."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="engram-reader")
        return self._pool.submit(self.lookup_into, ids, out, token_mask)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


class EngramLayerReader(LayerReads):
    """Reads a layer's share from the table file at `path`, which holds exactly that share:
    the whole layer, the rows of the heads of `heads`, or the global rows `rows`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        head_sizes: Sequence[int],
        heads: range | None = None,
        rows: tuple[int, int] | None = None,
        local_ids: bool = False,
        e8m0: str = "torch",
    ) -> None:
        super().__init__(head_sizes, heads, rows, local_ids, e8m0)
        self.table = _native.Table.open(os.fspath(path), read_only=True)
        if self.table.num_rows != self.share.file_rows:
            raise ValueError(
                f"{os.fspath(path)} holds {self.table.num_rows} rows; these heads or rows "
                f"need {self.share.file_rows}"
            )
        self.dim = self.table.dim

    def _fill(self, ids: np.ndarray, mask: np.ndarray | None, out: np.ndarray, dtype: str) -> None:
        self.table.gather_engine_ids(self.share, ids, mask, out, dtype, self.e8m0 == "zero")
