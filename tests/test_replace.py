"""Replacing a live table with an import (`replace_existing`, `EngramClient.replace_rows`):
the old table serves on until the import is swapped in, whole, and a crash at any point of
the swap leaves one of the two tables whole, never neither or a mix."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon import Daemon, daemon_process, daemon_thread
from store_helpers import keys, push, rows_of, spec
from test_crash_recovery import crashing_daemon

from client import EngramClient
from engram_cli import EXIT_FAILURE, main
from store._proto.engram.store.v1 import store_pb2 as pb
from store.crash_points import POINTS
from store.errors import InvalidArgumentError
from store.spec import TableSpec
from store.wire import numpy_array

ROWS, DIM = 1000, 4
OLD = np.zeros((ROWS, DIM), np.float32)
NEW = np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM)


def create(d: Daemon) -> None:
    d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", ROWS, DIM, init="zeros", lr=1.0)))


def stage_replacement(d: Daemon, rows: np.ndarray = NEW, upto: int = ROWS) -> None:
    """A replacement of table t, its rows written up to `upto`, not swapped in."""
    request = pb.CreateTableRequest(
        spec=spec("t", len(rows), rows.shape[1], init="zeros", lr=1.0),
        importing=True,
        replace_existing=True,
    )
    d.stub.CreateTable(request)
    if upto:
        d.stub.WriteRows(pb.WriteRowsRequest(table="t", rows=numpy_array(rows[:upto])))


def rows_of_t(d: Daemon, rows: int = ROWS) -> np.ndarray:
    return rows_of(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(rows)))))


def incarnation(d: Daemon) -> str:
    value: str = d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).incarnation
    return value


def unfinished(d: Daemon) -> list[str]:
    return list(d.stub.ListTables(pb.ListTablesRequest()).unfinished_imports)


def table_directories(data: Path) -> list[str]:
    return sorted(os.listdir(data / "tables"))


def test_the_old_table_serves_and_trains_until_the_replacement_is_swapped_in(
    tmp_path: Path,
) -> None:
    with daemon_thread(tmp_path / "data") as d:
        create(d)
        before = incarnation(d)
        stage_replacement(d, upto=ROWS // 2)
        d.stub.WriteRows(
            pb.WriteRowsRequest(table="t", first_row=ROWS // 2, rows=numpy_array(NEW[ROWS // 2 :]))
        )
        assert unfinished(d) == ["t"]
        # Meanwhile the old table answers, and a push to it is applied to it.
        d.stub.Push(push("t", [3], -np.ones((1, DIM), np.float32)))
        expected = OLD.copy()
        expected[3] = 1
        np.testing.assert_array_equal(rows_of_t(d), expected)
        assert incarnation(d) == before
        info = d.stub.FinishImport(pb.FinishImportRequest(table="t"))
        assert info.incarnation != before and info.step == 0
        np.testing.assert_array_equal(rows_of_t(d), NEW)
        assert incarnation(d) == info.incarnation
        assert unfinished(d) == []
        # A request quoting the old table is refused, not served the new table's rows.
        with pytest.raises(grpc.RpcError) as refused:
            d.stub.Lookup(pb.LookupRequest(table="t", keys=keys([1]), incarnation=before)).next()
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        # The new table trains from its imported rows.
        d.stub.Push(push("t", [3], -np.ones((1, DIM), np.float32)))
        np.testing.assert_array_equal(rows_of_t(d)[3], NEW[3] + 1)
    assert table_directories(tmp_path / "data") == ["t"]


def test_a_replacement_may_take_another_shape(tmp_path: Path) -> None:
    wider = np.ones((ROWS // 2, 8), np.float32)
    with daemon_thread(tmp_path / "data") as d:
        create(d)
        stage_replacement(d, wider, upto=ROWS // 2)
        d.stub.FinishImport(pb.FinishImportRequest(table="t"))
        np.testing.assert_array_equal(rows_of_t(d, ROWS // 2), wider)


def test_an_unfinished_replacement_survives_a_restart_beside_the_old_table(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        create(d)
        d.stub.Push(push("t", [3], -np.ones((1, DIM), np.float32), client_id="c", sequence=1))
        stage_replacement(d, upto=10)
    with daemon_process(data) as (d, _):
        assert rows_of_t(d)[3, 0] == 1
        assert unfinished(d) == ["t"]
        # The import goes on where it was (an import is durable once finished).
        d.stub.WriteRows(pb.WriteRowsRequest(table="t", first_row=10, rows=numpy_array(NEW[10:])))
        d.stub.FinishImport(pb.FinishImportRequest(table="t"))
        np.testing.assert_array_equal(rows_of_t(d), NEW)
        # The old table's push is not replayed onto the new one, nor forgotten as applied.
        assert d.stub.Push(
            push("t", [3], -np.ones((1, DIM), np.float32), client_id="c", sequence=1)
        ).duplicate
        np.testing.assert_array_equal(rows_of_t(d), NEW)
    assert table_directories(data) == ["t"]


def test_replacing_again_starts_over_and_drop_removes_both(tmp_path: Path) -> None:
    with daemon_thread(tmp_path / "data", max_tables=2) as d:
        create(d)
        stage_replacement(d, upto=10)
        stage_replacement(d, upto=0)  # starts over: the rows written before are gone
        d.stub.FinishImport(pb.FinishImportRequest(table="t"))
        np.testing.assert_array_equal(rows_of_t(d), OLD)
        stage_replacement(d, upto=10)
        # A staged replacement takes a table's place under --max-tables.
        with pytest.raises(grpc.RpcError) as full:
            d.stub.CreateTable(pb.CreateTableRequest(spec=spec("u", 10, DIM)))
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "serves 2 tables (1 staged to replace others)" in str(full.value.details())
        d.stub.DropTable(pb.DropTableRequest(name="t"))
        assert unfinished(d) == [] and not d.stub.ListTables(pb.ListTablesRequest()).tables
        assert table_directories(tmp_path / "data") == []
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("u", 10, DIM)))


def test_replace_existing_needs_an_import_and_without_a_table_is_a_plain_import(
    tmp_path: Path,
) -> None:
    with daemon_thread(tmp_path / "data") as d:
        create(d)
        with pytest.raises(grpc.RpcError) as refused:
            d.stub.CreateTable(
                pb.CreateTableRequest(spec=spec("t", ROWS, DIM), replace_existing=True)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs importing" in str(refused.value.details())
        request = pb.CreateTableRequest(spec=spec("u", 10, DIM), importing=True)
        request.replace_existing = True
        d.stub.CreateTable(request)
        assert unfinished(d) == ["u"]
        d.stub.FinishImport(pb.FinishImportRequest(table="u"))
        assert [t.spec.name for t in d.stub.ListTables(pb.ListTablesRequest()).tables] == [
            "t",
            "u",
        ]


def test_a_checkpoint_leaves_a_staged_replacement_out_and_a_restore_drops_it(
    tmp_path: Path,
) -> None:
    with daemon_thread(tmp_path / "data") as d:
        create(d)
        stage_replacement(d)
        d.stub.Checkpoint(pb.CheckpointRequest())
        d.stub.Restore(pb.RestoreRequest())
        assert unfinished(d) == []
        np.testing.assert_array_equal(rows_of_t(d), OLD)
        with pytest.raises(grpc.RpcError) as gone:
            d.stub.FinishImport(pb.FinishImportRequest(table="t"))
        assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert table_directories(tmp_path / "data") == ["t"]


@pytest.mark.parametrize("point", [p for p in POINTS if p.startswith("replace:")])
def test_a_swap_killed_at_each_crash_point_leaves_one_table_whole(
    tmp_path: Path, point: str
) -> None:
    data = tmp_path / "data"
    with daemon_process(data) as (d, _):
        create(d)
        # Acknowledged, and still only in the journal when the swap starts.
        d.stub.Push(push("t", [3], -np.ones((1, DIM), np.float32), client_id="c", sequence=1))
        stage_replacement(d)
        old = rows_of_t(d)
    with crashing_daemon(data, point) as (d, _), pytest.raises(grpc.RpcError):
        d.stub.FinishImport(pb.FinishImportRequest(table="t"))
    swapped = point != "replace:old-table-retired"
    with daemon_process(data) as (d, _):
        np.testing.assert_array_equal(rows_of_t(d), NEW if swapped else old)
        assert unfinished(d) == ([] if swapped else ["t"])
        assert d.stub.Push(
            push("t", [3], -np.ones((1, DIM), np.float32), client_id="c", sequence=1)
        ).duplicate
        if not swapped:
            # The finish was never acknowledged: asked again, it swaps.
            d.stub.FinishImport(pb.FinishImportRequest(table="t"))
        np.testing.assert_array_equal(rows_of_t(d), NEW)
    assert table_directories(data) == ["t"]


def test_replace_rows_keeps_the_table_when_it_fails(tmp_path: Path) -> None:
    with daemon_thread(tmp_path / "data") as d, EngramClient(d.address) as client:
        client.create_table("t", ROWS, DIM, init="zeros")
        old_incarnation = client.incarnation("t")
        wrong_width = np.ones((ROWS, DIM + 1), np.float32)
        with pytest.raises(ValueError, match="shape"):
            client.replace_rows("t", wrong_width)
        # A failure midway (here: a bad chunk size on the daemon's side is refused before;
        # a row beyond the table's end is refused by the daemon) leaves the old table.
        client.create(client.spec("t"), importing=True, replace_existing=True)
        with pytest.raises(Exception, match="rows"):
            client.write_rows("t", ROWS - 1, np.ones((2, DIM), np.float32), "float32")
        np.testing.assert_array_equal(client.lookup("t", range(ROWS)), OLD)
        assert client.incarnation("t") == old_incarnation
        info = client.replace_rows("t", NEW)
        assert info.step == 0
        np.testing.assert_array_equal(client.lookup("t", range(ROWS)), NEW)
        assert client.incarnation("t") != old_incarnation
        with pytest.raises(InvalidArgumentError, match="replace_existing"):
            client.create(client.spec("t"), importing=True, replace_existing="yes")  # type: ignore[arg-type]


def test_replace_rows_on_shards_swaps_every_shard(tmp_path: Path) -> None:
    with (
        daemon_thread(tmp_path / "a") as a,
        daemon_thread(tmp_path / "b") as b,
        EngramClient([a.address, b.address]) as client,
        EngramClient([a.address, b.address]) as reader,
    ):
        client.create_table("t", ROWS, DIM, init="zeros")
        np.testing.assert_array_equal(reader.lookup("t", range(ROWS)), OLD)
        client.replace_rows("t", NEW, chunk_rows=300)
        # The reader's layout is of the old tables: it is refused, describes afresh, and reads.
        np.testing.assert_array_equal(reader.lookup("t", range(ROWS)), NEW)


def test_dropping_only_the_unfinished_import_keeps_the_table(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with daemon_thread(data) as d:
        create(d)
        stage_replacement(d, upto=10)
        only_import = pb.DropTableRequest(name="t", unfinished_import_only=True)
        d.stub.DropTable(only_import)
        assert unfinished(d) == [] and table_directories(data) == ["t"]
        np.testing.assert_array_equal(rows_of_t(d), OLD)
        # Never a visible table.
        with pytest.raises(grpc.RpcError) as none:
            d.stub.DropTable(only_import)
        assert none.value.code() == grpc.StatusCode.NOT_FOUND
        assert "has no unfinished import" in str(none.value.details())
        np.testing.assert_array_equal(rows_of_t(d), OLD)
        # An import of a new name, unfinished, goes too.
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("u", 10, DIM), importing=True))
        d.stub.DropTable(pb.DropTableRequest(name="u", unfinished_import_only=True))
        assert unfinished(d) == [] and table_directories(data) == ["t"]


def test_an_import_interrupted_on_some_shards_is_dropped_where_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        daemon_thread(tmp_path / "a") as a,
        daemon_thread(tmp_path / "b") as b,
        EngramClient([a.address, b.address]) as client,
    ):
        client.create_table("t", ROWS, DIM, init="zeros")
        # Interrupted after the first shard had its replacement staged.
        stage_replacement(a, NEW[: ROWS // 2], upto=10)
        assert client.unfinished_imports() == ["t"]
        address = ["--address", f"{a.address},{b.address}"]
        assert main(["drop-table", "t", "--unfinished-import", *address]) == 0
        assert "dropped the unfinished import of t" in capsys.readouterr().out
        assert client.unfinished_imports() == []
        np.testing.assert_array_equal(client.lookup("t", range(ROWS)), OLD)
        assert main(["drop-table", "t", "--unfinished-import", *address]) == EXIT_FAILURE
        assert "has no unfinished import" in capsys.readouterr().err
        np.testing.assert_array_equal(client.lookup("t", range(ROWS)), OLD)


def test_a_swap_that_fails_midway_puts_the_old_table_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    rename = os.rename

    def failing_rename(source: str, target: str) -> None:
        if os.path.basename(source).startswith(".replacing."):
            raise OSError(28, "No space left on device")
        rename(source, target)

    with daemon_thread(data) as d:
        create(d)
        stage_replacement(d)
        monkeypatch.setattr("store.replacement.os.rename", failing_rename)
        with pytest.raises(grpc.RpcError):
            d.stub.FinishImport(pb.FinishImportRequest(table="t"))
        assert table_directories(data) == [".replacing.t", "t"]
        np.testing.assert_array_equal(rows_of_t(d), OLD)
        monkeypatch.setattr("store.replacement.os.rename", rename)
        d.stub.FinishImport(pb.FinishImportRequest(table="t"))
        np.testing.assert_array_equal(rows_of_t(d), NEW)
    assert table_directories(data) == ["t"]


def test_the_client_writes_a_replacement_of_another_shape_or_of_a_new_name(
    tmp_path: Path,
) -> None:
    """Through EngramClient on two shards: a replacement with twice the rows is written by
    its own layout (it used to be written by the old table's, and refused past its rows), and
    `replace_existing` of a name no table has imports it (`import --replace` of a model's
    first version)."""
    twice = np.arange(2 * ROWS * DIM, dtype=np.float32).reshape(2 * ROWS, DIM)
    with (
        daemon_thread(tmp_path / "a") as a,
        daemon_thread(tmp_path / "b") as b,
        EngramClient([a.address, b.address]) as client,
    ):
        client.create_table("t", ROWS, DIM, init="zeros")
        for name in ("t", "new"):
            wider = TableSpec(name, 2 * ROWS, DIM, init="zeros")
            client.create(wider, importing=True, replace_existing=True)
            client.write_rows(name, 0, twice, "float32")
            assert client.finish_import(name).num_rows == 2 * ROWS
            np.testing.assert_array_equal(client.lookup(name, range(2 * ROWS)), twice)
