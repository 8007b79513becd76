"""The PyTorch parts on a GPU. Skipped, with the reason, on machines without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from daemon import daemon_thread

from client import EngramClient, NgramHashMapping
from client.config import EngramConfig
from client.torch import Engram, StoreEmbedding, device_row_cache
from client.torch.prefetch import Prefetcher

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
