"""An engine's read path into torch tensors (client/engram_reader.py): bfloat16 or float32
`out[T, heads, D]` tensors on the host (pinned or not) written in place, and on a CUDA
device through a pinned staging buffer kept per shape (a non-blocking copy: synchronise its
stream before reading it). `submit` starts the gather at a step's start; `wait` is called
where the rows are needed (an engine waits at layer 1 and layer 14)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from client.engram_reader import LayerReads


def _host_array(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    if tensor.dtype == torch.float32:
        return tensor.numpy()
    raise ValueError(f"out must be bfloat16 or float32, got {tensor.dtype}")


class EngramRowRead:
    """A read in flight: `wait()` returns `out` once its rows are there (a CUDA `out` once
    their copy is queued on its stream)."""

    def __init__(
        self, future: Future[Any], out: torch.Tensor, copy_out: Callable[[torch.Tensor], None]
    ) -> None:
        self._future, self._out, self._copy_out = future, out, copy_out

    def wait(self) -> torch.Tensor:
        self._future.result()
        self._copy_out(self._out)
        return self._out


class EngramRowReader:
    def __init__(self, reader: LayerReads) -> None:
        self.reader = reader
        # Per (shape, dtype) of CUDA outputs: the pinned buffer, and the event of its last
        # copy out (the next read into the buffer waits for it).
        self._staging: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}
        self._copied: dict[tuple[tuple[int, ...], torch.dtype], torch.cuda.Event] = {}
        # The last host `out` and its numpy view (holding it alive until the next one).
        self._last_host_out: torch.Tensor | None = None
        self._last_host = np.empty(0)

    def _target(self, out: torch.Tensor) -> np.ndarray:
        """Where the rows of `out` are gathered: its memory, or its pinned staging buffer."""
        last = self._last_host
        if out is self._last_host_out and (out.data_ptr(), out.shape) == (
            last.ctypes.data,
            last.shape,
        ):
            # An engine reads into the same buffers every step: a decode step's lookup is
            # short enough that making its numpy view again would be a fifth of it.
            return last
        if not isinstance(out, torch.Tensor) or not out.is_contiguous():
            raise ValueError("out must be a contiguous torch.Tensor")
        if out.device.type == "cpu":
            self._last_host, self._last_host_out = _host_array(out), out
            return self._last_host
        if out.device.type != "cuda":
            raise ValueError(f"out must be on the CPU or a CUDA device, not {out.device}")
        kind = (tuple(out.shape), out.dtype)
        if kind not in self._staging:
            self._staging[kind] = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        elif kind in self._copied:
            self._copied[kind].synchronize()
        return _host_array(self._staging[kind])

    def _copy_out(self, out: torch.Tensor) -> None:
        if out.device.type != "cuda":
            return
        kind = (tuple(out.shape), out.dtype)
        stream = torch.cuda.current_stream(out.device)
        out.copy_(self._staging[kind], non_blocking=True)
        event = self._copied[kind] = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(stream)

    def lookup_into(self, ids: Any, out: torch.Tensor, token_mask: Any = None) -> torch.Tensor:
        """Fills `out` (`[T, selected heads, D]`, bfloat16 or float32) with the rows of `ids`
        (`[T, H]`), on this thread; returns it (a CUDA `out` by a non-blocking copy)."""
        self.reader.lookup_into(*_arrays(ids, token_mask, self._target(out)))
        self._copy_out(out)
        return out

    def submit(self, ids: Any, out: torch.Tensor, token_mask: Any = None) -> EngramRowRead:
        """`lookup_into` started on the reader's thread; `wait()` where the rows are needed.
        `out` must not be touched until then."""
        host = self._target(out)
        future = self.reader.submit(*_arrays(ids, token_mask, host))
        return EngramRowRead(future, out, self._copy_out)


def _arrays(ids: Any, token_mask: Any, host: np.ndarray) -> tuple[Any, np.ndarray, Any]:
    ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if isinstance(token_mask, torch.Tensor):
        token_mask = token_mask.cpu().numpy()
    return ids, host, token_mask
