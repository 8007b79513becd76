"""The `engram-store` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engram_cli import EXIT_FAILURE, main
from store import Table


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
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"x" * 10)
    assert main(["inspect", str(foreign)]) == EXIT_FAILURE
    assert "too short for a table header" in caplog.text


def test_console_script_is_installed() -> None:
    scripts = Path(sys.executable).parent
    result = subprocess.run(
        [str(scripts / "engram-store"), "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("engram-store ")
