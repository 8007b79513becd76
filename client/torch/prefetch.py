"""Fetching Engram rows ahead of the model.

`Prefetcher` wraps any iterator of token batches. A background thread hashes each batch for
every Engram layer `depth` batches ahead (and reads its rows, see below); iterating yields
`(batch, rows)`, `rows[layer]` being `(hash_ids, rows)` tensors ready for
`Engram.forward(..., hash_ids=, rows=)` (pinned and moved with `non_blocking=True` when a
device is given).

Training consistency: in the default synchronous mode (`max_staleness=0`) every step sees
every update of the steps before it. When the embeddings push through one `TrainPipeline` (and
`read_with_pushes`, and no table has a cache, whose hot rows are read through it), a
batch's rows are read in the same call that carries the pushes of the step before it,
after them (`TrainPipeline.queue_read`): one round trip per step, and nothing to bring up
to date (the thread only hashes ahead). Otherwise rows are read ahead, and those of a
batch that a later push touched are brought up to date once the push is applied, from the
rows each push returned (pushes of a table apply in order, so the last push of a key left
its latest row).
`max_staleness=k` reads ahead and accepts rows that miss at most the last k pushes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from client.hashing import NgramHashMapping
from client.torch.embeddings import StoreEmbedding
from client.torch.pipeline import QueuedRead
from client.torch.push_log import PUSH_LOG_LENGTH


@dataclass
class _Pending:
    batch: Any
    hash_ids: dict[int, np.ndarray]
    keys: dict[int, np.ndarray]
    rows: dict[int, torch.Tensor]
    pushes_seen: dict[int, int]
    # Sorted when rows are read ahead (off the training thread), else only if needed.
    sorted_keys: dict[int, _SortedKeys]
    # The lookups queued to go with the pipeline's pushes, when the rows come that way.
    read: QueuedRead | None = field(default=None)

    def sorted(self, layer: int) -> _SortedKeys:
        if layer not in self.sorted_keys:
            self.sorted_keys[layer] = _SortedKeys(self.keys[layer].reshape(-1))
        return self.sorted_keys[layer]


_DONE = object()


class _SortedKeys:
    """A batch's keys with the order that sorts them: finding many pushed keys among them is
    then a merge-like search (sorting once, off the training thread, costs less than
    searching unsorted keys at every push)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]

    def find(self, pushed_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the batch's keys that are among `pushed_keys` (ascending, repeats
        allowed), and where each of them stands in `pushed_keys`."""
        if not len(pushed_keys):
            return np.zeros(0, np.intp), np.zeros(0, np.intp)
        at = np.searchsorted(pushed_keys, self.sorted).clip(max=len(pushed_keys) - 1)
        hit = pushed_keys[at] == self.sorted
        return self.order[hit], at[hit]

    def overwrite(
        self, rows: torch.Tensor, pushed_keys: np.ndarray, pushed_rows: np.ndarray
    ) -> int:
        """Sets each row of `rows` (one per key) whose key is among `pushed_keys` to that
        key's pushed row; returns how many it set."""
        if len(pushed_keys) > 1 and not (pushed_keys[1:] >= pushed_keys[:-1]).all():
            by_key = np.argsort(pushed_keys, kind="stable")
            pushed_keys, pushed_rows = pushed_keys[by_key], pushed_rows[by_key]
        positions, at = self.find(pushed_keys)
        if len(positions):
            rows[torch.from_numpy(positions).to(rows.device)] = torch.from_numpy(
                pushed_rows[at]
            ).to(rows.device)
        return len(positions)


class Prefetcher:
    def __init__(
        self,
        batches: Iterable[Any],
        mapping: NgramHashMapping,
        embeddings: dict[int, StoreEmbedding],
        depth: int = 2,
        max_staleness: int = 0,
        device: torch.device | str | None = None,
        token_ids: Callable[[Any], Any] = lambda batch: batch,
        read_with_pushes: bool = True,
    ) -> None:
        if not 1 <= depth <= PUSH_LOG_LENGTH // 2:
            raise ValueError(f"depth must be between 1 and {PUSH_LOG_LENGTH // 2}, got {depth}")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be non-negative, got {max_staleness}")
        missing = set(embeddings) - set(mapping.layer_ids)
        if missing:
            raise ValueError(
                f"embeddings for layers {sorted(missing)} that the mapping does not hash"
            )
        self.mapping = mapping
        self.embeddings = embeddings
        self.max_staleness = max_staleness
        self.device = torch.device(device) if device is not None else None
        self.token_ids = token_ids
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._fill, args=(iter(batches),), daemon=True)
        self._stop = threading.Event()
        self.rows_refreshed = 0
        self.batches_read_with_pushes = 0
        # Tables with a cache read through it; with max_staleness rows are read ahead.
        with_pushes = (
            read_with_pushes
            and not max_staleness
            and all(t.cache is None for t in embeddings.values())
        )
        pipelines = {t.pipeline for t in embeddings.values()}
        # One pipeline for every embedding: the next batch's rows can ride with its pushes.
        self._pipeline = pipelines.pop() if with_pushes and len(pipelines) == 1 else None
        # Rows read with the pushes travel in the embeddings' dtype when they share one.
        wire = {t.wire_dtype for t in embeddings.values()}
        self._wire_dtype = wire.pop() if len(wire) == 1 else "float32"
        if self._pipeline is None and any(t.pipeline.step_sync for t in embeddings.values()):
            # Rows read ahead learn only this rank's pushes; the other ranks' would be missed.
            raise ValueError(
                "with step-synchronous pushes (TrainPipeline(step_sync=...)) rows read ahead "
                "must ride with the pushes: one pipeline for every embedding, no cache, "
                "max_staleness=0, read_with_pushes=True"
            )
        if self._pipeline is not None:
            self._pipeline.start_reads()
        else:
            # Rows read ahead are brought up to date from the rows later pushes return.
            for embedding in embeddings.values():
                embedding.keep_updated_rows()
        self._thread.start()

    def _fill(self, batches: Iterator[Any]) -> None:
        try:
            # Rows read with the pushes do not pass through the embeddings' own reads.
            for embedding in self.embeddings.values():
                embedding.check_table()
            for batch in batches:
                ids = np.asarray(self.token_ids(batch), dtype=np.int64)
                hashes = self.mapping.hash(ids)
                pending = _Pending(batch, {}, {}, {}, {}, {})
                for layer, embedding in self.embeddings.items():
                    keys = hashes[layer] + embedding.offsets.numpy()
                    pending.hash_ids[layer] = hashes[layer]
                    pending.keys[layer] = keys
                    if self._pipeline is None:
                        pending.sorted(layer)
                        # Pushes applied before the lookup runs are in its rows; later ones
                        # are checked when the batch is consumed.
                        pending.pushes_seen[layer] = embedding.pushes_applied()
                        pending.rows[layer] = embedding.fetch(keys)
                if self._pipeline is not None:
                    pending.read = self._pipeline.queue_read(
                        ((t.push_log, pending.keys[layer]) for layer, t in self.embeddings.items()),
                        self._wire_dtype,
                    )
                while not self._stop.is_set():
                    try:
                        self._queue.put(pending, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as error:  # surfaced to the consumer
            self._queue.put(error)
            return
        self._queue.put(_DONE)

    def __iter__(self) -> Iterator[tuple[Any, dict[int, tuple[torch.Tensor, torch.Tensor]]]]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            if item.read is not None:
                self._read(item, item.read)
            yield item.batch, {layer: self._ready(item, layer) for layer in self.embeddings}

    def _read(self, item: _Pending, read: QueuedRead) -> None:
        assert self._pipeline is not None
        rows, with_pushes = self._pipeline.take_read(read)
        self.batches_read_with_pushes += with_pushes
        item.pushes_seen = dict(zip(self.embeddings, read.pushes_seen, strict=True))
        item.rows = {
            layer: _as_tensor(r, read.dtype) for layer, r in zip(self.embeddings, rows, strict=True)
        }

    def _ready(self, item: _Pending, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embeddings[layer]
        rows = item.rows[layer]
        seen = item.pushes_seen[layer]
        if embedding.pushes_issued - seen > self.max_staleness:
            # Only rows that a later push touched can be out of date.
            embedding.wait_for_pushes()
            numbers = range(seen + 1, embedding.pushes_issued + 1)
            updates = embedding.updated_rows(numbers)
            flat_keys = item.keys[layer].reshape(-1)
            flat_rows = rows.view(-1, rows.shape[-1])
            if updates is not None:
                # Each push returned the rows it left, in push order: no need to read again.
                for pushed_keys, pushed_rows in updates:
                    self.rows_refreshed += item.sorted(layer).overwrite(
                        flat_rows, pushed_keys, pushed_rows
                    )
            else:
                pushed = np.unique(embedding.keys_pushed_since(seen))
                positions, _ = item.sorted(layer).find(pushed)
                if len(positions):
                    # Straight from the store: a cache could hold the rows from before the push.
                    fresh = embedding.client.lookup(embedding.table, flat_keys[positions])
                    flat_rows[torch.from_numpy(positions).to(rows.device)] = torch.from_numpy(
                        fresh
                    ).to(rows.device)
                    self.rows_refreshed += len(positions)
        # Batches still ahead were read after this one: they need no older pushes' rows.
        embedding.forget_updated_rows(through=seen)
        hash_ids = torch.from_numpy(item.hash_ids[layer])
        if self.device is not None and self.device.type != "cpu":
            if rows.device != self.device:
                rows = rows.pin_memory().to(self.device, non_blocking=True)
            hash_ids = hash_ids.pin_memory().to(self.device, non_blocking=True)
        return hash_ids, rows

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._pipeline is not None:
            self._pipeline.stop_reads()
        else:
            for embedding in self.embeddings.values():
                embedding.keep_updated_rows(False)


def _as_tensor(rows: np.ndarray, dtype: str) -> torch.Tensor:
    """Rows read as `dtype` (bfloat16 comes as uint16 bits) as a tensor of that dtype."""
    tensor = torch.from_numpy(rows)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor
