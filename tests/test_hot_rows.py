"""The in-process hot-row cache (`store.HotRowCache`): cached gathers answer exactly as the
table does (FP8 rows dequantized to bfloat16 included), hot rows get in and stay, writes
through the table are never served stale, and bad arguments are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from store import HotRowCache, Table


def fp8_table(path: Path, rows: int) -> Table:
    """FP8 rows quantized from normal values (what a trained table's look like)."""
    source = Table.create(path.with_suffix(".f32"), rows, 256, init="normal", std=0.02)
    table = Table.create(path, rows, 256, dtype="fp8_e4m3", init="zeros")
    keys = np.arange(rows)
    table.write_packed(keys, source.gather(keys, dtype="fp8_e4m3"))
    return table


def zipf_keys(rng: np.random.Generator, count: int, rows: int) -> np.ndarray:
    return (rng.zipf(1.2, count) - 1) % rows


def test_cached_reads_equal_the_tables_and_the_hot_rows_hit(tmp_path: Path) -> None:
    table = fp8_table(tmp_path / "t", 20_000)
    cache = HotRowCache(200 * 264)
    rng = np.random.default_rng(0)
    for _ in range(30):
        keys = zipf_keys(rng, 4096, 20_000)
        cached = table.gather(keys, dtype="bfloat16", cache=cache)
        np.testing.assert_array_equal(cached, table.gather(keys, dtype="bfloat16"))
        packed = table.gather(keys[:100], dtype="fp8_e4m3", cache=cache)
        np.testing.assert_array_equal(packed, table.gather(keys[:100], dtype="fp8_e4m3"))
    stats = cache.stats
    assert stats.hits + stats.misses == 30 * (4096 + 100)
    # 1% of the rows under a Zipf(1.2) stream take far more than 1% of the reads.
    assert stats.hit_rate > 0.3, stats
    assert 0 < cache.bytes_used <= cache.capacity_bytes


def test_cached_fp8_reads_are_exact_at_every_code_and_scale(tmp_path: Path) -> None:
    table = Table.create(tmp_path / "fp8", 256, 256, dtype="fp8_e4m3", init="zeros")
    codes = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    scales = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 8, axis=1)
    table.write_packed(np.arange(256), np.concatenate([codes, scales], axis=1))
    cache = HotRowCache(1 << 20, admit_after=1)
    keys = np.arange(256)
    for key in keys:  # every row admitted (a gather admits a few of its misses)
        table.gather([key], dtype="bfloat16", cache=cache)
    before = cache.stats.hits
    got = table.gather(keys, dtype="bfloat16", cache=cache)
    assert cache.stats.hits - before == 256
    exponents = np.minimum(scales.astype(np.int32), 254) - 127
    scale_values = torch.from_numpy(np.ldexp(np.float32(1), exponents).astype(np.float32))
    scale_values[torch.from_numpy(scales == 255)] = float("nan")
    values = torch.from_numpy(codes).view(torch.float8_e4m3fn).float().reshape(256, 8, 32)
    expected = (values * scale_values[:, :, None]).reshape(256, 256).to(torch.bfloat16)
    got_bits = torch.from_numpy(got).view(torch.int16)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(torch.from_numpy(got).view(torch.bfloat16)), nan)
    assert torch.equal(got_bits[~nan], expected.view(torch.int16)[~nan])


def test_writes_through_the_table_are_never_served_stale(tmp_path: Path) -> None:
    table = Table.create(tmp_path / "t", 100, 4)
    table.write_rows(np.arange(100), np.ones((100, 4), np.float32))
    cache = HotRowCache(1 << 16, admit_after=1)
    for _ in range(2):
        table.gather([7, 8], cache=cache)
    assert cache.stats.hits == 2
    table.write_rows([7], np.full((1, 4), 3.0, np.float32))
    np.testing.assert_array_equal(table.gather([7], cache=cache), np.full((1, 4), 3.0))


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        HotRowCache(0)
    with pytest.raises(ValueError, match="admit_after"):
        HotRowCache(1024, admit_after=0)
    with pytest.raises(ValueError, match="admit_after"):
        HotRowCache(1024, admit_after=256)
    first = Table.create(tmp_path / "a", 10, 4)
    second = Table.create(tmp_path / "b", 10, 4)
    with pytest.raises(TypeError, match="cache"):
        first.gather([1], cache="hot")  # type: ignore[arg-type]
    cache = HotRowCache(1024)
    with pytest.raises(IndexError, match="out of range"):
        first.gather([1, 10], cache=cache)
    assert cache.stats.hits + cache.stats.misses == 0
    first.gather([1], cache=cache)
    with pytest.raises(ValueError, match="another table"):
        second.gather([1], cache=cache)
    cache.clear()
    np.testing.assert_array_equal(second.gather([1], cache=cache), second.gather([1]))
