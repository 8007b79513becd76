"""The PyTorch parts on a GPU. Skipped, with the reason, on machines without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from daemon import daemon_thread

from client import EngramClient, NgramHashMapping
from client.config import EngramConfig
from client.engram_reader import EngramLayerReader
from client.torch import Engram, EngramRowReader, RowWriter, StoreEmbedding, device_row_cache
from client.torch.prefetch import Prefetcher
from store import Table

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_store_table_and_prefetcher_on_cuda(
    tmp_path: Path, tiny_engram: tuple[EngramConfig, NgramHashMapping]
) -> None:
    device = torch.device("cuda")
    config, mapping = tiny_engram
    sizes = mapping.table_sizes(1)
    with daemon_thread(tmp_path / "data") as daemon, EngramClient(daemon.address) as client:
        client.create_table("t", sum(sizes), config.embed_dim_per_head, lr=0.1)
        cache = device_row_cache(1 << 20, device, admit_after=1)
        table = StoreEmbedding(sizes, config.embed_dim_per_head, client, "t", cache=cache)
        engram = Engram(1, config, 16, 2, mapping, table).to(device)
        batches = [np.random.default_rng(i).integers(0, 8192, (2, 8)) for i in range(3)]
        for batch, rows in Prefetcher(batches, mapping, {1: table}, device=device):
            hash_ids, fetched = rows[1]
            assert fetched.is_cuda and hash_ids.is_cuda
            hidden = torch.randn(2, 8, 2, 16, device=device)
            out = engram(hidden, torch.from_numpy(batch).to(device), hash_ids, fetched)
            assert out.is_cuda
            out.sum().backward()
        table.wait_for_pushes()
        assert client.describe("t").step == 3
        assert cache.stats.hits > 0


def test_rows_written_into_a_device_tensor(tmp_path: Path) -> None:
    with daemon_thread(tmp_path / "data") as daemon, EngramClient(daemon.address) as client:
        client.create_table("q", 100, 64, dtype="fp8_e4m3", init_std=0.5)
        writer = RowWriter(client)
        keys = np.array([[1, 2, 3], [4, 5, 99]])
        for dtype in (torch.bfloat16, torch.float32):
            out = torch.empty((2, 3, 64), dtype=dtype, device="cuda")
            for _ in range(3):  # the pinned staging buffer is reused
                writer.lookup_into("q", keys, out)
            torch.cuda.synchronize()
            expected = client.lookup("q", keys)
            np.testing.assert_array_equal(
                out.float().cpu().numpy(), torch.from_numpy(expected).to(dtype).float().numpy()
            )


def test_an_engines_rows_read_into_a_device_tensor(tmp_path: Path) -> None:
    heads = [101, 103, 107]
    Table.create(tmp_path / "L1.engram", sum(heads), 256, dtype="fp8_e4m3")
    host = EngramRowReader(EngramLayerReader(tmp_path / "L1.engram", heads))
    ids = np.array([[1, 102, 205], [0, 101, 204]])
    mask = np.array([True, False])
    expected = host.lookup_into(ids, torch.empty(2, 3, 256, dtype=torch.bfloat16), mask)
    out = torch.empty(2, 3, 256, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):  # the pinned staging buffer is reused
        host.submit(ids, out, mask).wait()
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), expected)
