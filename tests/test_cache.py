"""The client's hot-row cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from daemon import daemon_thread

from client import EngramClient
from client.cache import RowCache
from client.torch import StoreEmbedding, device_row_cache

ROWS, DIM = 10_000, 8
TABLE = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)


class CountingStore:
    def __init__(self) -> None:
        self.rows_fetched = 0

    def fetch(self, keys: np.ndarray) -> np.ndarray:
        self.rows_fetched += len(keys)
        return TABLE[keys.astype(np.int64)]


def test_zipf_lookups_are_exact_and_mostly_hits() -> None:
    store = CountingStore()
    cache = RowCache(capacity_bytes=500 * DIM * 4)
    rng = np.random.default_rng(1)
    asked = 0
    for _ in range(50):
        keys = (rng.zipf(1.3, 2000) % ROWS).astype(np.uint64)
        np.testing.assert_array_equal(
            cache.lookup("t", keys, store.fetch), TABLE[keys.astype(np.int64)]
        )
        asked += len(keys)
        assert cache.bytes_used <= cache.capacity_bytes
    assert cache.stats.hits + cache.stats.misses == asked
    assert cache.stats.hit_rate > 0.5
    assert store.rows_fetched < asked / 2
    assert cache.stats.bytes_saved == cache.stats.hits * DIM * 4
    assert cache.stats.evictions > 0


def test_rows_seen_once_are_not_admitted() -> None:
    store = CountingStore()
    cache = RowCache(capacity_bytes=1 << 20, admit_after=2)
    cache.lookup("t", np.array([1, 2, 3], np.uint64), store.fetch)
    assert cache.bytes_used == 0
    cache.lookup("t", np.array([1], np.uint64), store.fetch)
    assert cache.bytes_used == DIM * 4
    cache.lookup("t", np.array([1, 1], np.uint64), store.fetch)
    assert cache.stats.hits == 2 and store.rows_fetched == 4


def test_packed_quantized_rows_are_cached_as_they_are(tmp_path: Path) -> None:
    # 264-byte FP8 rows of 256 values: a cache of 1000 such rows holds 1000, not 258.
    packed = np.random.default_rng(2).integers(0, 256, (ROWS, 264), dtype=np.uint8)
    cache = RowCache(capacity_bytes=1000 * 264, admit_after=1)
    keys = np.arange(1000, dtype=np.uint64)
    got = cache.lookup("q", keys, lambda k: packed[k.astype(np.int64)])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, packed[:1000])
    assert cache.bytes_used == 1000 * 264
    np.testing.assert_array_equal(cache.lookup("q", keys, lambda k: packed[:0]), packed[:1000])
    assert cache.stats.hits == 1000
    assert cache.stats.bytes_saved == 1000 * 264


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="capacity_bytes must be positive"):
        RowCache(0)
    with pytest.raises(ValueError, match="admit_after must be at least 1"):
        RowCache(10, admit_after=0)


def test_store_table_cache_follows_pushes(tmp_path: Path) -> None:
    with (
        daemon_thread(tmp_path / "data") as daemon,
        EngramClient(daemon.address) as client,
        EngramClient(daemon.address) as other,
    ):
        client.create_table("t", 100, 4, lr=1.0, init="zeros")
        cache = RowCache(capacity_bytes=1 << 20, admit_after=1, max_staleness=2)
        table = StoreEmbedding([100], 4, client, "t", cache=cache)
        keys = np.array([5, 6])
        np.testing.assert_array_equal(table.fetch(keys), np.zeros((2, 4)))
        # This table's own push invalidates the cached rows at once.
        table.push_gradient(torch.tensor([5]), torch.ones((1, 4)))
        table.wait_for_pushes()
        np.testing.assert_array_equal(table.fetch(keys)[0], -np.ones(4))
        # Another client's push shows within max_staleness steps.
        other.push("t", [6], np.ones((1, 4)))
        for _ in range(2):
            np.testing.assert_array_equal(table.fetch(keys)[1], np.zeros(4))
            cache.advance()
        cache.advance()
        np.testing.assert_array_equal(table.fetch(keys)[1], -np.ones(4))


def test_a_torch_slab_caches_like_the_host_one() -> None:
    host, device = CountingStore(), CountingStore()
    host_cache = RowCache(capacity_bytes=300 * DIM * 4)
    tensor_cache = device_row_cache(300 * DIM * 4, "cpu")
    rng = np.random.default_rng(3)
    for _ in range(20):
        keys = (rng.zipf(1.3, 1000) % ROWS).astype(np.uint64)
        from_host = host_cache.lookup("t", keys, host.fetch)
        from_tensor = tensor_cache.lookup("t", keys, device.fetch)
        assert isinstance(from_tensor, torch.Tensor)
        np.testing.assert_array_equal(from_tensor.numpy(), from_host)
        np.testing.assert_array_equal(from_host, TABLE[keys.astype(np.int64)])
    assert tensor_cache.stats == host_cache.stats
    assert device.rows_fetched == host.rows_fetched < 20 * 1000 / 2


@pytest.fixture
def client(tmp_path: Path) -> Iterator[EngramClient]:
    """A client of a daemon holding table t (100 x 4, zeros)."""
    with daemon_thread(tmp_path / "data") as daemon, EngramClient(daemon.address) as client:
        client.create_table("t", 100, 4, init="zeros")
        yield client


@pytest.fixture
def operator(client: EngramClient) -> Iterator[EngramClient]:
    """Another client of the same daemon, replacing its tables."""
    with EngramClient(client.shards[0].address) as operator:
        yield operator


def test_a_cache_forgets_a_table_created_anew(client: EngramClient, operator: EngramClient) -> None:
    # An engine serving through a cache while an operator imports new rows under the same
    # name: the old rows must not outlive the table they came from.
    cache = RowCache(capacity_bytes=1 << 20, admit_after=1)
    table = StoreEmbedding([100], 4, client, "t", cache=cache)
    hot, cold = np.array([5, 6]), np.array([7])
    np.testing.assert_array_equal(table.fetch(hot), np.zeros((2, 4)))
    operator.replace_rows("t", np.ones((100, 4), np.float32))
    # The next miss finds the table changed: the hot rows are read afresh with it.
    np.testing.assert_array_equal(table.fetch(np.concatenate([hot, cold])), np.ones((3, 4)))
    np.testing.assert_array_equal(table.fetch(hot), np.ones((2, 4)))


def test_a_cache_forgets_a_table_another_lookup_found_changed(
    client: EngramClient, operator: EngramClient
) -> None:
    cache = RowCache(capacity_bytes=1 << 20, admit_after=1)
    table = StoreEmbedding([100], 4, client, "t", cache=cache)
    np.testing.assert_array_equal(table.fetch(np.array([5])), np.zeros((1, 4)))
    operator.replace_rows("t", np.ones((100, 4), np.float32))
    # The client learns of the new table through a call of its own (outside the cache),
    # and the cache, all hits, asks no daemon: it must still drop the old rows.
    np.testing.assert_array_equal(client.lookup("t", [9]), np.ones((1, 4)))
    np.testing.assert_array_equal(table.fetch(np.array([5])), np.ones((1, 4)))


def test_a_table_created_anew_in_another_shape_is_refused(
    client: EngramClient, operator: EngramClient
) -> None:
    for cache in (None, RowCache(capacity_bytes=1 << 20, admit_after=1)):
        table = StoreEmbedding([100], 4, client, "t", cache=cache)
        table.fetch(np.array([5]))
        operator.drop_table("t")
        operator.create_table("t", 100, 8, init="zeros")
        with pytest.raises(ValueError, match="dim 8"):
            table.fetch(np.array([5, 6]))
        operator.drop_table("t")
        operator.create_table("t", 100, 4, init="zeros")


def test_a_cache_refuses_rows_of_another_width_while_it_holds_rows() -> None:
    cache = RowCache(capacity_bytes=1 << 20, admit_after=1)
    cache.lookup("a", np.array([1], np.uint64), lambda k: np.zeros((len(k), 4), np.float32))
    with pytest.raises(ValueError, match=r"table 'b'.*8 float32.*4 float32"):
        cache.lookup("b", np.array([1], np.uint64), lambda k: np.zeros((len(k), 8), np.float32))
    cache.invalidate("a", np.array([1], np.uint64))
    # Empty, it takes the new shape.
    got = cache.lookup("b", np.array([1], np.uint64), lambda k: np.ones((len(k), 8), np.float32))
    np.testing.assert_array_equal(got, np.ones((1, 8)))
    np.testing.assert_array_equal(
        cache.lookup("b", np.array([1], np.uint64), lambda k: k), np.ones((1, 8))
    )
