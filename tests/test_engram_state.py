"""The Engram layer's state and dtype with rows in the store: its state_dict has the
reference's keys (`multi_head_embedding.offsets` and `.embedding.weight` included) and loads
strictly both ways between rows in process and rows in the store, the store's rows going to
and from the daemon; a bfloat16 layer gets bfloat16 rows, over the wire too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from daemon import daemon_thread

from client import EngramClient
from client.config import EngramConfig
from client.engram_tables import create_engram_tables, hash_mapping
from client.torch import Engram, LocalEmbedding, Prefetcher, StoreEmbedding, TrainPipeline

CONFIG = EngramConfig.from_json(str(REPO_ROOT / "examples" / "tiny_engram_lm.engram.json"))
MAPPING = hash_mapping(CONFIG)
HIDDEN, HC, LAYER = 16, 2, 0


@pytest.fixture
def client(tmp_path: Path) -> Iterator[EngramClient]:
    with daemon_thread(tmp_path / "data") as daemon, EngramClient(daemon.address) as c:
        create_engram_tables(c, CONFIG, "L", optimizer="adam", lr=1e-2)
        yield c


def local_engram(seed: int) -> Engram:
    torch.manual_seed(seed)
    embedding = LocalEmbedding(MAPPING.table_sizes(LAYER), CONFIG.embed_dim_per_head)
    return Engram(LAYER, CONFIG, HIDDEN, HC, MAPPING, embedding)


def store_engram(client: EngramClient, seed: int) -> Engram:
    torch.manual_seed(seed)
    embedding = StoreEmbedding(
        MAPPING.table_sizes(LAYER), CONFIG.embed_dim_per_head, client, f"L{LAYER}"
    )
    return Engram(LAYER, CONFIG, HIDDEN, HC, MAPPING, embedding)


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_local_layers_state_loads_strictly_into_the_store_and_back(
    client: EngramClient,
) -> None:
    local = local_engram(seed=1)
    state = local.state_dict()
    assert "multi_head_embedding.offsets" in state
    assert "multi_head_embedding.embedding.weight" in state
    in_store = store_engram(client, seed=2)
    in_store.load_state_dict(state, strict=True)
    # The rows went to the daemon, and its table starts training afresh.
    weight = state["multi_head_embedding.embedding.weight"]
    keys = np.array([0, 7, weight.shape[0] - 1], np.uint64)
    np.testing.assert_array_equal(client.lookup(f"L{LAYER}", keys), weight.numpy()[keys])
    assert client.describe(f"L{LAYER}").step == 0
    assert_same_state(in_store.state_dict(), state)
    back = local_engram(seed=3)
    back.load_state_dict(in_store.state_dict(), strict=True)
    assert_same_state(back.state_dict(), state)


def test_a_state_of_another_shape_is_refused(client: EngramClient) -> None:
    state = local_engram(seed=1).state_dict()
    weight = state["multi_head_embedding.embedding.weight"]
    state["multi_head_embedding.embedding.weight"] = weight[:-1]
    with pytest.raises(RuntimeError, match="size mismatch for multi_head_embedding"):
        store_engram(client, seed=2).load_state_dict(state)
    state.pop("multi_head_embedding.embedding.weight")
    with pytest.raises(RuntimeError, match="Missing key"):
        store_engram(client, seed=2).load_state_dict(state)


@pytest.mark.parametrize(("rows", "dim"), [(None, CONFIG.embed_dim_per_head + 1), (-1, None)])
def test_a_table_the_heads_do_not_fit_is_refused_at_the_first_read(
    client: EngramClient, rows: int | None, dim: int | None
) -> None:
    # A table left by another config: a dim that differs failed as a shape error inside the
    # layer, too few rows as a key out of range at some later batch.
    sizes = MAPPING.table_sizes(LAYER)
    needed = int(sum(sizes))
    num_rows = needed + rows if rows is not None else needed
    client.create_table("other", num_rows, dim or CONFIG.embed_dim_per_head)
    embedding = StoreEmbedding(sizes, CONFIG.embed_dim_per_head, client, "other")
    with pytest.raises(ValueError, match=f"table 'other' holds {num_rows} rows of dim"):
        embedding(torch.zeros((1, 2, len(sizes)), dtype=torch.int64))
    # Rows read ahead with the pushes do not pass through the embedding's own reads.
    embedding = StoreEmbedding(sizes, CONFIG.embed_dim_per_head, client, "other")
    batches = [np.zeros((1, 4), np.int64)]
    with pytest.raises(ValueError, match=f"table 'other' holds {num_rows} rows of dim"):
        list(Prefetcher(batches, MAPPING, {LAYER: embedding}))
    assert client.describe("other").step == 0


def test_a_store_embedding_refuses_arguments_that_could_not_work(client: EngramClient) -> None:
    sizes, dim = MAPPING.table_sizes(LAYER), CONFIG.embed_dim_per_head
    # No push slot made the first backward pass wait for one for good.
    with pytest.raises(ValueError, match="max_pushes_in_flight must be an integer in 1"):
        StoreEmbedding(sizes, dim, client, f"L{LAYER}", max_pushes_in_flight=0)
    with pytest.raises(TypeError, match="client must be an EngramClient, got None"):
        StoreEmbedding(sizes, dim, None, f"L{LAYER}")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="table must be a string, got 0"):
        StoreEmbedding(sizes, dim, client, 0)  # type: ignore[arg-type]


def test_a_bfloat16_layer_reads_bfloat16_rows(
    client: EngramClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    engram = store_engram(client, seed=1).to(torch.bfloat16)
    asked: list[str] = []
    lookup = client.lookup

    def recording(table: str, keys: Any, dtype: str = "float32", out: Any = None) -> Any:
        asked.append(dtype)
        return lookup(table, keys, dtype, out)

    monkeypatch.setattr(client, "lookup", recording)
    ids = torch.randint(0, 5000, (2, 6))
    hidden = torch.randn(2, 6, HC, HIDDEN, dtype=torch.bfloat16, requires_grad=True)
    out = engram(hidden, ids)
    assert out.dtype == torch.bfloat16
    assert asked == ["bfloat16"]
    embedding = engram.multi_head_embedding
    assert isinstance(embedding, StoreEmbedding)
    keys = MAPPING.hash(ids.numpy())[LAYER] + embedding.offsets.numpy()
    rows = embedding(torch.from_numpy(MAPPING.hash(ids.numpy())[LAYER]))
    stored = torch.from_numpy(lookup(f"L{LAYER}", keys.astype(np.uint64)))
    torch.testing.assert_close(rows, stored.to(torch.bfloat16), rtol=0, atol=0)
    out.float().sum().backward()
    embedding.wait_for_pushes()
    assert client.describe(f"L{LAYER}").step == 1


def test_a_bfloat16_layer_reads_ahead_in_bfloat16(
    client: EngramClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a prefetcher reading rows with the pushes, those rows travel as bfloat16 too,
    and a step sees the rows the steps before it left."""
    pipeline = TrainPipeline(client)
    embedding = StoreEmbedding(
        MAPPING.table_sizes(LAYER),
        CONFIG.embed_dim_per_head,
        client,
        f"L{LAYER}",
        pipeline=pipeline,
    )
    torch.manual_seed(1)
    engram = Engram(LAYER, CONFIG, HIDDEN, HC, MAPPING, embedding).to(torch.bfloat16)
    asked: list[str] = []
    batch = client.batch

    def recording(*args: Any, **kwargs: Any) -> Any:
        lookups = kwargs.get("lookups", args[1] if len(args) > 1 else ())
        if lookups:
            asked.append(kwargs.get("lookup_dtype", "float32"))
        return batch(*args, **kwargs)

    monkeypatch.setattr(client, "batch", recording)
    windows = [torch.randint(0, 5000, (2, 6)).numpy() for _ in range(4)]
    prefetcher = Prefetcher(windows, MAPPING, {LAYER: embedding}, depth=2)
    try:
        for ids, rows in prefetcher:
            hash_ids, layer_rows = rows[LAYER]
            assert layer_rows.dtype == torch.bfloat16
            keys = hash_ids.numpy() + embedding.offsets.numpy()
            stored = torch.from_numpy(client.lookup(f"L{LAYER}", keys.astype(np.uint64)))
            torch.testing.assert_close(layer_rows, stored.to(torch.bfloat16), rtol=0, atol=0)
            hidden = torch.randn(2, 6, HC, HIDDEN, dtype=torch.bfloat16)
            out = engram(hidden, torch.from_numpy(ids), hash_ids, layer_rows)
            out.float().sum().backward()
    finally:
        prefetcher.close()
        pipeline.close()
    assert asked and set(asked) == {"bfloat16"}
    assert client.describe(f"L{LAYER}").step == 4
