"""An engine's in-process read path (client/engram_reader.py, client.torch.EngramRowReader):
FP8 rows of a layer's table file into bfloat16 `out[T, heads, 256]`, for the whole layer,
a tensor-parallel rank's heads (vLLM's split) or row range (DeepSeek's, zero rows for ids it
does not hold), per-head local ids, masked positions, both E8M0 rules, and submitted ahead
then waited on, in process and through daemons; checked against the official code's lookup
written in torch here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from daemon import daemon_thread

from client import DaemonLayerReader, EngramClient, EngramLayerReader
from client.torch import EngramRowReader
from store import Table
from store.spec import TableSpec

HEADS, DIM = [101, 103, 107, 109, 113, 127], 256
ROWS = sum(HEADS)
OFFSETS = np.concatenate([[0], np.cumsum(HEADS)])


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A layer's FP8 table (codes then one E8M0 byte per 32 values, some of them 0), and
    the packed rows written."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (ROWS, DIM), dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0  # no NaN codes
    scales = rng.integers(110, 135, (ROWS, DIM // 32), dtype=np.uint8)
    scales[rng.random(scales.shape) < 0.05] = 0
    packed = np.concatenate([codes, scales], axis=1)
    path = tmp_path_factory.mktemp("layer") / "layer.engram"
    table = Table.create(path, ROWS, DIM, dtype="fp8_e4m3")
    table.write_packed(np.arange(ROWS), packed)
    del table
    return path, packed


def official(
    packed: np.ndarray, ids: np.ndarray, mask: np.ndarray, zero_rule: bool
) -> torch.Tensor:
    """The official code's lookup on CPU: F.embedding of the FP8 weight and of the scale,
    dequantized in float32, cast to bfloat16, masked."""
    weight = torch.from_numpy(packed[:, :DIM].copy()).view(torch.float8_e4m3fn)
    scale = torch.from_numpy(packed[:, DIM:].copy())
    index = torch.from_numpy(ids)
    values = torch.nn.functional.embedding(index, weight.view(torch.uint8)).view(
        torch.float8_e4m3fn
    )
    scales = torch.nn.functional.embedding(index, scale)
    factor = scales.view(torch.float8_e8m0fnu).float()
    if zero_rule:
        factor = torch.where(scales == 0, torch.zeros_like(factor), factor)
    rows = values.float().reshape(*ids.shape, DIM // 32, 32) * factor.unsqueeze(-1)
    out = rows.reshape(*ids.shape, DIM).to(torch.bfloat16)
    return out * torch.from_numpy(mask)[:, None, None]


def global_ids(tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    local = np.stack([rng.integers(0, n, tokens) for n in HEADS], axis=1)
    mask = rng.random(tokens) > 0.2
    return local + OFFSETS[:-1], mask


@pytest.mark.parametrize("rule", ["torch", "zero"])
def test_a_whole_layer_reads_as_the_official_lookup(
    layer: tuple[Path, np.ndarray], rule: str
) -> None:
    path, packed = layer
    ids, mask = global_ids(300, 1)
    reader = EngramLayerReader(path, HEADS, e8m0=rule)
    out = torch.empty(300, len(HEADS), DIM, dtype=torch.bfloat16)
    EngramRowReader(reader).lookup_into(ids, out, mask)
    expected = official(packed, ids, mask, zero_rule=rule == "zero")
    # Equal as values: zero rows and zero-scaled groups read as +0, which the official
    # product may give as -0.
    assert torch.equal(out, expected)
    if rule == "torch":
        zero_scaled = packed[ids, DIM:] == 0
        assert zero_scaled.any(), "the data has scale bytes of 0 to tell the rules apart"


def test_a_rank_reads_its_heads_or_its_row_range(
    layer: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    _, packed = layer
    ids, mask = global_ids(200, 2)
    whole = official(packed, ids, mask, zero_rule=False)
    # vLLM's split: this rank holds heads 2 and 3, in a file of those heads' rows only.
    first, stop = OFFSETS[2], OFFSETS[4]
    shard = Table.create(tmp_path / "heads.engram", stop - first, DIM, dtype="fp8_e4m3")
    shard.write_packed(np.arange(stop - first), packed[first:stop])
    del shard
    by_heads = EngramLayerReader(tmp_path / "heads.engram", HEADS, heads=range(2, 4))
    out = np.empty((200, 2, DIM), np.uint16)
    by_heads.lookup_into(ids, out, mask)
    assert torch.equal(torch.from_numpy(out.view(np.int16)).view(torch.bfloat16), whole[:, 2:4])
    # Mooncake's per-head local ids address the same rows.
    local = EngramLayerReader(tmp_path / "heads.engram", HEADS, heads=range(2, 4), local_ids=True)
    assert np.array_equal(local.lookup_into(ids - OFFSETS[:-1], np.empty_like(out), mask), out)
    # DeepSeek's split: rows [start, stop) of the layer; ids outside read as zero rows.
    start, end = 150, 400
    ranged = Table.create(tmp_path / "rows.engram", end - start, DIM, dtype="fp8_e4m3")
    ranged.write_packed(np.arange(end - start), packed[start:end])
    del ranged
    by_rows = EngramLayerReader(tmp_path / "rows.engram", HEADS, rows=(start, end))
    got = torch.empty(200, len(HEADS), DIM, dtype=torch.bfloat16)
    EngramRowReader(by_rows).lookup_into(ids, got, mask)
    held = torch.from_numpy((ids >= start) & (ids < end))
    assert torch.equal(got[held], whole[held])
    assert not got[~held].any(), "ids the rank does not hold read as zero rows"


def test_a_submitted_read_hides_behind_compute_and_gives_the_same_rows(
    layer: tuple[Path, np.ndarray],
) -> None:
    path, packed = layer
    ids, mask = global_ids(4096, 3)
    rows = EngramRowReader(EngramLayerReader(path, HEADS))
    out = torch.empty(4096, len(HEADS), DIM, dtype=torch.bfloat16)
    handle = rows.submit(ids, out, mask)
    torch.ones(256, 256) @ torch.ones(256, 256)  # the model's work meanwhile
    assert handle.wait() is out
    assert torch.equal(out, official(packed, ids, mask, False))


def test_bad_arguments_are_refused_naming_them(layer: tuple[Path, np.ndarray]) -> None:
    path, _ = layer
    with pytest.raises(ValueError, match="heads= or rows="):
        EngramLayerReader(path, HEADS, heads=range(1), rows=(0, 1))
    with pytest.raises(ValueError, match="e8m0 must be one of"):
        EngramLayerReader(path, HEADS, e8m0="vllm")
    with pytest.raises(ValueError, match="holds 660 rows; these heads or rows need 101"):
        EngramLayerReader(path, HEADS, heads=range(1))
    reader = EngramLayerReader(path, HEADS)
    with pytest.raises(ValueError, match=r"ids must be integers of shape \[T, 6\]"):
        reader.lookup_into(np.zeros((2, 5), np.int64), np.empty((2, 6, DIM), np.uint16))
    with pytest.raises(ValueError, match="out must be"):
        reader.lookup_into(np.zeros((2, 6), np.int64), np.empty((2, 5, DIM), np.uint16))


def test_a_daemon_serves_an_engine_the_same_reads(
    layer: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """The layer imported into a table sharded over two daemons: every read of the tests
    above, through `DaemonLayerReader`, gives the rows the in-process reader gives."""
    path, packed = layer
    ids, mask = global_ids(300, 5)
    with (
        daemon_thread(tmp_path / "a") as a,
        daemon_thread(tmp_path / "b") as b,
        EngramClient([a.address, b.address]) as client,
    ):
        client.create(TableSpec("layer1", ROWS, DIM, dtype="fp8_e4m3"), importing=True)
        client.write_rows("layer1", 0, packed, "fp8_e4m3")
        client.finish_import("layer1")
        for rule in ("torch", "zero"):
            got = torch.empty(300, len(HEADS), DIM, dtype=torch.bfloat16)
            reader = DaemonLayerReader(client, "layer1", HEADS, e8m0=rule)
            EngramRowReader(reader).lookup_into(ids, got, mask)
            assert torch.equal(got, official(packed, ids, mask, zero_rule=rule == "zero"))
        whole = official(packed, ids, mask, zero_rule=False)

        heads = DaemonLayerReader(client, "layer1", HEADS, heads=range(2, 4))
        by_heads = EngramRowReader(heads).lookup_into(
            ids, torch.empty(300, 2, DIM, dtype=torch.bfloat16), mask
        )
        assert torch.equal(by_heads, whole[:, 2:4])
        local = DaemonLayerReader(client, "layer1", HEADS, heads=range(2, 4), local_ids=True)
        by_local = local.lookup_into(ids - OFFSETS[:-1], np.empty((300, 2, DIM), np.uint16), mask)
        assert np.array_equal(by_local, by_heads.view(torch.int16).numpy().view(np.uint16))

        start, end = 150, 400
        ranged = DaemonLayerReader(client, "layer1", HEADS, rows=(start, end))
        by_rows = EngramRowReader(ranged).lookup_into(
            ids, torch.empty(300, len(HEADS), DIM, dtype=torch.bfloat16), mask
        )
        held = torch.from_numpy((ids >= start) & (ids < end))
        assert torch.equal(by_rows[held], whole[held]) and not by_rows[~held].any()

        # float32 rows, submitted ahead, as the in-process reader gives them.
        in_process = EngramLayerReader(path, HEADS, e8m0="zero")
        expected = in_process.lookup_into(ids, np.empty((300, len(HEADS), DIM), np.float32), mask)
        through = DaemonLayerReader(client, "layer1", HEADS, e8m0="zero")
        out = np.empty_like(expected)
        assert through.submit(ids, out, mask).result() is out
        assert np.array_equal(out, expected)
        # Every position masked: nothing to fetch, every row zero.
        none = through.lookup_into(ids, np.ones_like(expected), np.zeros(300, bool))
        assert not none.any()

        with pytest.raises(ValueError, match="table 'layer1' holds 660 rows; a layer of"):
            DaemonLayerReader(client, "layer1", HEADS[:-1])
        with pytest.raises(ValueError, match=r"heads must be a non-empty range within 0\.\.6"):
            DaemonLayerReader(client, "layer1", HEADS, heads=range(5, 8))
