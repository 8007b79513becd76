"""Memory-mapped tables through the Python API."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from store import StoreError, Table, TableFormatError


def test_create_and_describe(tmp_path: Path) -> None:
    t = Table.create(tmp_path / "t.engram", 1000, 16, dtype="float16", std=0.5, seed=3)
    assert (t.num_rows, t.dim, t.dtype, t.init, t.std, t.seed) == (
        1000,
        16,
        "float16",
        "normal",
        0.5,
        3,
    )
    assert t.path == str(tmp_path / "t.engram")
    assert "num_rows=1000" in repr(t)
    assert t.written_count() == 0


def test_huge_table_is_created_in_constant_disk(tmp_path: Path) -> None:
    # 100 billion float32 parameters.
    t = Table.create(tmp_path / "huge.engram", 1_562_500_000, 64)
    assert t.file_len > 400e9
    assert os.stat(t.path).st_blocks * 512 < 1 << 20
    last = t.num_rows - 1
    rows = t.gather([0, last])
    assert rows.shape == (2, 64)
    assert 0.01 < rows.std() < 0.03


def test_virtual_rows_are_the_same_on_every_table_with_the_seed(tmp_path: Path) -> None:
    a = Table.create(tmp_path / "a", 500, 8, seed=11)
    b = Table.create(tmp_path / "b", 500, 8, seed=11)
    c = Table.create(tmp_path / "c", 500, 8, seed=12)
    keys = np.array([0, 17, 499])
    np.testing.assert_array_equal(a.gather(keys), b.gather(keys))
    assert not np.array_equal(a.gather(keys), c.gather(keys))
    zeros = Table.create(tmp_path / "z", 10, 4, init="zeros")
    np.testing.assert_array_equal(zeros.gather([1, 2]), np.zeros((2, 4), np.float32))


def test_gather_keeps_the_key_shape_and_accepts_key_types(tmp_path: Path) -> None:
    t = Table.create(tmp_path / "t", 100, 4)
    keys = np.arange(24).reshape(2, 3, 4)
    rows = t.gather(keys)
    assert rows.shape == (2, 3, 4, 4) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows.reshape(-1, 4), t.gather(keys.reshape(-1)))
    for kind in (np.uint64, np.int64, np.int32, np.uint16):
        np.testing.assert_array_equal(t.gather(keys.astype(kind)), rows)
    np.testing.assert_array_equal(t.gather(keys.tolist()), rows)
    assert t.gather([]).shape == (0, 4)


def test_gather_into_out_is_zero_copy(tmp_path: Path) -> None:
    t = Table.create(tmp_path / "t", 100, 4)
    out = np.empty((3, 4), np.float32)
    result = t.gather([1, 2, 3], out=out)
    assert result is out
    np.testing.assert_array_equal(out, t.gather([1, 2, 3]))
    with pytest.raises(ValueError, match="out has shape"):
        t.gather([1, 2], out=out)
    with pytest.raises(ValueError, match="C-contiguous"):
        t.gather([1, 2, 3], out=np.empty((4, 3), np.float32).T)


def test_gather_converts_to_each_dtype(tmp_path: Path) -> None:
    t = Table.create(tmp_path / "t", 10, 6, dtype="float32")
    values = np.array([[1.0, -2.5, 0.1, 1e-3, 3e4, 7.0]], np.float32)
    t.write_rows([4], values)
    np.testing.assert_array_equal(t.gather([4]), values)
    np.testing.assert_array_equal(t.gather([4], dtype="float16"), values.astype(np.float16))
    bf16 = t.gather([4], dtype="bfloat16")
    assert bf16.dtype == np.uint16
    # Round-to-nearest-even bfloat16 of each float32, computed independently from the bits.
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(bf16, rounded)
    with pytest.raises(ValueError, match="dtype must be one of"):
        t.gather([4], dtype="float64")


def test_half_precision_storage_rounds_like_numpy(tmp_path: Path) -> None:
    t = Table.create(tmp_path / "t", 10, 3, dtype="float16")
    values = np.array([[0.1, 1 / 3, 65504.0]], np.float32)
    t.write_rows([2], values)
    np.testing.assert_array_equal(t.gather([2]), values.astype(np.float16).astype(np.float32))


def test_scatter_add_sums_duplicates(tmp_path: Path) -> None:
    t = Table.create(tmp_path / "t", 50, 3, init="zeros")
    keys = np.array([5, 7, 5, 5])
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    t.scatter_add(keys, values)
    np.testing.assert_allclose(t.gather([5, 7]), [values[[0, 2, 3]].sum(0), values[1]])
    assert list(t.written([5, 6, 7])) == [True, False, True]
    t.write_rows([5, 5], [[1, 1, 1], [2, 2, 2]])
    np.testing.assert_array_equal(t.gather([5]), [[2, 2, 2]])


def test_bad_keys_raise_and_change_nothing(tmp_path: Path) -> None:
    t = Table.create(tmp_path / "t", 10, 2)
    before = t.gather(np.arange(10))
    with pytest.raises(IndexError, match=r"keys\[2\] = 10 is out of range for a table of 10"):
        t.scatter_add([1, 2, 10, 11], np.ones((4, 2)))
    with pytest.raises(IndexError, match=r"keys\[1\] = -1 is negative"):
        t.write_rows([3, -1], np.ones((2, 2)))
    out = np.full((2, 2), 7.0, np.float32)
    with pytest.raises(IndexError, match=r"keys\[1\] = 99"):
        t.gather([0, 99], out=out)
    np.testing.assert_array_equal(out, np.full((2, 2), 7.0))
    with pytest.raises(ValueError, match=r"values has shape \(3, 2\), expected 2 rows of dim 2"):
        t.write_rows([1, 2], np.ones((3, 2)))
    with pytest.raises(TypeError, match="keys must hold integers"):
        t.gather([1.5])
    np.testing.assert_array_equal(t.gather(np.arange(10)), before)
    assert t.written_count() == 0


def test_bad_create_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_rows must be a positive integer"):
        Table.create(tmp_path / "a", 0, 4)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        Table.create(tmp_path / "a", 4, -1)
    with pytest.raises(ValueError, match="dtype must be one of"):
        Table.create(tmp_path / "a", 4, 4, dtype="float64")
    with pytest.raises(ValueError, match="init must be 'normal' or 'zeros'"):
        Table.create(tmp_path / "a", 4, 4, init="uniform")
    with pytest.raises(ValueError, match="init std must be finite and non-negative"):
        Table.create(tmp_path / "a", 4, 4, std=float("nan"))
    with pytest.raises(ValueError, match="does not fit"):
        Table.create(tmp_path / "a", 2**62, 1024)
    assert not (tmp_path / "a").exists()
    Table.create(tmp_path / "b", 4, 4)
    with pytest.raises(FileExistsError):
        Table.create(tmp_path / "b", 4, 4)


def test_flushed_rows_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "t.engram"
    t = Table.create(path, 1000, 8, dtype="bfloat16", seed=4)
    keys = np.array([0, 999, 123])
    t.scatter_add(keys, np.full((3, 8), 0.25))
    expected = t.gather(np.arange(1000))
    t.flush()
    del t
    reopened = Table.open(path)
    assert (reopened.num_rows, reopened.dim, reopened.dtype, reopened.seed) == (
        1000,
        8,
        "bfloat16",
        4,
    )
    np.testing.assert_array_equal(reopened.gather(np.arange(1000)), expected)
    assert reopened.written_count() == 3


def test_corrupt_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.engram"
    Table.create(path, 100, 4)
    data = bytearray(path.read_bytes())
    data[17] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TableFormatError, match="checksum mismatch"):
        Table.open(path)
    assert issubclass(TableFormatError, StoreError)

    other = tmp_path / "other"
    other.write_bytes(b"not a table" * 1000)
    with pytest.raises(TableFormatError, match="bad magic"):
        Table.open(other)

    short = tmp_path / "short.engram"
    Table.create(short, 100, 4)
    os.truncate(short, 4096)
    with pytest.raises(TableFormatError, match="truncated"):
        Table.open(short)

    with pytest.raises(FileNotFoundError) as missing:
        Table.open(tmp_path / "missing")
    # As Python's own OSErrors read: the file name as a string, no "(os error 2)" twice.
    assert missing.value.filename == str(tmp_path / "missing")
    assert str(missing.value) == f"[Errno 2] No such file or directory: '{tmp_path / 'missing'}'"
