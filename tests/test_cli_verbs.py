"""The client verbs of `engram-store` against running daemons: what they print, in JSON
and for people, and what they do."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_ROOT
from daemon import Daemon, daemon_thread

from client import EngramClient
from client.config import EngramConfig
from client.engram_tables import hash_mapping
from engram_cli import EXIT_FAILURE, EXIT_NO_DAEMON, EXIT_USAGE, main
from engram_cli.exit_codes import EXIT_DECLINED
from store.spec import TableSpec

ENGRAM_CONFIG = REPO_ROOT / "examples" / "tiny_engram_lm.engram.json"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with daemon_thread(tmp_path / "data") as d:
        yield d


def run(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> str:
    assert main(list(argv)) == code, capsys.readouterr()
    out: str = capsys.readouterr().out
    return out


def as_json(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> Any:
    return json.loads(run(capsys, *argv, "--json", code=code))


def test_a_refused_connection_says_no_daemon_answers_and_how_to_start_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # a port nothing listens on
    assert main(["tables", "--address", address]) == EXIT_NO_DAEMON
    err = capsys.readouterr().err
    assert f"no daemon answers at {address}" in err
    assert "engram-store serve" in err


def test_json_is_plain_with_every_field_present(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ("--address", daemon.address)
    info = as_json(capsys, "create-table", "emb", "--rows", "1000", "--dim", "8", *address)
    assert info == {
        "name": "emb",
        "num_rows": 1000,
        "dim": 8,
        "dtype": "float32",
        "optimizer": "sgd",
        "lr": 0.01,
        "step": 0,
        "written_rows": 0,
        "hash_fingerprint": 0,
        "row_checksums": True,
        "shards": 1,
        "read_only": False,
        "weight_decay": 0.0,
        "hash_identity": None,
    }
    assert as_json(capsys, "tables", *address) == {"tables": [info]}
    stats = as_json(capsys, "stats", *address)["shards"]
    assert stats[0]["tables"] == [
        {
            "name": "emb",
            "lookups": 0,
            "rows_looked_up": 0,
            "pushes": 0,
            "rows_pushed": 0,
            "duplicate_pushes": 0,
        }
    ]
    assert as_json(capsys, "verify", *address) == {
        "tables": 1,
        "written_rows": 0,
        "damaged": [],
        "unchecked": [],
        "ok": True,
    }
    assert as_json(capsys, "checkpoints", *address) == {
        "shards": [{"address": daemon.address, "checkpoints": []}]
    }


def test_rows_verbs_push_lookup_and_batch(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    address = ("--address", daemon.address)
    run(capsys, "create-table", "emb", "--rows", "100", "--dim", "4", "--lr", "0.5", *address)
    before = np.array(as_json(capsys, "lookup", "emb", "--keys", "3,7", *address)["rows"])
    assert as_json(capsys, "push", "emb", "--keys", "3,7,3", "--fill", "1", *address) == {
        "rows": 2,  # distinct rows changed
        "step": 1,
        "duplicate": False,
    }
    after = as_json(capsys, "lookup", "emb", "--keys", "3,7", *address)
    assert after["keys"] == [3, 7]
    # SGD sums repeated keys' gradients: key 3 moved by 2 x lr, key 7 by 1 x lr.
    np.testing.assert_allclose(np.array(after["rows"]), before - [[1.0], [0.5]], rtol=1e-6)

    np.save(tmp_path / "keys.npy", np.array([[1, 2]]))
    np.save(tmp_path / "grads.npy", np.full((2, 4), 0.25, np.float32))
    out = run(
        capsys,
        "push",
        "emb",
        "--keys-file",
        str(tmp_path / "keys.npy"),
        "--grads-file",
        str(tmp_path / "grads.npy"),
        *address,
    )
    assert out.strip() == "step 2: 2 rows updated"
    run(capsys, "lookup", "emb", "--keys-file", str(tmp_path / "keys.npy"), "--out",
        str(tmp_path / "rows.npy"), *address)  # fmt: skip
    assert np.load(tmp_path / "rows.npy").shape == (1, 2, 4)

    step = tmp_path / "step.json"
    step.write_text(
        json.dumps(
            {
                "pushes": [{"table": "emb", "keys": [9], "grads": [[2.0] * 4]}],
                "lookups": [{"table": "emb", "keys": [9, 3]}],
            }
        )
    )
    reply = as_json(capsys, "batch", str(step), *address)
    assert reply["pushes"] == [{"rows": 1, "step": 3, "duplicate": False}]
    rows = np.array(reply["lookups"][0])
    np.testing.assert_array_equal(rows[1], np.array(after["rows"][0]))
    assert rows.shape == (2, 4)

    step.write_text(json.dumps({"pushes": [{"table": "emb", "keys": [9]}]}))
    assert main(["batch", str(step), *address]) == EXIT_FAILURE
    assert "each push needs table, keys and grads" in capsys.readouterr().err
    assert main(["lookup", "emb", *address]) == EXIT_FAILURE  # no keys given
    assert "--keys or --keys-file" in capsys.readouterr().err
    assert main(["lookup", "emb", "--keys", "100", *address]) == EXIT_FAILURE
    assert "100" in capsys.readouterr().err
    # A negative key raised a bare IndexError: a traceback and exit 1 ("declined").
    assert main(["lookup", "emb", "--keys", "3,-1", *address]) == EXIT_FAILURE
    assert "keys[1] = -1 is negative" in capsys.readouterr().err
    # Beyond int64: an OverflowError traceback and exit 1.
    assert main(["lookup", "emb", "--keys", str(2**64), *address]) == EXIT_FAILURE
    assert "keys[0] = 18446744073709551616 is beyond" in capsys.readouterr().err
    assert main(["lookup", "emb", "--keys", str(2**64 - 1), *address]) == EXIT_FAILURE
    assert "18446744073709551615 is out of range" in capsys.readouterr().err
    assert main(["lookup-tokens", "emb", "--token-ids", str(2**63), *address]) == EXIT_FAILURE
    assert "token ids must fit int64" in capsys.readouterr().err
    # Files that are not what they should be: each was a traceback (TypeError) or numpy's
    # advice about pickles.
    np.save(tmp_path / "float_keys.npy", np.array([1.5, 2.0]))
    (tmp_path / "text.npy").write_text("3,4\n")
    np.savez(tmp_path / "two.npz", a=np.arange(2), b=np.arange(2))
    np.save(tmp_path / "text_grads.npy", np.array([["a"] * 4]))
    bad_files = [
        ("lookup --keys-file float_keys.npy", "keys must be integers, got dtype float64"),
        ("lookup --keys-file text.npy", "text.npy: not a .npy file of numbers"),
        ("lookup --keys-file two.npz", "holds several arrays (.npz)"),
        ("push --keys 1 --grads-file text_grads.npy", "gradients must be numbers, got dtype <U1"),
    ]
    for command, message in bad_files:
        verb, *flags, name = command.split()
        assert main([verb, "emb", *flags, str(tmp_path / name), *address]) == EXIT_FAILURE
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, error
    # One row is a row ("1 rows updated" before).
    one = run(capsys, "push", "emb", "--keys", "3", "--fill", "0.5", *address)
    assert one.strip().endswith(": 1 row updated")


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        # Each was a traceback (OverflowError, TypeError) or a key silently truncated or
        # converted: 1.5 and "1" and true pushed to row 1.
        (
            {"lookups": [{"table": "emb", "keys": [2**64]}]},
            "lookups[0]: keys[0] = 18446744073709551616 is beyond",
        ),
        ({"pushes": [{"table": "emb", "keys": [2**64 - 1], "grads": [[1] * 4]}]}, "OUT_OF_RANGE"),
        (
            {"pushes": [{"table": "emb", "keys": [1.5], "grads": [[1] * 4]}]},
            "pushes[0]: keys must hold integers",
        ),
        (
            {"pushes": [{"table": "emb", "keys": ["1"], "grads": [[1] * 4]}]},
            "keys must hold integers",
        ),
        ({"pushes": [{"table": "emb", "keys": True, "grads": [[1] * 4]}]}, "got dtype bool"),
        (
            {"pushes": [{"table": 5, "keys": [1], "grads": [[1] * 4]}]},
            "pushes[0] table must be a string",
        ),
        (
            {"pushes": [{"table": "emb", "keys": [1], "grads": "abc"}]},
            'pushes[0]: grads must hold numbers, got "abc"',
        ),
        (
            {"pushes": [{"table": "emb", "keys": [1], "grads": [[1] * 4], "step": 3}]},
            "pushes[0] is {",
        ),
        ({"pushes": {"table": "emb"}}, "pushes must be a list, got dict"),
        ({"lookups": [{"table": "emb", "keys": [[1, 2], [3]]}]}, "lookups[0]: setting an array"),
    ],
)
def test_a_bad_batch_file_is_refused_naming_the_file_and_entry(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path, batch: Any, message: str
) -> None:
    address = ("--address", daemon.address)
    run(capsys, "create-table", "emb", "--rows", "100", "--dim", "4", *address)
    path = tmp_path / "step.json"
    path.write_text(json.dumps(batch))
    assert main(["batch", str(path), *address]) == EXIT_FAILURE
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error, error
    assert as_json(capsys, "describe", "emb", *address)["step"] == 0


def test_a_file_flag_is_named_when_its_file_cannot_be_read_and_no_flag_is_abbreviated(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    address = ("--address", daemon.address)
    run(capsys, "create-table", "emb", "--rows", "100", "--dim", "2", *address)
    missing = str(tmp_path / "missing.npy")
    assert main(["push", "emb", "--keys", "1", "--grads-file", missing, *address]) == EXIT_FAILURE
    assert f"--grads-file {missing}: cannot read it" in capsys.readouterr().err
    assert main(["lookup", "emb", "--keys-file", missing, *address]) == EXIT_FAILURE
    assert f"--keys-file {missing}: cannot read it" in capsys.readouterr().err
    # `--grads 1,1` was taken for --grads-file and read as a file named "1,1".
    with pytest.raises(SystemExit) as usage:
        main(["push", "emb", "--keys", "1", "--grads", "1,1", *address])
    assert usage.value.code == EXIT_USAGE
    assert "unrecognized arguments: --grads (did you mean --grads-file?)" in capsys.readouterr().err
    path = tmp_path / "bad.json"
    path.write_text('{"pushes": [')
    assert main(["batch", str(path), *address]) == EXIT_FAILURE
    assert f"{path}: not a JSON file" in capsys.readouterr().err
    assert as_json(capsys, "describe", "emb", *address)["step"] == 0


def test_an_unfinished_import_can_be_dropped_and_is_named_when_its_name_is_taken(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ("--address", daemon.address)
    with EngramClient(daemon.address) as client:
        client.create(TableSpec("emb", 10, 2), importing=True)
    # It said only "already exists", and drop-table failed on "does not exist yet", so the
    # name stayed taken until an import of it ran again.
    assert main(["create-table", "emb", "--rows", "10", "--dim", "2", *address]) == EXIT_FAILURE
    assert "already exists as an unfinished import" in capsys.readouterr().err
    # `tables` said "no tables" while the hidden import held its disk.
    assert as_json(capsys, "tables", *address) == {"tables": [], "unfinished_imports": ["emb"]}
    assert "unfinished imports (hidden" in run(capsys, "tables", *address)
    assert as_json(capsys, "drop-table", "emb", "--yes", *address) == {"dropped": "emb"}
    assert as_json(capsys, "tables", *address) == {"tables": []}
    run(capsys, "create-table", "emb", "--rows", "10", "--dim", "2", *address)
    assert as_json(capsys, "describe", "emb", *address)["num_rows"] == 10


def test_drop_table_asks_first(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address = ("--address", daemon.address)
    run(capsys, "create-table", "emb", "--rows", "10", "--dim", "2", *address)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["drop-table", "emb", *address]) == EXIT_USAGE
    assert "--yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda: "emx")
    assert main(["drop-table", "emb", *address]) == EXIT_DECLINED
    assert "not dropped" in capsys.readouterr().err
    assert as_json(capsys, "tables", *address)["tables"][0]["name"] == "emb"
    monkeypatch.setattr("builtins.input", lambda: "emb")
    assert "dropped emb" in run(capsys, "drop-table", "emb", *address)
    assert as_json(capsys, "tables", *address) == {"tables": []}
    run(capsys, "create-table", "emb", "--rows", "10", "--dim", "2", *address)
    assert as_json(capsys, "drop-table", "emb", "--yes", *address) == {"dropped": "emb"}
    assert main(["drop-table", "emb", "--yes", *address]) == EXIT_FAILURE


def test_restore_asks_first(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address = ("--address", daemon.address)
    run(capsys, "create-table", "emb", "--rows", "10", "--dim", "2", "--init", "zeros", *address)
    run(capsys, "checkpoint", *address)
    run(capsys, "push", "emb", "--keys", "1", "--fill", "1", *address)
    pushed = as_json(capsys, "lookup", "emb", "--keys", "1", *address)["rows"]
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["restore", *address]) == EXIT_USAGE
    assert "--yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda: "yes")
    assert main(["restore", *address]) == EXIT_DECLINED
    captured = capsys.readouterr()
    assert f"Restoring {daemon.address} to checkpoint each daemon's latest" in captured.out
    assert "not restored" in captured.err
    assert as_json(capsys, "lookup", "emb", "--keys", "1", *address)["rows"] == pushed
    monkeypatch.setattr("builtins.input", lambda: "restore")
    assert "restored checkpoint 1" in run(capsys, "restore", "1", *address)
    assert as_json(capsys, "lookup", "emb", "--keys", "1", *address)["rows"] == [[0.0, 0.0]]


def test_create_tables_sizes_an_engram_config(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    config = EngramConfig.from_json(ENGRAM_CONFIG)
    mapping = hash_mapping(config)
    address = ("--address", daemon.address)
    flags = ("--engram-config", str(ENGRAM_CONFIG), "--prefix", "m-L", *address)
    plans = as_json(capsys, "create-tables", *flags, "--dry-run")["tables"]
    assert [(p["name"], p["num_rows"], p["dim"]) for p in plans] == [
        (f"m-L{layer}", mapping.layer_table_rows(layer), 8) for layer in config.layer_ids
    ]
    assert as_json(capsys, "tables", *address) == {"tables": []}, "a dry run creates nothing"
    created = as_json(capsys, "create-tables", *flags, "--optimizer", "adam")["tables"]
    assert [(t["name"], t["num_rows"], t["optimizer"]) for t in created] == [
        (p["name"], p["num_rows"], "adam") for p in plans
    ]
    assert all(t["hash_fingerprint"] for t in created)
    ids = np.array([[17, 4242, 99, 1003, 5]])
    reply = as_json(
        capsys, "lookup-tokens", "m-L1", "--token-ids", ",".join(map(str, ids[0])), *address
    )
    with EngramClient(daemon.address) as client:
        expected = client.lookup("m-L1", mapping.row_keys(ids)[1])
    np.testing.assert_array_equal(np.array(reply["rows"], np.float32), expected)


def test_a_table_sharded_over_three_daemons_is_checkpointed_and_restored_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ExitStack() as stack:
        daemons = [stack.enter_context(daemon_thread(tmp_path / f"d{i}")) for i in range(3)]
        address = ("--address", ",".join(d.address for d in daemons))
        info = as_json(capsys, "create-table", "emb", "--rows", "3000", "--dim", "4", *address)
        assert (info["num_rows"], info["shards"]) == (3000, 3)
        keys = "5,1500,2999"
        run(capsys, "push", "emb", "--keys", keys, "--fill", "1", *address)
        saved = as_json(capsys, "lookup", "emb", "--keys", keys, *address)["rows"]
        checkpoints = as_json(capsys, "checkpoint", *address)["checkpoints"]
        assert [c["id"] for c in checkpoints] == [1, 1, 1]
        run(capsys, "push", "emb", "--keys", keys, "--fill", "1", *address)
        assert as_json(capsys, "lookup", "emb", "--keys", keys, *address)["rows"] != saved
        restored = as_json(capsys, "restore", "1,1,1", "--yes", *address)["checkpoints"]
        assert [c["id"] for c in restored] == [1, 1, 1]
        assert as_json(capsys, "lookup", "emb", "--keys", keys, *address)["rows"] == saved
        stats = as_json(capsys, "stats", *address)["shards"]
        assert [s["address"] for s in stats] == [d.address for d in daemons]
        assert main(["restore", "1,1", "--yes", *address]) == EXIT_FAILURE
        assert "2 checkpoint ids for 3 shards" in capsys.readouterr().err


def test_import_and_export_show_rows_per_second_and_the_time_left(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engram_cli import file_verbs

    clock = iter([0.0, 2.0, 2.1, 4.0, 5.0])
    monkeypatch.setattr("engram_cli.file_verbs.time.monotonic", lambda: next(clock))
    line = file_verbs.ProgressLine(quiet=False)
    line("L1", 0, 1000)
    line("L1", 400, 1000)  # 400 rows in 2 s: 200 rows/s, 600 rows left
    line("L1", 410, 1000)  # within half a second of the last line: not shown
    line("L1", 1000, 1000)
    line("L2", 0, 10)
    shown = capsys.readouterr().err
    assert "L1: 400/1000 rows, 200 rows/s, ETA 3 s" in shown
    assert "410/1000" not in shown
    assert "L1: 1000/1000 rows, 250 rows/s, ETA 0 s\n" in shown
    assert shown.endswith("L2: 0/10 rows")
    # A table done in one slice, at once: no rate (it used to read 10,000,000,000,000 rows/s).
    clock = iter([7.0, 7.0])
    line("L3", 10, 10)
    assert capsys.readouterr().err == "\n\rL3: 10/10 rows\n"
    quiet = file_verbs.ProgressLine(quiet=True)
    quiet("L1", 400, 1000)
    assert capsys.readouterr().err == ""


def test_a_misspelt_flag_gets_its_verbs_usage_and_the_closest_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["tables", "--adress", "127.0.0.1:1"])
    assert refused.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    # It used to print the top-level usage ("engram-store [-h] [--version] ... VERB").
    assert err.startswith("usage: engram-store tables ")
    assert err.rstrip().endswith(
        "engram-store tables: error: unrecognized arguments: --adress (did you mean --address?)"
    )
    with pytest.raises(SystemExit):
        main(["lookup", "t", "--keys-fil=k.npy"])
    assert "(did you mean --keys-file?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["create-tables", "--prest", "deepseek-v4.1-flash"])  # a flag of a group
    assert "(did you mean --preset?)" in capsys.readouterr().err
