"""An inference engine's read path for one Engram layer, in process: the layer's table file
opened read-only and mapped copy-on-write, so every process on the machine shares one copy
in the page cache, and rows gathered by Rust threads with the GIL released straight into
the engine's buffer.

What engines ask of it, as the issue that asked for it quotes vLLM's and DeepSeek's code
(we could not read those here; each rule is an argument): vLLM computes the ids itself
(`[T, H]` global ids, head offsets included) and splits a layer over tensor-parallel ranks
by whole heads, a rank's lookup filling `out[T, local_heads, D]` for its heads only
(`heads=range(...)`, its file holding those heads' rows); DeepSeek's own code splits by
contiguous row ranges and returns zero rows for ids a rank does not hold (`rows=(start,
stop)`); Mooncake's EngramStore addresses rows by per-head local ids (`local_ids=True`).
Masked positions (image tokens) read as zero rows. An FP8 scale byte of 0 reads as 2^-127,
as torch's float8_e8m0fnu decodes it (`e8m0="torch"`, the default), or as zero, as vLLM
decodes it (`byte << 23` read as float32; `e8m0="zero"`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from store import _native

E8M0_RULES = ("torch", "zero")
_OUT_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.uint16): "bfloat16"}


class EngramLayerReader:
    """Reads one layer's rows (`head_sizes`: its heads' prime sizes, in hash-id column
    order) from the table file at `path`: the whole layer, the heads of `heads` (the file
    holding those heads' rows only), or the global rows `rows = (start, stop)`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        head_sizes: Sequence[int],
        heads: range | None = None,
        rows: tuple[int, int] | None = None,
        local_ids: bool = False,
        e8m0: str = "torch",
    ) -> None:
        if heads is not None and rows is not None:
            raise ValueError("give heads= or rows=, not both")
        if e8m0 not in E8M0_RULES:
            raise ValueError(f"e8m0 must be one of {E8M0_RULES}, got {e8m0!r}")
        sizes = np.array([int(s) for s in head_sizes], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        count = len(sizes)
        self.columns = np.arange(count) if heads is None else np.arange(count)[heads]
        if heads is not None and (len(self.columns) == 0 or heads.step != 1):
            raise ValueError(f"heads must be a non-empty range of step 1 within 0..{count}")
        if rows is not None:
            start, stop = int(rows[0]), int(rows[1])
            if not 0 <= start < stop <= self.offsets[-1]:
                raise ValueError(f"rows must lie within 0..{self.offsets[-1]}, got {rows}")
            self.first, self.stop = start, stop
        else:
            self.first = int(self.offsets[self.columns[0]])
            self.stop = int(self.offsets[self.columns[-1] + 1])
        self.local_ids = local_ids
        self.e8m0 = e8m0
        self.table = _native.Table.open(os.fspath(path), read_only=True)
        if self.table.num_rows != self.stop - self.first:
            raise ValueError(
                f"{os.fspath(path)} holds {self.table.num_rows} rows; these heads or rows "
                f"need {self.stop - self.first}"
            )
        self.dim = self.table.dim
        self._pool: ThreadPoolExecutor | None = None

    def keys(self, ids: npt.NDArray[Any], token_mask: npt.NDArray[Any] | None) -> np.ndarray:
        """The file's row of each selected `(t, head)`, `NO_ROW` where none."""
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[1] != len(self.offsets) - 1 or ids.dtype.kind not in "iu":
            raise ValueError(
                f"ids must be integers of shape [T, {len(self.offsets) - 1}], got "
                f"{ids.dtype} {list(ids.shape)}"
            )
        whole = len(self.columns) == ids.shape[1]
        chosen = (ids if whole else ids[:, self.columns]).astype(np.int64, copy=False)
        if self.local_ids:
            chosen = chosen + self.offsets[self.columns]
        outside = (chosen < self.first) | (chosen >= self.stop)
        if token_mask is not None:
            mask = np.asarray(token_mask)
            if mask.dtype != np.bool_ or mask.shape != ids.shape[:1]:
                raise ValueError(f"token_mask must be booleans of shape [{ids.shape[0]}]")
            outside |= ~mask[:, None]
        keys = (chosen - self.first).astype(np.uint64)
        keys[outside] = _native.Table.NO_ROW
        return keys.reshape(-1)

    def lookup_into(
        self,
        ids: npt.NDArray[Any],
        out: npt.NDArray[Any],
        token_mask: npt.NDArray[Any] | None = None,
    ) -> npt.NDArray[Any]:
        """Fills `out` (`[T, selected heads, D]`: float32, or uint16 holding bfloat16 bits)
        with the rows of `ids` (`[T, H]`), zero rows where the file holds none or the
        position is masked; returns it."""
        dtype = _OUT_DTYPES.get(out.dtype)
        expected = (len(ids), len(self.columns), self.dim)
        if dtype is None or tuple(out.shape) != expected or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous float32 or uint16 (bfloat16) array of shape "
                f"{list(expected)}, got {out.dtype} {list(out.shape)}"
            )
        keys = self.keys(ids, token_mask)
        self.table.gather_engine_rows(keys, out.reshape(-1, self.dim), dtype, self.e8m0 == "zero")
        return out

    def submit(
        self,
        ids: npt.NDArray[Any],
        out: npt.NDArray[Any],
        token_mask: npt.NDArray[Any] | None = None,
    ) -> Future[npt.NDArray[Any]]:
        """`lookup_into` started now: the gather runs on Rust threads with the GIL released
        while the caller computes; the future's `result()` returns `out` once the rows are
        in it. `out` must not be read or written until then."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="engram-reader")
        return self._pool.submit(self.lookup_into, ids, out, token_mask)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
