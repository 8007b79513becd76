"""Where an Engram layer's embedding rows come from: one interface, two backends.

- `LocalEmbedding`: an in-process `nn.Embedding` (the reference's `MultiHeadEmbedding`), for
  small models and as the baseline of tests;
- `StoreEmbedding`: rows from a store daemon; backward sums the gradient of each distinct row
  (in the background) and pushes it, so the daemon's optimizer trains the table.

Both take hash ids `[B, T, heads]` (per-head, as `NgramHashMapping.hash` returns them), add
each head's offset, and return rows `[B, T, heads, dim]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from client.cache import RowCache
from client.client import EngramClient
from client.torch.pipeline import TrainPipeline
from store.spec import check_table_argument, checked_integer


def _offsets(list_of_n: Sequence[int]) -> torch.Tensor:
    sizes = torch.tensor(list(list_of_n), dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)[:-1]])


class LocalEmbedding(nn.Module):
    """The reference's MultiHeadEmbedding: every head's table in one `nn.Embedding`."""

    offsets: torch.Tensor

    def __init__(self, list_of_N: Sequence[int], D: int, sparse: bool = True) -> None:
        super().__init__()
        self.num_heads = len(list_of_N)
        self.embedding_dim = D
        # Saved, as the reference saves it: its state_dict loads strictly.
        self.register_buffer("offsets", _offsets(list_of_N))
        self.embedding = nn.Embedding(int(sum(list_of_N)), D, sparse=sparse)

    def forward(self, input_ids: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        out: torch.Tensor = self.embedding(input_ids + self.offsets)
        return out


class _PushOnBackward(torch.autograd.Function):
    """Identity on rows fetched from the store; its backward hands the gradient to the table."""

    @staticmethod
    def forward(
        ctx: Any, anchor: torch.Tensor, rows: torch.Tensor, keys: torch.Tensor, table: Any
    ) -> torch.Tensor:
        ctx.keys = keys
        ctx.table = table
        return rows.view_as(rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None, None]:
        ctx.table.push_gradient(ctx.keys, grad)
        return None, None, None, None


WIRE_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
TORCH_DTYPES = {name: dtype for dtype, name in WIRE_DTYPES.items()}


class StoreEmbedding(nn.Module):
    """An Engram layer's rows held by a store daemon (or shards of one).

    Forward fetches the rows (or takes rows the caller prefetched); backward hands their
    gradient over to be summed per distinct row and pushed in the background, with at most
    `max_pushes_in_flight` pushes outstanding, applied in the order they were issued.
    Embeddings sharing a `pipeline` send the pushes of one backward pass together, in one
    call (by default an embedding has a pipeline of its own). Before fetching, forward waits
    for earlier pushes, so a step always sees every update of the steps before it. With a
    `cache`, hot rows are served from host memory; this table's pushes invalidate theirs.
    """

    offsets: torch.Tensor
    row_type: torch.Tensor

    def __init__(
        self,
        list_of_N: Sequence[int],
        D: int,
        client: EngramClient,
        table: str,
        max_pushes_in_flight: int = 2,
        cache: RowCache | None = None,
        pipeline: TrainPipeline | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(client, EngramClient):
            raise TypeError(f"client must be an EngramClient, got {client!r}")
        check_table_argument(table)
        # No slot at all would block the first backward pass for good.
        checked_integer("max_pushes_in_flight", max_pushes_in_flight, 1, 1 << 20)
        if pipeline is not None and pipeline.client is not client:
            raise ValueError("pipeline must push through the same client as the table")
        self.num_heads = len(list_of_N)
        self.embedding_dim = D
        self.num_rows = int(sum(list_of_N))
        # Saved, as the reference saves it: its state_dict loads strictly.
        self.register_buffer("offsets", _offsets(list_of_N))
        self.client = client
        self.table = table
        self.cache = cache
        # The incarnation of the table last checked to fit, at the first read (the daemon
        # may not be up yet here) and whenever the table is created anew.
        self._fitted_incarnation: tuple[str, ...] | None = None
        self.pipeline = pipeline if pipeline is not None else TrainPipeline(client)
        self.push_log = self.pipeline.push_log(table, max_pushes_in_flight, cache)
        # Gives the rows a place in the autograd graph without being a trainable parameter.
        self._anchor = torch.zeros((), requires_grad=True)
        # Follows the module's dtype (`engram.to(torch.bfloat16)`): rows come in it.
        self.register_buffer("row_type", torch.zeros(()), persistent=False)
        # The rows go to and come from the store in `state_dict` and `load_state_dict`.
        self.loaded_rows_key = ""
        self.register_state_dict_post_hook(_save_rows)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_load_rows)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_post_hook(_rows_were_expected)  # type: ignore[no-untyped-call]

    @property
    def wire_dtype(self) -> str:
        """The dtype rows are read in: the module's (bfloat16 rows are half the bytes)."""
        return WIRE_DTYPES.get(self.row_type.dtype, "float32")

    @property
    def pushes_issued(self) -> int:
        return self.push_log.issued

    @property
    def keeps_updated_rows(self) -> bool:
        return self.push_log.keeps_updated_rows

    def forward(self, input_ids: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        keys = input_ids + self.offsets.to(input_ids.device)
        if rows is None:
            self.wait_for_pushes()
            rows = self.fetch(keys.detach().cpu().numpy()).to(input_ids.device)
        # Rows read ahead may come as float32, whatever the module's dtype.
        rows = rows.to(self.row_type.dtype)
        if not torch.is_grad_enabled():
            return rows
        out: torch.Tensor = _PushOnBackward.apply(self._anchor, rows, keys.detach(), self)
        return out

    def fetch(self, keys: np.ndarray) -> torch.Tensor:
        """Rows of global `keys` (any shape), through the cache when there is one: on the
        cache's device for a device cache, else in host memory."""
        self.check_table()
        if self.cache is None:
            # In the module's dtype on the wire: bfloat16 rows are half float32's bytes.
            wire = self.wire_dtype
            rows = torch.from_numpy(self.client.lookup(self.table, keys, wire))
            # The lookup may have found the table created anew, in another shape.
            self.check_table()
            return rows.view(torch.bfloat16) if wire == "bfloat16" else rows
        flat = keys.reshape(-1).astype(np.uint64)
        rows = self.cache.lookup(
            self.table,
            flat,
            lambda k: self.client.lookup(self.table, k),
            lambda: self.client.incarnation(self.table),
        )
        self.check_table()
        if isinstance(rows, np.ndarray):
            rows = torch.from_numpy(rows)
        out: torch.Tensor = rows.reshape((*keys.shape, self.embedding_dim))
        return out

    def check_table(self) -> None:
        """Refuses a table this module's heads do not fit: a table left by another config
        would otherwise fail later as a shape error in the layer, or a key out of range.
        Asks the daemon at the first read (or when a prefetcher starts), and again once the
        client finds the table created anew."""
        incarnation = self.client.incarnation(self.table)
        if incarnation == self._fitted_incarnation:
            return
        info = self.client.describe(self.table)
        if info.dim != self.embedding_dim or info.num_rows < self.num_rows:
            raise ValueError(
                f"table {self.table!r} holds {info.num_rows} rows of dim {info.dim}; this "
                f"module's heads need {self.num_rows} rows of dim {self.embedding_dim}: create "
                "the table for this config (drop or rename the old one)"
            )
        self._fitted_incarnation = incarnation

    def keep_updated_rows(self, keep: bool = True) -> None:
        """From now on, remembers the rows each push leaves (the daemon returns them) for
        `updated_rows`, until `forget_updated_rows`; or, with `keep=False`, stops and
        forgets them all."""
        self.push_log.keep_updated_rows(keep)

    def updated_rows(self, numbers: Iterable[int]) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """`(keys, rows)` as each of the given (applied) pushes left them, in push order; None
        unless every one was remembered."""
        return self.push_log.updated_rows(numbers)

    def forget_updated_rows(self, through: int) -> None:
        """Drops the rows of pushes 1..`through` (nobody reading ahead still needs them)."""
        self.push_log.forget_updated_rows(through)

    def push_gradient(self, keys: torch.Tensor, grad: torch.Tensor) -> None:
        """Pushes `grad` (one row per key) without blocking the backward pass (beyond the
        bound on pushes in flight). The rows of repeated keys are summed on the pipeline's
        thread, off the training thread, before they are sent."""
        flat_keys = keys.reshape(-1).cpu().numpy().astype(np.uint64)
        # A copy: autograd owns the gradient's memory once backward moves on.
        rows = grad.reshape(-1, self.embedding_dim).to("cpu", torch.float32, copy=True).numpy()
        if not self.push_log.try_reserve():
            # The pushes holding the slots may still wait for the end of this backward pass.
            self.pipeline.flush()
            self.push_log.reserve()
        self.pipeline.push(self.push_log, flat_keys, rows)

    def keys_pushed_since(self, push_number: int) -> np.ndarray:
        """Keys of the pushes issued after push `push_number`, repeats included (the last
        `PUSH_LOG_LENGTH` pushes are remembered)."""
        return self.push_log.keys_since(push_number)

    def pushes_applied(self) -> int:
        """The number n such that pushes 1..n are all applied (pushes run concurrently, so a
        later one may finish first)."""
        return self.push_log.applied_through()

    def wait_for_pushes(self) -> None:
        """Blocks until every push issued so far has been applied (raising its error)."""
        self.pipeline.flush()
        self.push_log.wait()


def _save_rows(
    module: StoreEmbedding, state_dict: dict[str, Any], prefix: str, metadata: Any
) -> None:
    """Saves as the reference's `MultiHeadEmbedding` does: `offsets` and
    `embedding.weight`, every row read from the store (in the module's dtype)."""
    module.wait_for_pushes()
    rows = module.client.lookup(module.table, np.arange(module.num_rows, dtype=np.uint64))
    state_dict[prefix + "embedding.weight"] = torch.from_numpy(rows).to(module.row_type.dtype)


def _load_rows(
    module: StoreEmbedding,
    state_dict: dict[str, Any],
    prefix: str,
    metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Loads `embedding.weight` into the store: the table's rows become the loaded ones
    and its optimizer starts afresh (`EngramClient.replace_rows`)."""
    key = prefix + "embedding.weight"
    module.loaded_rows_key = key
    if key not in state_dict:
        missing_keys.append(key)
        return
    weight = state_dict[key].detach()
    if tuple(weight.shape) != (module.num_rows, module.embedding_dim):
        error_msgs.append(
            f"size mismatch for {key}: copying a param with shape {tuple(weight.shape)}, "
            f"the table holds {(module.num_rows, module.embedding_dim)}"
        )
        return
    module.wait_for_pushes()
    stored = module.client.spec(module.table).dtype
    if stored not in TORCH_DTYPES:
        error_msgs.append(f"{key}: table {module.table!r} stores {stored} rows, not trainable")
        return
    rows = weight.to("cpu", TORCH_DTYPES[stored]).contiguous()
    packed = rows.view(torch.uint16) if stored == "bfloat16" else rows
    module.client.replace_rows(module.table, packed.numpy())
    if module.cache is not None:
        module.cache.invalidate(module.table, np.arange(module.num_rows, dtype=np.uint64))
    module.pipeline.table_replaced(module.table)


def _rows_were_expected(module: StoreEmbedding, incompatible: Any) -> None:
    """`embedding.weight` is no parameter here: torch counts it unexpected."""
    if module.loaded_rows_key in incompatible.unexpected_keys:
        incompatible.unexpected_keys.remove(module.loaded_rows_key)
