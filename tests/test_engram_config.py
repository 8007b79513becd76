"""An Engram config file that is not one is refused naming the file, by the client API and
by `engram-store create-tables` (exit 3, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from client.config import EngramConfig
from engram_cli import EXIT_FAILURE, main

TOKENIZER = str(REPO_ROOT / "data" / "engram-hash" / "tokenizer.json")

BAD_FILES = [
    # Before, the JSON decoder's message alone, without the file's name.
    ('{"max_ngram_size": ', "not a JSON Engram config: Expecting value"),
    ("[" * 100_000 + "]" * 100_000, "not a JSON Engram config"),
    ("[1, 2]", "an Engram config is a JSON object"),
    ('{"max_ngram_size": 3}', r"tokenizer_name_or_path \(a path\) is required"),
    # Before, a TypeError from os.path.join.
    ('{"tokenizer_name_or_path": 7}', r"tokenizer_name_or_path \(a path\) is required"),
    (json.dumps({"tokenizer_name_or_path": TOKENIZER, "heads": 2}), "unknown .* fields"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_a_file_that_is_not_an_engram_config_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        EngramConfig.from_json(path)
    command = ["create-tables", "--engram-config", str(path), "--dry-run"]
    assert main([*command, "--address", "127.0.0.1:1"]) == EXIT_FAILURE
    assert str(path) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_ngram_size", 1, "max_ngram_size must be at least 2"),
        ("max_ngram_size", "3", "max_ngram_size must be an integer"),
        ("n_head_per_ngram", 0, "n_head_per_ngram must be a positive integer"),
        ("layer_ids", [], "layer_ids must name at least one layer"),
        ("seed", -1, "seed must be a non-negative integer"),
        ("pad_id", 1.5, "pad_id must be an integer token id"),
    ],
)
def test_a_config_field_out_of_its_range_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: object, message: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"tokenizer_name_or_path": TOKENIZER, field: value}))
    command = ["create-tables", "--engram-config", str(path), "--dry-run"]
    assert main([*command, "--address", "127.0.0.1:1"]) == EXIT_FAILURE
    assert message in capsys.readouterr().err
