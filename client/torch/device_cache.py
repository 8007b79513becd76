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

    def slab(rows: int, dim: int) -> torch.Tensor:
        return torch.empty((rows, dim), dtype=torch.float32, device=device)

    def convert(rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(rows)).to(device)

    return RowCache(capacity_bytes, admit_after, max_staleness, slab=slab, convert=convert)
