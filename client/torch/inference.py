"""Rows for an inference engine, written into a tensor it owns.

An engine keeps its own buffers (pinned host memory it copies to the GPU from, or the GPU
tensor itself) and wants the rows of a decode step put there, with no tensor allocated per
step. `lookup_into` writes a lookup's rows straight into a host tensor's memory; for a
device tensor it stages them in a pinned host buffer kept per shape and copies them over
without blocking the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from client.client import EngramClient

_FLOAT_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _host_view(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's memory as the numpy array the client fills (uint16 bits for bfloat16,
    which numpy lacks)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


class RowWriter:
    """Writes rows into caller-owned tensors; holds the pinned staging buffers of device
    outputs (one per shape and dtype), so a decode loop allocates nothing per step."""

    def __init__(self, client: EngramClient) -> None:
        self.client = client
        # Per (shape, dtype): the pinned buffer, and the event of its last copy out.
        self._staging: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}
        self._copied: dict[tuple[tuple[int, ...], torch.dtype], torch.cuda.Event] = {}

    def lookup_into(
        self, table: str, keys: Any, out: torch.Tensor, dtype: str | None = None
    ) -> torch.Tensor:
        """Fills `out` (`keys.shape + (dim,)` of float32, bfloat16 or float16; or uint8 of
        `keys.shape + (row bytes,)` with `dtype` a quantized table's dtype, for rows packed
        as stored) with the rows of `keys`, and returns it. A device `out` is filled by a
        non-blocking copy from pinned memory: synchronise its stream before reading it."""
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if dtype is None:
            if out.dtype not in _FLOAT_DTYPES:
                raise ValueError(
                    f"out of dtype {out.dtype} needs dtype= (a quantized table's dtype for "
                    "packed rows in uint8)"
                )
            dtype = _FLOAT_DTYPES[out.dtype]
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
        if out.device.type == "cpu":
            self.client.lookup(table, keys, dtype, out=_host_view(out))
            return out
        if out.device.type != "cuda":
            raise ValueError(f"out must be on the CPU or a CUDA device, not {out.device}")
        kind = (tuple(out.shape), out.dtype)
        staging = self._staging.get(kind)
        if staging is None:
            staging = self._staging[kind] = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        elif kind in self._copied:
            # The previous copy out of this buffer may still be reading it.
            self._copied[kind].synchronize()
        self.client.lookup(table, keys, dtype, out=_host_view(staging))
        # The copy runs on out's device's current stream, which need not be the current
        # device's: the event marks that stream.
        stream = torch.cuda.current_stream(out.device)
        out.copy_(staging, non_blocking=True)
        event = self._copied[kind] = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(stream)
        return out
