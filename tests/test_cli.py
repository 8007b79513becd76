"""The `engram-store` command line."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engram_cli import EXIT_FAILURE, EXIT_USAGE, build_parser, main
from engram_cli.exit_codes import MEANINGS
from store import Table
from store._proto.engram.store.v1 import store_pb2 as pb


def test_inspect_describes_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.engram"
    table = Table.create(path, 300, 12, dtype="bfloat16", seed=7)
    table.write_rows([1, 2], [[1.0] * 12, [2.0] * 12])
    table.flush()
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_rows"] == 300 and info["dim"] == 12 and info["dtype"] == "bfloat16"
    assert info["written_rows"] == 2 and info["seed"] == 7
    assert main(["inspect", str(path)]) == 0
    assert "written rows  2" in capsys.readouterr().out


def test_inspect_of_a_foreign_file_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"x" * 10)
    assert main(["inspect", str(foreign)]) == EXIT_FAILURE
    assert "too short for a table header" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # Before: a traceback (ValueError from int()) while the parser was being built.
        ("ENGRAM_STORE_PORT", "abc", r"ENGRAM_STORE_PORT='abc' \(read for --port\): invalid"),
        # Before: taken as false without a word.
        ("ENGRAM_STORE_READ_ONLY", "maybe", "ENGRAM_STORE_READ_ONLY='maybe' .* must be one of"),
        # Before: a traceback from logging.basicConfig.
        ("ENGRAM_STORE_LOG_LEVEL", "LOUD", "must be one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_a_variable_a_flag_cannot_take_is_a_usage_error_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--data-dir", str(tmp_path / "data")])
    assert stopped.value.code == EXIT_USAGE
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "data").exists()


def test_a_variable_is_read_only_by_the_verbs_that_have_its_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENGRAM_STORE_PORT", "abc")  # a serve flag: inspect has none
    monkeypatch.setenv("ENGRAM_STORE_JSON", "yes")
    path = tmp_path / "t.engram"
    Table.create(path, 10, 2)
    assert main(["inspect", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["num_rows"] == 10
    monkeypatch.setenv("ENGRAM_STORE_JSON", "off")
    assert main(["inspect", str(path)]) == 0
    assert "num rows" in capsys.readouterr().out


def test_console_script_is_installed() -> None:
    scripts = Path(sys.executable).parent
    result = subprocess.run(
        [str(scripts / "engram-store"), "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("engram-store ")


def verbs_and_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    subparsers = next(
        a for a in build_parser().parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    return list(subparsers.choices.items())


def test_top_level_help_lists_every_verb_and_the_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for name, _ in verbs_and_parsers():
        assert re.search(rf"^    {re.escape(name)} +\w", text, re.MULTILINE), name
    for code, meaning in MEANINGS.items():
        assert f"  {code}  {meaning[:20]}" in " ".join(text.split("\n")), code


def test_every_verb_covers_every_rpc() -> None:
    verbs = {name for name, _ in verbs_and_parsers()}
    # Each RPC of the service, and the verb that makes it.
    by_rpc = {
        "CreateTable": "create-table",
        "DropTable": "drop-table",
        "ListTables": "tables",
        "DescribeTable": "describe",
        "Lookup": "lookup",
        "LookupTokens": "lookup-tokens",
        "Push": "push",
        "Batch": "batch",
        "Checkpoint": "checkpoint",
        "ListCheckpoints": "checkpoints",
        "Restore": "restore",
        "Stats": "stats",
        "Verify": "verify",
        "WriteRows": "import",
        "FinishImport": "import",
        "TuneTable": "tune-table",
        "ChangedRows": "changed-rows",
    }
    rpcs = {m.name for m in pb.DESCRIPTOR.services_by_name["EngramStore"].methods}
    assert rpcs == set(by_rpc), "a new RPC needs a verb"
    assert set(by_rpc.values()) <= verbs


@pytest.mark.parametrize("verb", [name for name, _ in verbs_and_parsers()])
def test_each_verb_explains_itself_and_every_flag(verb: str) -> None:
    parser = dict(verbs_and_parsers())[verb]
    text = parser.format_help()
    assert "examples:\n  engram-store " + verb in text
    description = (parser.description or "").splitlines()[0]
    assert description.endswith(".") and len(description) > 10
    for action in parser._actions:
        assert action.help, f"{verb} {action.option_strings or action.dest} has no help"
        if action.option_strings and action.nargs != 0 and action.default not in (None, ""):
            assert f"(default: {action.default})" in " ".join(text.split()), action.dest
