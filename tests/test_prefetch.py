"""The prefetcher reads rows ahead and keeps training consistent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from daemon import daemon_thread

from client import EngramClient, NgramHashMapping
from client.torch import StoreEmbedding
from client.torch.pipeline import TrainPipeline
from client.torch.prefetch import Prefetcher

LAYER, DIM = 1, 4


@pytest.fixture
def setup(
    tmp_path: Path, tokenizer_path: Path
) -> Iterator[tuple[EngramClient, NgramHashMapping, StoreEmbedding]]:
    with daemon_thread(tmp_path / "data") as daemon, EngramClient(daemon.address) as client:
        mapping = NgramHashMapping([31, 37], 3, 8, 2, [LAYER], tokenizer_path, 0, 0)
        sizes = mapping.table_sizes(LAYER)
        client.create_table("t", sum(sizes), DIM, lr=1.0)
        yield client, mapping, StoreEmbedding(sizes, DIM, client, "t")


def batches(n: int) -> list[np.ndarray]:
    # Few distinct tokens: consecutive batches share most of their rows.
    rng = np.random.default_rng(0)
    return [rng.integers(0, 6, (2, 10)) for _ in range(n)]


def wait_until_full(prefetcher: Prefetcher) -> None:
    deadline = time.monotonic() + 10
    while not prefetcher._queue.full() and time.monotonic() < deadline:
        time.sleep(0.01)


def rows_are_current(
    client: EngramClient, table: StoreEmbedding, rows: dict[int, tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Checks a batch's rows against the store's, every push applied; its hash ids."""
    hash_ids, fetched = rows[LAYER]
    table.wait_for_pushes()
    fresh = client.lookup("t", hash_ids.numpy() + table.offsets.numpy())
    np.testing.assert_array_equal(fetched.numpy(), fresh)
    return hash_ids


def train_step(table: StoreEmbedding, hash_ids: torch.Tensor) -> None:
    keys = hash_ids + table.offsets
    table.push_gradient(keys, torch.ones((*keys.shape, DIM)))


@pytest.mark.parametrize("read_with_pushes", [True, False])
def test_synchronous_mode_sees_every_earlier_push(
    setup: tuple[EngramClient, NgramHashMapping, StoreEmbedding], read_with_pushes: bool
) -> None:
    client, mapping, table = setup
    prefetcher = Prefetcher(
        batches(8), mapping, {LAYER: table}, depth=3, read_with_pushes=read_with_pushes
    )
    wait_until_full(prefetcher)
    calls = table.pipeline.calls
    steps = 0
    for batch, rows in prefetcher:
        assert rows[LAYER][1].shape == (2, 10, 4, DIM)
        hash_ids = rows_are_current(client, table, rows)
        np.testing.assert_array_equal(hash_ids.numpy(), mapping.hash(batch)[LAYER])
        train_step(table, hash_ids)
        steps += 1
    assert steps == 8
    table.wait_for_pushes()
    if read_with_pushes:
        # Each batch after the first came with the push of the step before it.
        assert prefetcher.rows_refreshed == 0
        assert prefetcher.batches_read_with_pushes == 7
        assert table.pipeline.calls - calls == 8
    else:
        assert prefetcher.rows_refreshed > 0, "rows read ahead of pushes must be refreshed"
        assert prefetcher.batches_read_with_pushes == 0
    prefetcher.close()
    # Without a prefetcher, pushes no longer bring their rows back.
    train_step(table, hash_ids)
    table.wait_for_pushes()
    assert table.updated_rows([table.pushes_issued]) is None


def test_max_staleness_bounds_how_far_behind_rows_may_be(
    setup: tuple[EngramClient, NgramHashMapping, StoreEmbedding],
) -> None:
    client, mapping, table = setup
    every_row = np.arange(table.num_rows)
    snapshots = [client.lookup("t", every_row)]  # state after 0, 1, 2, ... pushes
    prefetcher = Prefetcher(batches(8), mapping, {LAYER: table}, depth=3, max_staleness=2)
    wait_until_full(prefetcher)
    stale_steps = 0
    for step, (_, rows) in enumerate(prefetcher):
        hash_ids, fetched = rows[LAYER]
        keys = (hash_ids.numpy() + table.offsets.numpy()).astype(np.int64)
        matches = [
            k
            for k in range(max(0, step - 2), step + 1)
            if np.array_equal(fetched.numpy(), snapshots[k][keys])
        ]
        assert matches, f"step {step}: rows miss more than 2 pushes"
        stale_steps += step not in matches
        train_step(table, hash_ids)
        table.wait_for_pushes()
        snapshots.append(client.lookup("t", every_row))
    assert stale_steps > 0, "with max_staleness the prefetcher must reuse rows read ahead"


def test_pushes_issued_before_the_prefetcher_are_caught_by_reading_again(
    setup: tuple[EngramClient, NgramHashMapping, StoreEmbedding],
) -> None:
    client, mapping, table = setup
    # A push issued before the prefetcher existed (so its rows were not kept), still in
    # flight while the prefetcher reads ahead.
    landed = threading.Event()
    batch = client.batch

    def held_batch(*args: Any, **kwargs: Any) -> Any:
        landed.wait(10)
        return batch(*args, **kwargs)

    client.batch = held_batch  # type: ignore[method-assign]
    train_step(table, torch.from_numpy(mapping.hash(batches(1)[0])[LAYER]))
    prefetcher = Prefetcher(batches(3), mapping, {LAYER: table}, depth=2, read_with_pushes=False)
    wait_until_full(prefetcher)
    landed.set()
    for _, rows in prefetcher:
        train_step(table, rows_are_current(client, table, rows))
    assert prefetcher.rows_refreshed > 0


def test_a_pipeline_sends_a_backward_pass_and_the_next_rows_in_one_call(
    tmp_path: Path, tokenizer_path: Path
) -> None:
    layers = [1, 2]
    with daemon_thread(tmp_path / "data") as daemon, EngramClient(daemon.address) as client:
        mapping = NgramHashMapping([31, 37], 3, 8, 2, layers, tokenizer_path, 0, 0)
        pipeline = TrainPipeline(client)
        tables = {}
        for layer in layers:
            sizes = mapping.table_sizes(layer)
            client.create_table(f"t{layer}", sum(sizes), DIM, optimizer="adam", lr=0.1)
            tables[layer] = StoreEmbedding(sizes, DIM, client, f"t{layer}", pipeline=pipeline)
        prefetcher = Prefetcher(batches(6), mapping, tables, depth=2)
        weight = torch.linspace(-1, 1, DIM)
        for step, (_, rows) in enumerate(prefetcher):
            calls = pipeline.calls
            loss = torch.zeros(())
            for layer, table in tables.items():
                hash_ids, fetched = rows[layer]
                # Every push of the steps before is in the rows.
                table.wait_for_pushes()
                keys = hash_ids.numpy() + table.offsets.numpy()
                np.testing.assert_array_equal(fetched.numpy(), client.lookup(f"t{layer}", keys))
                loss = loss + (table(hash_ids, fetched) * weight).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            for table in tables.values():
                table.wait_for_pushes()
            # Both tables' pushes (and the next batch's rows) went in one call.
            assert pipeline.calls == calls + 1, f"step {step}"
            assert all(t.pushes_issued == step + 1 for t in tables.values())
        prefetcher.close()
        pipeline.close()
        assert prefetcher.rows_refreshed == 0
        assert prefetcher.batches_read_with_pushes == 5


def test_rows_sent_with_pushes_follow_the_last_send_before_their_batch(
    setup: tuple[EngramClient, NgramHashMapping, StoreEmbedding],
) -> None:
    client, mapping, table = setup
    prefetcher = Prefetcher(batches(6), mapping, {LAYER: table}, depth=2)
    wait_until_full(prefetcher)
    for _, rows in prefetcher:
        hash_ids = rows_are_current(client, table, rows)
        # Two pushes before the next batch (as with gradient accumulation): its rows go
        # with the second, and see both.
        train_step(table, hash_ids)
        train_step(table, hash_ids)
    prefetcher.close()
    assert prefetcher.batches_read_with_pushes == 5
    assert prefetcher.rows_refreshed == 0
