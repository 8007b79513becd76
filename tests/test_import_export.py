"""Import from and export to safetensors checkpoints, checked with the reference
implementation of the format (the `safetensors` package) and bit for bit."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from daemon import daemon_thread
from safetensors.torch import load_file, save_file

from client import (
    EngramClient,
    PreconditionFailedError,
    TableExistsError,
    TableNotFoundError,
)
from client.imports import (
    MappingError,
    export_tables,
    import_checkpoint,
    load_mapping,
    mapping_rules,
    plan_import,
)
from client.tensor_files import Checkpoint, TensorFileError
from engram_cli import EXIT_FAILURE, main
from store.spec import TableSpec

DEMO_MAPPING = REPO_ROOT / "examples" / "mappings" / "engram_demo_v1.json"
DIM = 64


def reference_demo_state(rows: int) -> dict[str, torch.Tensor]:
    """Tensors named as the reference demo's model names them, plus dense weights."""
    generator = torch.Generator().manual_seed(0)
    return {
        f"{layer}.engram.multi_head_embedding.embedding.weight": torch.randn(
            rows + layer, DIM, generator=generator
        )
        for layer in (1, 15)
    } | {"1.engram.value_proj.weight": torch.randn(8, 8, generator=generator)}


def bits(tensor: torch.Tensor) -> np.ndarray:
    return tensor.contiguous().view(torch.uint8).numpy()


@pytest.fixture
def daemons(tmp_path: Path):  # type: ignore[no-untyped-def]
    with daemon_thread(tmp_path / "a") as a, daemon_thread(tmp_path / "b") as b:
        yield a.address, b.address


def test_a_reference_demo_state_dict_round_trips_bit_for_bit(
    tmp_path: Path, daemons: tuple[str, str]
) -> None:
    state = reference_demo_state(1000)
    save_file(state, tmp_path / "model.safetensors")
    seen: list[tuple[str, int, int]] = []
    # Two daemons: each table's rows are split between them.
    with EngramClient(list(daemons)) as client:
        infos = import_checkpoint(
            client,
            tmp_path / "model.safetensors",
            load_mapping(DEMO_MAPPING),
            lambda *p: seen.append(p),
        )
        assert [(i.name, i.num_rows, i.shards) for i in infos] == [
            ("engram-L1", 1001, 2),
            ("engram-L15", 1015, 2),
        ]
        assert seen[-1] == ("engram-L15", 1015, 1015)
        weight = state["15.engram.multi_head_embedding.embedding.weight"]
        keys = np.array([[0, 1014], [507, 508]])
        np.testing.assert_array_equal(client.lookup("engram-L15", keys), weight.numpy()[keys])
        export_tables(client, ["engram-L1", "engram-L15"], tmp_path / "out.safetensors")
    back = load_file(tmp_path / "out.safetensors")
    for layer in (1, 15):
        original = state[f"{layer}.engram.multi_head_embedding.embedding.weight"]
        np.testing.assert_array_equal(bits(back[f"engram-L{layer}"]), bits(original))


def fp8_layer(rows: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 values and E8M0 scales shaped like a V4.1 Engram layer (fewer rows)."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (rows, dim), generator=generator, dtype=torch.uint8)
    scales = torch.randint(100, 140, (rows, dim // 32), generator=generator, dtype=torch.uint8)
    return codes.view(torch.float8_e4m3fn), scales.view(torch.float8_e8m0fnu)


def test_a_sharded_fp8_checkpoint_imports_and_exports_bit_for_bit(
    tmp_path: Path, daemons: tuple[str, str]
) -> None:
    # Two layers in two files of a sharded checkpoint, values and scales as two tensors.
    tensors: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    for file, layer in (("model-00001-of-00002.safetensors", 2), ("model-00002.safetensors", 9)):
        values, scales = fp8_layer(700, 256, layer)
        names = (f"layers.{layer}.engram.table.weight", f"layers.{layer}.engram.table.scale")
        tensors[names[0]], tensors[names[1]] = values, scales
        save_file(dict(zip(names, (values, scales), strict=True)), tmp_path / file)
        weight_map |= dict.fromkeys(names, file)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    mapping = tmp_path / "mapping.json"
    mapping.write_text(
        json.dumps(
            {
                "tables": [
                    {
                        "tensor": r"layers\.(?P<layer>\d+)\.engram\.table\.weight",
                        "scales": "layers.{layer}.engram.table.scale",
                        "table": "v4-L{layer}",
                    }
                ]
            }
        )
    )
    with EngramClient(list(daemons)) as client:
        infos = import_checkpoint(client, index, load_mapping(mapping))
        assert [(i.name, i.dtype, i.dim) for i in infos] == [
            ("v4-L2", "fp8_e4m3", 256),
            ("v4-L9", "fp8_e4m3", 256),
        ]
        keys = np.array([0, 349, 350, 699])
        packed = client.lookup("v4-L9", keys, dtype="fp8_e4m3")
        values = tensors["layers.9.engram.table.weight"]
        scales = tensors["layers.9.engram.table.scale"]
        np.testing.assert_array_equal(packed[:, :256], bits(values)[keys])
        np.testing.assert_array_equal(packed[:, 256:], bits(scales)[keys])
        # Dequantized: the values times 2^(scale - 127), as torch computes them.
        expected = values.float().reshape(700, 8, 32) * torch.exp2(
            scales.view(torch.uint8).float() - 127
        ).reshape(700, 8, 1)
        np.testing.assert_array_equal(
            client.lookup("v4-L9", keys), expected.reshape(700, 256).numpy()[keys]
        )
        export_tables(client, ["v4-L2", "v4-L9"], tmp_path / "out.safetensors")
    back = load_file(tmp_path / "out.safetensors")
    for layer in (2, 9):
        assert back[f"v4-L{layer}"].dtype == torch.float8_e4m3fn
        assert back[f"v4-L{layer}_scale"].dtype == torch.float8_e8m0fnu
        np.testing.assert_array_equal(
            bits(back[f"v4-L{layer}"]), bits(tensors[f"layers.{layer}.engram.table.weight"])
        )
        np.testing.assert_array_equal(
            bits(back[f"v4-L{layer}_scale"]), bits(tensors[f"layers.{layer}.engram.table.scale"])
        )


V41_MAPPING = REPO_ROOT / "examples" / "mappings" / "deepseek_v4.1_flash.json"


def test_the_shipped_v41_mapping_imports_its_checkpoint_nested_and_sharded(
    tmp_path: Path, daemons: tuple[str, str]
) -> None:
    """DeepSeek-V4.1-Flash's tensor names and dtypes (values float8_e4m3fn [rows, 256],
    scales float8_e8m0fnu [rows, 8]; rows scaled down), nested under `model.` and sharded
    over two files with an index: imported with the shipped mapping and --tensor-prefix into
    the tables the preset names, and exported back bit for bit."""
    tensors: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    for file, layer in (
        ("model-00001-of-00002.safetensors", 1),
        ("model-00002-of-00002.safetensors", 14),
    ):
        values, scales = fp8_layer(500 + layer, 256, layer)
        assert (values.dtype, scales.dtype, scales.shape[1]) == (
            torch.float8_e4m3fn,
            torch.float8_e8m0fnu,
            8,
        )
        names = (
            f"model.layers.{layer}.engram.embed.weight",
            f"model.layers.{layer}.engram.embed.scale",
        )
        tensors |= dict(zip(names, (values, scales), strict=True))
        save_file(dict(zip(names, (values, scales), strict=True)), tmp_path / file)
        weight_map |= dict.fromkeys(names, file)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    address = ",".join(daemons)
    imported = subprocess.run(
        [sys.executable, "-m", "engram_cli", "import", str(index), "--mapping", str(V41_MAPPING),
         "--tensor-prefix", "model.", "--address", address, "--quiet", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    tables = json.loads(imported.stdout)["tables"]
    assert [(t["name"], t["num_rows"], t["dim"], t["dtype"]) for t in tables] == [
        ("engram-L1", 501, 256, "fp8_e4m3"),
        ("engram-L14", 514, 256, "fp8_e4m3"),
    ]
    with EngramClient(list(daemons)) as client:
        export_tables(client, ["engram-L1", "engram-L14"], tmp_path / "back.safetensors")
    back = load_file(tmp_path / "back.safetensors")
    for layer in (1, 14):
        np.testing.assert_array_equal(
            bits(back[f"engram-L{layer}"]),
            bits(tensors[f"model.layers.{layer}.engram.embed.weight"]),
        )
        np.testing.assert_array_equal(
            bits(back[f"engram-L{layer}_scale"]),
            bits(tensors[f"model.layers.{layer}.engram.embed.scale"]),
        )
    unprefixed = subprocess.run(
        [sys.executable, "-m", "engram_cli", "import", str(index), "--mapping", str(V41_MAPPING),
         "--address", address, "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert unprefixed.returncode != 0 and "matches the mapping" in unprefixed.stderr


def test_an_interrupted_import_leaves_no_table_and_reruns(
    tmp_path: Path, daemons: tuple[str, str]
) -> None:
    save_file(reference_demo_state(200_000), tmp_path / "model.safetensors")
    rules = load_mapping(DEMO_MAPPING)

    def interrupt(table: str, done: int, total: int) -> None:
        if done < total:
            raise KeyboardInterrupt

    with EngramClient(daemons[0]) as client:
        with pytest.raises(KeyboardInterrupt):
            import_checkpoint(client, tmp_path / "model.safetensors", rules, interrupt)
        assert client.tables() == []
        with pytest.raises(TableNotFoundError, match="its import is unfinished"):
            client.lookup("engram-L1", [0])
        infos = import_checkpoint(client, tmp_path / "model.safetensors", rules)
        assert [i.written_rows for i in infos] == [200_001, 200_015]
        assert client.tables() == ["engram-L1", "engram-L15"]


def test_a_float_table_exports_quantized_and_imports_as_fp8(
    tmp_path: Path, daemons: tuple[str, str]
) -> None:
    save_file(reference_demo_state(300), tmp_path / "model.safetensors")
    with EngramClient(daemons[0]) as client:
        import_checkpoint(client, tmp_path / "model.safetensors", load_mapping(DEMO_MAPPING))
        export_tables(client, ["engram-L1"], tmp_path / "fp8.safetensors", dtype="fp8_e4m3")
        quantized = client.lookup("engram-L1", np.arange(301), dtype="fp8_e4m3")
        client.drop_table("engram-L1")
        mapping = tmp_path / "fp8.json"
        mapping.write_text(
            json.dumps(
                {"tables": [{"tensor": "engram-L1", "scales": "{name}_scale", "table": "q"}]}
            )
        )
        import_checkpoint(client, tmp_path / "fp8.safetensors", load_mapping(mapping))
        np.testing.assert_array_equal(
            client.lookup("q", np.arange(301), dtype="fp8_e4m3"), quantized
        )


def test_mappings_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    values, _ = fp8_layer(10, 64, 0)
    save_file({"t": values}, tmp_path / "m.safetensors")
    mapping = tmp_path / "m.json"
    mapping.write_text(json.dumps({"tables": [{"tensor": "t", "table": "t"}]}))
    with EngramClient("127.0.0.1:1") as client, pytest.raises(MappingError, match="scale tensor"):
        import_checkpoint(client, tmp_path / "m.safetensors", load_mapping(mapping))
    mapping.write_text(json.dumps({"tables": [{"pattern": "t"}]}))
    with pytest.raises(MappingError, match="needs 'tensor' and 'table'"):
        load_mapping(mapping)


def test_a_read_only_daemon_serves_imported_tables_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = reference_demo_state(100)
    save_file(state, tmp_path / "model.safetensors")
    with daemon_thread(tmp_path / "data") as d, EngramClient(d.address) as client:
        import_checkpoint(client, tmp_path / "model.safetensors", load_mapping(DEMO_MAPPING))
    with (
        daemon_thread(tmp_path / "data", read_only=True) as d,
        EngramClient(d.address) as client,
        caplog.at_level(logging.INFO, logger="client.transfer"),
    ):
        weight = state["1.engram.multi_head_embedding.embedding.weight"].numpy()
        np.testing.assert_array_equal(client.lookup("engram-L1", [3, 100]), weight[[3, 100]])
        refusals: dict[str, Callable[[], object]] = {
            "apply pushes": lambda: client.push("engram-L1", [3], np.ones((1, DIM), np.float32)),
            "create tables": lambda: client.create_table("new", 10, 4),
            "drop tables": lambda: client.drop_table("engram-L1"),
            "write checkpoints": client.checkpoint,
            "restore checkpoints": client.restore,
        }
        for action, call in refusals.items():
            with pytest.raises(PreconditionFailedError, match=f"read-only.*{action}"):
                call()
        assert client.describe("engram-L1").step == 0
        # Refusals of the calls themselves do not turn this client's shared buffers off.
        assert "sending rows in messages" not in caplog.text


def test_int8_values_with_float32_scales_round_trip(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    values = torch.randint(-128, 128, (500, 64), generator=generator, dtype=torch.int8)
    scales = torch.rand((500, 2), generator=generator) * 0.01
    save_file({"emb": values, "emb.scales": scales}, tmp_path / "int8.safetensors")
    mapping = tmp_path / "int8.json"
    mapping.write_text(
        json.dumps({"tables": [{"tensor": "emb", "scales": "{name}.scales", "table": "q8"}]})
    )
    with daemon_thread(tmp_path / "data") as d, EngramClient(d.address) as client:
        (info,) = import_checkpoint(client, tmp_path / "int8.safetensors", load_mapping(mapping))
        assert (info.dtype, info.num_rows, info.dim) == ("int8", 500, 64)
        expected = (values.float().reshape(500, 2, 32) * scales[:, :, None]).reshape(500, 64)
        np.testing.assert_array_equal(client.lookup("q8", np.arange(500)), expected.numpy())
        export_tables(client, ["q8"], tmp_path / "back.safetensors", scale_suffix=".scales")
    back = load_file(tmp_path / "back.safetensors")
    np.testing.assert_array_equal(bits(back["q8"]), bits(values))
    np.testing.assert_array_equal(bits(back["q8.scales"]), bits(scales))


def test_bfloat16_rows_import_into_float32_exactly_and_nothing_narrower(tmp_path: Path) -> None:
    weights = torch.randn(100, 32, dtype=torch.bfloat16)
    save_file({"w": weights, "f": torch.randn(4, 32)}, tmp_path / "m.safetensors")
    mapping = tmp_path / "m.json"
    mapping.write_text(
        json.dumps(
            {
                "tables": [
                    {"tensor": "w", "table": "wide", "dtype": "float32"},
                    {"tensor": "f", "table": "narrow", "dtype": "bfloat16"},
                ]
            }
        )
    )
    with daemon_thread(tmp_path / "data") as d, EngramClient(d.address) as client:
        with pytest.raises(MappingError, match="float32 rows import into a float32"):
            import_checkpoint(client, tmp_path / "m.safetensors", load_mapping(mapping))
        mapping.write_text(
            json.dumps({"tables": [{"tensor": "w", "table": "wide", "dtype": "float32"}]})
        )
        import_checkpoint(client, tmp_path / "m.safetensors", load_mapping(mapping))
        np.testing.assert_array_equal(
            client.lookup("wide", np.arange(100)), weights.float().numpy()
        )


@pytest.mark.parametrize("shared_memory", [True, False])
def test_bad_writes_are_refused_and_change_nothing(tmp_path: Path, shared_memory: bool) -> None:
    with (
        daemon_thread(tmp_path / "data") as d,
        EngramClient(d.address, shared_memory=shared_memory) as client,
    ):
        client.create_table("live", 10, 32)
        with pytest.raises(PreconditionFailedError, match="not being imported"):
            client.write_rows("live", 0, np.zeros((1, 32), np.float32), "float32")
        client.create(TableSpec("new", 10, 32, dtype="fp8_e4m3"), importing=True)
        bad = {
            "fall outside table": (9, np.zeros((2, 33), np.uint8), "fp8_e4m3"),
            r"shape \[n, 33\]": (0, np.zeros((2, 32), np.uint8), "fp8_e4m3"),
            "rows must have dtype fp8_e4m3": (0, np.zeros((2, 33), np.uint8), "int8"),
            # Through shared memory, each of these was stored as its bytes reinterpreted.
            "must be a 2-D uint8 array .* got int64": (0, [[0x38] * 33], "fp8_e4m3"),
            "got float64 of shape": (0, np.zeros((1, 33)), "fp8_e4m3"),
            r"got uint8 of shape \(33,\)": (0, np.zeros(33, np.uint8), "fp8_e4m3"),
        }
        for message, (first_row, rows, dtype) in bad.items():
            # InvalidRequestError (the daemon's refusal) is a ValueError too.
            with pytest.raises(ValueError, match=message):
                client.write_rows("new", first_row, rows, dtype)
        client.write_rows("new", 0, np.full((10, 33), 0x38, np.uint8), "fp8_e4m3")
        assert client.finish_import("new").written_rows == 10
        with pytest.raises(PreconditionFailedError, match="not being imported"):
            client.finish_import("new")
        with pytest.raises(TableExistsError):
            client.create(TableSpec("new", 10, 32, dtype="fp8_e4m3"), importing=True)


def test_a_read_only_table_refuses_pushes_and_serves(tmp_path: Path) -> None:
    with daemon_thread(tmp_path / "data") as d, EngramClient(d.address) as client:
        info = client.create_table("frozen", 100, 8, read_only=True)
        assert info.read_only and client.describe("frozen").read_only
        client.create_table("live", 100, 8)
        with pytest.raises(PreconditionFailedError, match="read-only"):
            client.push("frozen", [1], np.ones((1, 8), np.float32))
        with pytest.raises(PreconditionFailedError, match="read-only"):
            client.batch([("live", [1], np.ones((1, 8), np.float32)),
                          ("frozen", [1], np.ones((1, 8), np.float32))])  # fmt: skip
        assert client.describe("live").step == 0  # the batch changed nothing
        assert client.lookup("frozen", [1, 2]).shape == (2, 8)


def safetensors_bytes(header: object) -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + bytes(64)


def tensor(dtype: object = "U8", shape: object = (4, 2), offsets: object = (0, 8)) -> object:
    return {"t": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}


MALFORMED_FILES = {
    "not an object": ([], "header is not a JSON object"),
    "nested too deep": (b"[" * 100_000 + b"]" * 100_000, "header is not JSON"),
    "entry not an object": ({"t": 5}, "header entry 't' is not an object"),
    "unhashable dtype": (tensor(dtype=["U8"]), "unsupported dtype"),
    "unknown dtype": (tensor(dtype="F64"), "unsupported dtype 'F64'"),
    "negative size": (tensor(shape=[-1, 8], offsets=[16, 8]), r"shape \[-1, 8\]"),
    "fractional size": (tensor(shape=[2.5, 2]), "not a list of sizes"),
    "boolean size": (tensor(shape=[True, 8]), "not a list of sizes"),
    "scalar shape": (tensor(shape=8), "not a list of sizes"),
    # 2^32 x 2^32 bytes wraps to 0 in int64 arithmetic.
    "overflowing sizes": (tensor(shape=[1 << 32, 1 << 32], offsets=[0, 0]), "bad byte range"),
    "three offsets": (tensor(offsets=[0, 4, 8]), r"not \[begin, end\]"),
    "past the end": (tensor(shape=[100, 2], offsets=[0, 200]), "bad byte range"),
}


@pytest.mark.parametrize("case", MALFORMED_FILES)
def test_a_malformed_safetensors_file_is_refused_naming_it(tmp_path: Path, case: str) -> None:
    header, message = MALFORMED_FILES[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header))
    with pytest.raises(TensorFileError, match=message) as refused:
        Checkpoint(path)
    assert str(path) in str(refused.value)


@pytest.mark.parametrize(
    "index",
    ["{", "[]", "{}", '{"weight_map": []}', '{"weight_map": {"t": 5}}'],
)
def test_a_malformed_checkpoint_index_is_refused_naming_it(tmp_path: Path, index: str) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(index)
    with pytest.raises(TensorFileError, match=r"index is not|weight_map is not") as refused:
        Checkpoint(path)
    assert str(path) in str(refused.value)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ("{", "not JSON"),
        ('{"tables": ["t"]}', "rule 0 is 't', not an object"),
        ('{"tables": [{"tensor": 5, "table": "t"}]}', "'tensor' must be a string"),
        ('{"tables": [{"tensor": "t", "table": ["t"]}]}', "'table' must be a string"),
        ('{"tables": [{"tensor": "t", "table": "t", "scales": 1}]}', "'scales' must be"),
        # A placeholder no group fills was a KeyError traceback at the first match.
        ('{"tables": [{"tensor": "x", "table": "t{layer}"}]}', "rule 0: table 't{layer}'"),
        ('{"tables": [{"tensor": "(?P<l>.)", "table": "t{l:d}"}]}', "cannot fill"),
        ('{"tables": [{"tensor": "x", "table": "t", "scales": "{nme}_s"}]}', "rule 0: scales"),
    ],
)
def test_a_malformed_mapping_is_refused_naming_it(
    tmp_path: Path, mapping: str, message: str
) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(mapping)
    with pytest.raises(MappingError, match=message) as refused:
        load_mapping(path)
    assert str(path) in str(refused.value)


def test_the_cli_refuses_a_malformed_checkpoint_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "bad.safetensors"
    checkpoint.write_bytes(safetensors_bytes(tensor(shape=[-1, 8], offsets=[16, 8])))
    with daemon_thread(tmp_path / "data") as d:
        code = main(
            ["import", str(checkpoint), "--mapping", str(DEMO_MAPPING), "--address", d.address]
        )
        with EngramClient(d.address) as client:
            assert client.tables() == []
    assert code == EXIT_FAILURE
    error = capsys.readouterr().err
    assert f"{checkpoint}: tensor 't' has shape [-1, 8]" in error
    assert "Traceback" not in error


def test_an_export_that_would_write_an_unreadable_file_is_refused(
    tmp_path: Path, daemons: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    with EngramClient(daemons[0]) as client:
        client.create_table("a", 10, 32)
        # Each wrote a file with two tensors named "a", which safetensors cannot read
        # ("invalid offset for tensor `a`"), and said it succeeded.
        with pytest.raises(ValueError, match="two tensors would be named 'a'"):
            export_tables(client, ["a", "a"], exports / "twice.safetensors")
        with pytest.raises(ValueError, match="two tensors would be named 'a'"):
            export_tables(client, ["a"], exports / "x.safetensors", "fp8_e4m3", scale_suffix="")
        # A directory as the output wrote "<directory>.partial" beside it and left it there.
        (exports / "out").mkdir()
        with pytest.raises(IsADirectoryError, match="a directory, not a file to write"):
            export_tables(client, ["a"], exports / "out")
        assert [p.name for p in exports.iterdir()] == ["out"]
        exported = exports / "out" / "a.safetensors"
        argv = ["export", "a", "a", "--out", str(exported), "--address", daemons[0]]
        assert main(argv) == EXIT_FAILURE
        assert "two tensors would be named 'a'" in capsys.readouterr().err
        assert not exported.exists()


def test_an_export_whose_rename_fails_leaves_no_partial_file(
    tmp_path: Path, daemons: tuple[str, str]
) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    target = exports / "a.safetensors"

    def a_directory_takes_the_name(table: str, done: int, rows: int) -> None:
        (target / "inside").mkdir(parents=True, exist_ok=True)

    with EngramClient(daemons[0]) as client:
        client.create_table("a", 10, 4)
        with pytest.raises(OSError, match=r"a\.safetensors"):
            export_tables(client, ["a"], target, progress=a_directory_takes_the_name)
    assert [p.name for p in exports.iterdir()] == ["a.safetensors"]  # the directory alone


def test_a_head_group_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    save_file({"h.a": torch.zeros(4, 2)}, tmp_path / "m.safetensors")
    # int("a") was a ValueError traceback.
    rules = mapping_rules({"tables": [{"tensor": r"h\.(?P<head>\w)", "table": "t"}]})
    with pytest.raises(MappingError, match="head group must be digits, got 'a'"):
        plan_import(Checkpoint(tmp_path / "m.safetensors"), rules)


def test_import_replace_serves_the_old_version_until_the_new_one_is_whole(
    tmp_path: Path, daemons: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A new model version imported over a served one (`import --replace`)."""
    old, new = reference_demo_state(40_000), reference_demo_state(40_000)
    for name in new:
        new[name] = new[name] + 1
    save_file(old, tmp_path / "v1.safetensors")
    save_file(new, tmp_path / "v2.safetensors")
    rules = load_mapping(DEMO_MAPPING)
    weight = "1.engram.multi_head_embedding.embedding.weight"
    with EngramClient(list(daemons)) as client, EngramClient(list(daemons)) as engine:
        import_checkpoint(client, tmp_path / "v1.safetensors", rules)
        with pytest.raises(TableExistsError):
            import_checkpoint(client, tmp_path / "v2.safetensors", rules)
        served: list[np.ndarray] = []

        def interrupt(table: str, done: int, total: int) -> None:
            served.append(engine.lookup("engram-L1", range(40_001)))
            if done < total:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            import_checkpoint(client, tmp_path / "v2.safetensors", rules, interrupt, replace=True)
        assert len(served) == 1
        np.testing.assert_array_equal(served[0], old[weight].numpy())
        np.testing.assert_array_equal(
            engine.lookup("engram-L1", range(40_001)), old[weight].numpy()
        )
        argv = ["import", str(tmp_path / "v2.safetensors"), "--mapping", str(DEMO_MAPPING)]
        # Without --replace: refused, saying how (it used to answer ALREADY_EXISTS alone).
        capsys.readouterr()
        assert main([*argv, "--quiet", "--address", ",".join(daemons)]) == EXIT_FAILURE
        assert "already exists; --replace imports over it" in capsys.readouterr().err
        assert main([*argv, "--replace", "--quiet", "--address", ",".join(daemons)]) == 0
        np.testing.assert_array_equal(
            engine.lookup("engram-L1", range(40_001)), new[weight].numpy()
        )
        assert client.unfinished_imports() == []


def test_a_quantized_checkpoint_imports_to_train_and_exports_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A released model's FP8 memory imported for training (`import --dtype bfloat16` with
    an optimizer): every value dequantized exactly, pushes train it, and exported back to
    FP8 an untouched table gives the same values."""
    values, scales = fp8_layer(600, 256, 3)
    codes = values.view(torch.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0  # no NaN codes
    names = ("layers.1.engram.embed.weight", "layers.1.engram.embed.scale")
    checkpoint = tmp_path / "released.safetensors"
    save_file(dict(zip(names, (values, scales), strict=True)), checkpoint)
    expected = (
        values.float().reshape(600, 8, 32)
        * torch.exp2(scales.view(torch.uint8).float() - 127).reshape(600, 8, 1)
    ).reshape(600, 256)
    with daemon_thread(tmp_path / "a") as a, EngramClient(a.address) as client:
        argv = ["import", str(checkpoint), "--mapping", str(V41_MAPPING), "--quiet",
                "--address", a.address]  # fmt: skip
        trained = [*argv, "--dtype", "bfloat16", "--optimizer", "rowwise_adagrad", "--lr", "0.05"]
        assert main(trained) == 0
        info = client.describe("engram-L1")
        assert (info.dtype, info.optimizer, info.lr) == ("bfloat16", "rowwise_adagrad", 0.05)
        np.testing.assert_array_equal(client.lookup("engram-L1", range(600)), expected.numpy())
        export_tables(client, ["engram-L1"], tmp_path / "shipped.safetensors", "fp8_e4m3")
        shipped = load_file(tmp_path / "shipped.safetensors")
        back = shipped["engram-L1"].float().reshape(600, 8, 32) * shipped[
            "engram-L1_scale"
        ].float().reshape(600, 8, 1)
        np.testing.assert_array_equal(back.reshape(600, 256).numpy(), expected.numpy())
        pushed = client.push("engram-L1", [5, 7], np.ones((2, 256), np.float32))
        assert pushed.step == 1
        moved = client.lookup("engram-L1", [5, 7, 8]) - expected.numpy()[[5, 7, 8]]
        assert (moved[:2] != 0).any(axis=1).all() and not moved[2].any()

        # A value bfloat16 cannot hold (a code of 2^-9 under a scale of 2^-127) is refused,
        # naming its row; float32 holds every value.
        codes[17, 0], scales.view(torch.uint8)[17, 0] = 1, 0
        save_file(dict(zip(names, (values, scales), strict=True)), checkpoint)
        capsys.readouterr()
        assert main([*argv, "--replace", "--dtype", "bfloat16"]) == EXIT_FAILURE
        assert "row 17 holds values that bfloat16 cannot hold exactly" in capsys.readouterr().err
        assert main([*argv, "--replace", "--dtype", "float32"]) == 0
        assert client.lookup("engram-L1", [17])[0, 0] == 2.0**-136
        assert main([*argv, "--replace", "--dtype", "float16"]) != 0
        assert "dequantized into bfloat16 or float32" in capsys.readouterr().err
