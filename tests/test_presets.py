"""Released models' Engram configs (client/presets.py): DeepSeek-V4.1-Flash's two tables,
pinned, planned without a tokenizer, checked against a tokenizer's compressed vocabulary,
and created by `engram-store create-tables --preset`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from daemon import daemon_process

from client import EngramClient
from client.config import EngramConfig
from client.engram_tables import create_engram_tables, plan_engram_tables

V41 = "deepseek-v4.1-flash"


def test_the_v41_preset_gives_its_two_tables_without_a_tokenizer() -> None:
    config = EngramConfig.preset(V41)
    plans = plan_engram_tables(config)
    assert [(p.name, p.layer, p.num_rows, p.dim, p.dtype) for p in plans] == [
        ("engram-L1", 1, 384_006_168, 256, "fp8_e4m3"),
        ("engram-L14", 14, 384_016_682, 256, "fp8_e4m3"),
    ]
    assert plans[0].head_sizes[:3] == [16_000_057, 16_000_079, 16_000_081]
    assert all(len(p.head_sizes) == 24 for p in plans), "(4 - 1) orders x 8 heads"
    everything = plans[0].head_sizes + plans[1].head_sizes
    assert len(set(everything)) == 48, "no prime is used twice, across orders or layers"
    assert min(plans[1].head_sizes) > max(plans[0].head_sizes)
    assert (config.max_ngram_size, config.n_head_per_ngram, config.pad_id, config.seed) == (
        4,
        8,
        2,
        0,
    )
    assert config.tokenizer_name_or_path == ""


def test_a_tokenizer_of_another_vocabulary_is_refused(tokenizer_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"compresses to \d+ ids, but deepseek-v4.1-flash .* 99092"
    ):
        EngramConfig.preset(V41, tokenizer=tokenizer_path)
    with pytest.raises(ValueError, match="unknown Engram preset 'gpt-9'"):
        EngramConfig.preset("gpt-9")


def test_create_tables_dry_run_of_the_preset_needs_no_daemon_or_tokenizer() -> None:
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "engram_cli",
            "create-tables",
            "--preset",
            V41,
            "--dry-run",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    tables = json.loads(shown.stdout)["tables"]
    assert [(t["num_rows"], t["dim"], t["dtype"]) for t in tables] == [
        (384_006_168, 256, "fp8_e4m3"),
        (384_016_682, 256, "fp8_e4m3"),
    ]
    both = subprocess.run(
        [
            sys.executable,
            "-m",
            "engram_cli",
            "create-tables",
            "--preset",
            V41,
            "--engram-config",
            "x.json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_create_tables_makes_the_presets_tables(tmp_path: Path, tokenizer_path: Path) -> None:
    """The full-size tables are sparse (no row written, no disk taken); the disk check is
    waived, as a daemon serving V4.1 from a larger disk would not need."""
    with daemon_process(tmp_path / "data", "--overcommit-disk") as (d, _):
        created = subprocess.run(
            [sys.executable, "-m", "engram_cli", "create-tables", "--preset", V41,
             "--address", d.address, "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        with EngramClient(d.address) as client:
            infos = {t.name: t for t in client.list_tables()}
            assert {n: (t.num_rows, t.dim, t.dtype) for n, t in infos.items()} == {
                "engram-L1": (384_006_168, 256, "fp8_e4m3"),
                "engram-L14": (384_016_682, 256, "fp8_e4m3"),
            }
            assert not any(t.hash_fingerprint for t in infos.values()), "no tokenizer, no hashing"
            # With a tokenizer (a scaled-down config here: the reference's tokenizer is not
            # V4.1's), the tables hash token ids themselves.
            scaled = dataclasses.replace(
                EngramConfig.preset(V41),
                engram_vocab_size=[1000, 1000, 1000],
                tokenizer_name_or_path=str(tokenizer_path),
            )
            made = create_engram_tables(client, scaled, prefix="small-L")
            assert all(t.hash_fingerprint and t.dtype == "fp8_e4m3" for t in made)
