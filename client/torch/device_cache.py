"""The hot-row cache with its slab in a torch device's memory (a GPU when training on one):
hits are gathered on the device and never cross the host bus."""

from __future__ import annotations

import numpy as np
import torch

from client.cache import RowCache


def device_row_cache(
    capacity_bytes: int,
    device: torch.device | str,
    admit_after: int = 2,
    max_staleness: int | None = None,
) -> RowCache:
    device = torch.device(device)

    def slab(rows: int, width: int, dtype: np.dtype) -> torch.Tensor:
        # numpy's dtype of the fetched rows (uint16 holds bfloat16/float16 bits).
        like = torch.from_numpy(np.empty(0, dtype))
        return torch.empty((rows, width), dtype=like.dtype, device=device)

    def convert(rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(rows)).to(device)

    return RowCache(capacity_bytes, admit_after, max_staleness, slab=slab, convert=convert)
