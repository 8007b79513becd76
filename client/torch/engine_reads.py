"""An engine's read path into torch tensors (client/engram_reader.py): bfloat16 or float32
`out[T, heads, D]` tensors on the host (pinned or not) written in place, and on a CUDA
device through a pinned staging buffer kept per shape (a non-blocking copy: synchronise its
stream before reading it). `submit` starts the gather at a step's start; `wait` is called
where the rows are needed (an engine waits at layer 1 and layer 14)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from client.engram_reader import EngramLayerReader


def _host_array(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    if tensor.dtype == torch.float32:
        return tensor.numpy()
    raise ValueError(f"out must be bfloat16 or float32, got {tensor.dtype}")


class EngramRowRead:
    """A read in flight: `wait()` returns `out` once its rows are there."""

    def __init__(self, future: Future[Any], out: torch.Tensor, staged: torch.Tensor | None) -> None:
        self._future, self._out, self._staged = future, out, staged

    def wait(self) -> torch.Tensor:
        self._future.result()
        if self._staged is not None:
            self._out.copy_(self._staged, non_blocking=True)
        return self._out


class EngramRowReader:
    def __init__(self, reader: EngramLayerReader) -> None:
        self.reader = reader
        self._staging: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def _target(self, out: torch.Tensor) -> tuple[np.ndarray, torch.Tensor | None]:
        if not isinstance(out, torch.Tensor) or not out.is_contiguous():
            raise ValueError("out must be a contiguous torch.Tensor")
        if out.device.type == "cpu":
            return _host_array(out), None
        if out.device.type != "cuda":
            raise ValueError(f"out must be on the CPU or a CUDA device, not {out.device}")
        kind = (tuple(out.shape), out.dtype)
        if kind not in self._staging:
            self._staging[kind] = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        staged = self._staging[kind]
        return _host_array(staged), staged

    def lookup_into(self, ids: Any, out: torch.Tensor, token_mask: Any = None) -> torch.Tensor:
        """Fills `out` (`[T, selected heads, D]`, bfloat16 or float32) with the rows of `ids`
        (`[T, H]`), on this thread; returns it (a CUDA `out` by a non-blocking copy)."""
        host, staged = self._target(out)
        self.reader.lookup_into(*_arrays(ids, token_mask, host))
        if staged is not None:
            out.copy_(staged, non_blocking=True)
        return out

    def submit(self, ids: Any, out: torch.Tensor, token_mask: Any = None) -> EngramRowRead:
        """`lookup_into` started on the reader's thread; `wait()` where the rows are needed.
        `out` must not be touched until then."""
        host, staged = self._target(out)
        return EngramRowRead(self.reader.submit(*_arrays(ids, token_mask, host)), out, staged)


def _arrays(ids: Any, token_mask: Any, host: np.ndarray) -> tuple[Any, np.ndarray, Any]:
    ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if isinstance(token_mask, torch.Tensor):
        token_mask = token_mask.cpu().numpy()
    return ids, host, token_mask
