"""Damage is found, not served silently: live tables are scrubbed against row checksums
(`Verify`, `engram-store verify`); a damaged table header stops the daemon naming the file;
an edited checkpoint manifest or a damaged pack is refused, and nothing is restored."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon import daemon_process, serve_command
from store_helpers import keys, push, rows_of, spec

from engram_cli import main as cli
from store import _native
from store._proto.engram.store.v1 import store_pb2 as pb
from store.checkpoints import manifest_of_json

ROWS, DIM = 10_000, 8


def flip_bit(path: Path, offset: int, mask: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def test_verify_finds_a_changed_row_byte_and_a_flipped_written_bit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        d.stub.CreateTable(
            pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM, optimizer="adam"))
        )
        d.stub.Push(push("t", [10, 5000, 9999], np.ones((3, DIM), np.float32)))
        clean = d.stub.Verify(pb.VerifyRequest())
        assert (clean.tables, clean.written_rows, list(clean.damaged)) == (1, 3, [])
    params = data / "tables" / "t" / "params.engram"
    header = params.read_bytes()[:96]
    data_offset, bitmap_offset = struct.unpack("<QQ", header[56:72])
    flip_bit(params, data_offset + 5000 * DIM * 4 + 2, 0x10)  # a byte of row 5000
    flip_bit(params, bitmap_offset + 7000 // 8, 1 << (7000 % 8))  # row 7000 "written"
    with daemon_process(data) as (d, _):
        damaged = d.stub.Verify(pb.VerifyRequest(table="t")).damaged
        assert [(b.table, b.file, b.first_row) for b in damaged] == [
            ("t", "params.engram", 4992),
            ("t", "params.engram", 6976),
        ]
        assert cli(["verify", "--address", d.address]) == 3
        assert "t/params.engram: rows 4992..5055" in capsys.readouterr().out
        assert cli(["verify", "--address", d.address, "--json", "t"]) == 3
        reply = json.loads(capsys.readouterr().out)
        assert reply["ok"] is False
        assert reply["damaged"][0] == {
            "address": d.address,
            "table": "t",
            "file": "params.engram",
            "first_row": 4992,
        }


def test_an_edited_manifest_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM)))
        d.stub.Push(push("t", [1], np.ones((1, DIM), np.float32)))
        d.stub.Checkpoint(pb.CheckpointRequest())
        d.stub.Push(push("t", [2], np.ones((1, DIM), np.float32)))
        before = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(4)))))
        manifest_path = data / "checkpoints" / "1" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        table_spec = pb.TableSpec.FromString(base64.b64decode(manifest["tables"][0]["spec"]))
        table_spec.optimizer.lr = 1000.0
        manifest["tables"][0]["spec"] = base64.b64encode(table_spec.SerializeToString()).decode()
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(grpc.RpcError) as error:
            d.stub.Restore(pb.RestoreRequest(id=1))
        assert error.value.code() == grpc.StatusCode.DATA_LOSS
        assert "manifest checksum mismatch" in (error.value.details() or "")
        after = rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(4)))))
        np.testing.assert_array_equal(after, before)
        assert d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step == 2
    refused = subprocess.run(
        serve_command(data, tmp_path / "port", "--restore", "latest"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 4 and "manifest checksum mismatch" in refused.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"tables": [', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[]", "no checksum"),
        (b'{"tables": []}', "no checksum"),
        (b'{"tables": [], "crc32": 1}', "checksum mismatch"),
    ],
)
def test_a_damaged_manifest_is_refused_as_damaged(text: bytes, message: str) -> None:
    with pytest.raises(_native.TableFormatError, match=message):
        manifest_of_json(text, "manifest.json")


def test_a_table_kept_without_row_checksums_is_reported_unchecked(tmp_path: Path) -> None:
    with daemon_process(tmp_path / "data") as (d, _):
        table = spec("fast", num_rows=ROWS, dim=DIM, skip_row_checksums=True)
        d.stub.CreateTable(pb.CreateTableRequest(spec=table))
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM)))
        d.stub.Push(push("fast", [1, 2], np.ones((2, DIM), np.float32)))
        reply = d.stub.Verify(pb.VerifyRequest())
        assert list(reply.unchecked) == ["fast"] and not reply.damaged
        assert not (tmp_path / "data" / "tables" / "fast" / "params.engram.sums").exists()
        assert (tmp_path / "data" / "tables" / "t" / "params.engram.sums").exists()


def adam_table_with_two_rows(data: Path) -> Path:
    """A data directory holding table `t` (Adam) with rows 10 and 20 written."""
    with daemon_process(data) as (d, _):
        d.stub.CreateTable(
            pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM, optimizer="adam"))
        )
        d.stub.Push(push("t", [10, 20], np.ones((2, DIM), np.float32)))
    return data


@pytest.mark.parametrize("file", ["params.engram", "state.engram"])
def test_a_flipped_byte_in_a_table_files_header_stops_the_daemon_naming_the_file(
    tmp_path: Path, file: str
) -> None:
    data = adam_table_with_two_rows(tmp_path / "data")
    flip_bit(data / "tables" / "t" / file, 20, 0x01)  # inside the checksummed header
    started = subprocess.run(
        serve_command(data, tmp_path / "port"), capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 4, started.stderr
    assert str(Path("t") / file) in started.stderr


@pytest.mark.parametrize(
    ("file", "row_bytes"), [("params.engram", DIM * 4), ("state.engram", 2 * DIM * 4)]
)
def test_a_flipped_byte_in_a_row_stops_a_daemon_verifying_on_start_naming_the_rows(
    tmp_path: Path, file: str, row_bytes: int
) -> None:
    data = adam_table_with_two_rows(tmp_path / "data")
    path = data / "tables" / "t" / file
    (data_offset,) = struct.unpack("<Q", path.read_bytes()[56:64])
    flip_bit(path, data_offset + 20 * row_bytes + 1, 0x04)  # a byte of row 20
    started = subprocess.run(
        serve_command(data, tmp_path / "port", "--verify-on-start"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 4, started.stderr
    assert f"t/{file} rows 0..63" in started.stderr
    with daemon_process(data) as (d, _):  # without the scrub it serves; verify still finds it
        damaged = d.stub.Verify(pb.VerifyRequest()).damaged
        assert [(b.file, b.first_row) for b in damaged] == [(file, 0)]


def test_a_flipped_byte_in_a_checkpoint_pack_fails_the_restore_naming_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        d.stub.CreateTable(
            pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM, optimizer="adam"))
        )
        d.stub.Push(push("t", [10, 20], np.ones((2, DIM), np.float32)))
        checkpoint = d.stub.Checkpoint(pb.CheckpointRequest())
        d.stub.Push(push("t", [30], np.ones((1, DIM), np.float32)))
        lookup = pb.LookupRequest(table="t", keys=keys([10, 20, 30]))
        before = rows_of(d.stub.Lookup(lookup))
        pack = data / "checkpoints" / str(checkpoint.id) / "t.pack"
        flip_bit(pack, pack.stat().st_size // 2, 0x04)
        with pytest.raises(grpc.RpcError) as error:
            d.stub.Restore(pb.RestoreRequest(id=checkpoint.id))
        assert error.value.code() == grpc.StatusCode.DATA_LOSS
        assert "t.pack" in (error.value.details() or "")
        # Nothing was restored: the live table is as it was.
        np.testing.assert_array_equal(rows_of(d.stub.Lookup(lookup)), before)


def test_a_flipped_byte_in_the_catalog_stops_the_daemon_naming_the_entry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        table = spec("flip-me-table", num_rows=ROWS, dim=DIM, optimizer="adam")
        d.stub.CreateTable(pb.CreateTableRequest(spec=table))
        d.stub.Push(push("flip-me-table", [1, 2], np.ones((2, DIM), np.float32)))
        d.stub.Checkpoint(pb.CheckpointRequest())
    catalog = data / "catalog.lmdb" / "data.mdb"
    content = catalog.read_bytes()
    assert b"flip-me-table" in content
    # Every copy, in keys and values alike (LMDB may keep stale pages holding it too).
    catalog.write_bytes(content.replace(b"flip-me-table", b"flip-me-tablf"))
    started = subprocess.run(
        serve_command(data, tmp_path / "port"), capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 4, started.stderr
    assert "catalog entry" in started.stderr and "checksum mismatch" in started.stderr
