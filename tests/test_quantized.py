"""Quantized tables (fp8_e4m3 with E8M0 scales, int8 with float32 scales): exact
dequantization against torch over every code point and scale, the reference quantizer's
rounding, packed reads, and the refusals that keep serving tables read-only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from daemon import daemon_thread

from client import EngramClient, InvalidRequestError
from client.torch import RowWriter
from store import Table

GROUP = 32


def e8m0(codes: np.ndarray) -> torch.Tensor:
    """2^(code - 127) as float32 (NaN for 255), exactly."""
    exponents = np.minimum(codes.astype(np.int32), 254) - 127
    scales = np.ldexp(np.float32(1), exponents).astype(np.float32)
    scales[codes == 255] = np.nan
    return torch.from_numpy(scales)


def fp8_reference(codes: np.ndarray, scale_codes: np.ndarray) -> torch.Tensor:
    """torch's float8_e4m3fn -> float32 conversion times each group's 2^(scale - 127)."""
    values = torch.from_numpy(codes).view(torch.float8_e4m3fn).float()
    rows, dim = codes.shape
    grouped = values.reshape(rows, dim // GROUP, GROUP)
    return (grouped * e8m0(scale_codes)[:, :, None]).reshape(rows, dim)


def same_bits(got: torch.Tensor, expected: torch.Tensor) -> None:
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(got), nan)
    if got.dtype == torch.float32:
        got_bits, expected_bits = got.view(torch.int32), expected.view(torch.int32)
    else:
        got_bits, expected_bits = got.view(torch.int16), expected.view(torch.int16)
    assert torch.equal(got_bits[~nan], expected_bits[~nan])


@pytest.fixture
def every_fp8_code_and_scale(tmp_path: Path) -> tuple[Table, np.ndarray, np.ndarray]:
    """Row s holds all 256 codes with scale code s in each of its 8 groups."""
    table = Table.create(tmp_path / "fp8", 256, 256, dtype="fp8_e4m3", init="zeros")
    codes = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    scales = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 256 // GROUP, axis=1)
    table.write_packed(np.arange(256), np.concatenate([codes, scales], axis=1))
    return table, codes, scales


def test_fp8_rows_dequantize_exactly_at_every_code_and_scale(
    every_fp8_code_and_scale: tuple[Table, np.ndarray, np.ndarray],
) -> None:
    table, codes, scales = every_fp8_code_and_scale
    expected = fp8_reference(codes, scales)
    got = torch.from_numpy(table.gather(np.arange(256)))
    same_bits(got, expected)
    # Half-precision reads round the exact float32 values once, to nearest even.
    bf16 = torch.from_numpy(table.gather(np.arange(256), dtype="bfloat16")).view(torch.bfloat16)
    same_bits(bf16, expected.to(torch.bfloat16))
    f16 = torch.from_numpy(table.gather(np.arange(256), dtype="float16")).view(torch.float16)
    same_bits(f16, expected.to(torch.float16))


def test_packed_reads_return_the_stored_bytes(
    every_fp8_code_and_scale: tuple[Table, np.ndarray, np.ndarray],
) -> None:
    table, codes, scales = every_fp8_code_and_scale
    keys = np.array([[5, 255], [0, 5]])
    packed = table.gather(keys, dtype="fp8_e4m3")
    assert packed.dtype == np.uint8 and packed.shape == (2, 2, 256 + 8)
    stored = np.concatenate([codes, scales], axis=1)
    np.testing.assert_array_equal(packed, stored[keys])
    with pytest.raises(ValueError, match="not as int8"):
        table.gather([0], dtype="int8")


def test_int8_rows_dequantize_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = Table.create(tmp_path / "int8", 64, 256, dtype="int8", init="zeros")
    codes = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    # Scales of every magnitude, subnormal to huge, and both signs.
    scales = (rng.standard_normal((64, 8)) * 10.0 ** rng.integers(-40, 38, (64, 8))).astype(
        np.float32
    )
    scales[0, 0] = np.float32(1e-45)
    table.write_packed(np.arange(64), np.concatenate([codes, scales.view(np.uint8)], axis=1))
    values = torch.from_numpy(codes).view(torch.int8).float().reshape(64, 8, GROUP)
    expected = (values * torch.from_numpy(scales)[:, :, None]).reshape(64, 256)
    same_bits(torch.from_numpy(table.gather(np.arange(64))), expected)


def reference_fp8_quantize(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The UE8M0 quantizer: scale 2^ceil(log2(amax / 448)) per group of 32, values / scale
    rounded to float8_e4m3fn by torch; ceil(log2) taken exactly from the quotient's bits."""
    groups = values.reshape(values.shape[0], -1, GROUP)
    quotient = (groups.abs().amax(dim=-1) / 448.0).numpy()
    mantissa, exponent = np.frexp(quotient)  # quotient = mantissa * 2^exponent, 0.5 <= m < 1
    ceiling = np.where(mantissa == 0.5, exponent - 1, exponent)
    scale_codes = np.clip(ceiling + 127, 0, 254).astype(np.uint8)
    scale_codes[quotient == 0] = 0
    scaled = groups / e8m0(scale_codes)[:, :, None]
    codes = scaled.to(torch.float8_e4m3fn).view(torch.uint8).reshape(values.shape)
    return codes.numpy(), scale_codes


def test_float_rows_quantize_as_the_reference_quantizer_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = (rng.standard_normal((50, 128)) * 10.0 ** rng.integers(-30, 30, (50, 1))).astype(
        np.float32
    )
    values[0, :GROUP] = 0.0
    values[1, :GROUP] = 448.0 * 2.0**-3  # a quotient exactly a power of two
    table = Table.create(tmp_path / "f32", 50, 128, init="zeros")
    table.write_rows(np.arange(50), values)
    codes, scales = reference_fp8_quantize(torch.from_numpy(values))
    packed = table.gather(np.arange(50), dtype="fp8_e4m3")
    np.testing.assert_array_equal(packed[:, :128], codes)
    np.testing.assert_array_equal(packed[:, 128:], scales)
    assert scales[1, 0] == 127 - 3
    # Read back through an fp8 table: the rows the reference's codes and scales mean.
    served = Table.create(tmp_path / "fp8", 50, 128, dtype="fp8_e4m3", init="zeros")
    served.write_packed(np.arange(50), packed)
    same_bits(torch.from_numpy(served.gather(np.arange(50))), fp8_reference(codes, scales))


def test_quantized_tables_need_whole_groups(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        Table.create(tmp_path / "t", 10, 48, dtype="fp8_e4m3")


def test_a_daemon_serves_quantized_rows_and_refuses_pushes(tmp_path: Path) -> None:
    keys = np.array([[3, 7], [7, 0]])
    with (
        daemon_thread(tmp_path / "data") as d,
        EngramClient(d.address, shared_memory=False) as messages,
        EngramClient(d.address, shared_memory=True) as shared,
    ):
        info = messages.create_table("q", 100, 64, dtype="fp8_e4m3", init_std=0.5)
        assert info.dtype == "fp8_e4m3"
        for client in (messages, shared):
            packed = client.lookup("q", keys, dtype="fp8_e4m3")
            assert packed.dtype == np.uint8 and packed.shape == (2, 2, 64 + 2)
            rows = client.lookup("q", keys)
            assert rows.shape == (2, 2, 64)
            flat = packed.reshape(-1, 66)
            expected = fp8_reference(flat[:, :64].copy(), flat[:, 64:].copy())
            same_bits(torch.from_numpy(rows.reshape(-1, 64)), expected)
            with pytest.raises(InvalidRequestError, match="for serving: pushes are refused"):
                client.push("q", [3], np.ones((1, 64), np.float32))
            with pytest.raises(InvalidRequestError, match="not as int8"):
                client.lookup("q", keys, dtype="int8")
        result = messages.batch(lookups=[("q", keys)])
        np.testing.assert_array_equal(result.lookups[0], rows)
        with pytest.raises(InvalidRequestError, match="multiple of 32"):
            messages.create_table("odd", 100, 48, dtype="int8")
        assert messages.describe("q").step == 0


def test_rows_are_written_into_an_engines_tensors(tmp_path: Path) -> None:
    keys = np.array([[1, 2, 3], [4, 5, 99]])
    with daemon_thread(tmp_path / "data") as d, EngramClient(d.address) as client:
        client.create_table("q", 100, 64, dtype="fp8_e4m3", init_std=0.5)
        writer = RowWriter(client)
        expected = client.lookup("q", keys)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            out = torch.full((2, 3, 64), 7.0, dtype=dtype)
            assert writer.lookup_into("q", keys, out) is out
            same_bits(out, torch.from_numpy(expected).to(dtype))
        packed = torch.zeros((2, 3, 66), dtype=torch.uint8)
        writer.lookup_into("q", keys, packed, dtype="fp8_e4m3")
        np.testing.assert_array_equal(packed.numpy(), client.lookup("q", keys, dtype="fp8_e4m3"))
        with pytest.raises(ValueError, match="needs dtype="):
            writer.lookup_into("q", keys, packed)
        with pytest.raises(ValueError, match="out must be a writeable C-contiguous"):
            writer.lookup_into("q", keys, torch.empty((2, 3, 32)))
        with pytest.raises(ValueError, match="CPU or a CUDA device, not meta"):
            writer.lookup_into("q", keys, torch.empty((2, 3, 64), device="meta"))
        # A numpy array was told it "needs dtype=".
        with pytest.raises(TypeError, match=r"out must be a torch\.Tensor, got ndarray"):
            writer.lookup_into("q", keys, np.zeros((2, 3, 64), np.float32))  # type: ignore[arg-type]
