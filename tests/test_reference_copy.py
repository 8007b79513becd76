"""The repository's copy of the reference vectors (data/engram-hash) is the source's: the
directory ENGRAM_REFERENCE_SOURCE names, or the development workspace's copy beside the
checkout, where either is on disk (a user's clone needs neither)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import REPO_ROOT, source_files

COPY = REPO_ROOT / "data" / "engram-hash"
WORKSPACE_SOURCE = REPO_ROOT.parent / "shared" / "reference" / "engram-hash"
SOURCE = Path(os.environ.get("ENGRAM_REFERENCE_SOURCE", WORKSPACE_SOURCE))
SKIP_REASON = (
    "compares data/engram-hash with the reference files it was copied from, which are not on "
    "this machine: set ENGRAM_REFERENCE_SOURCE to their directory to run it (a clone needs "
    "nothing more; the copy's README names its source)"
)


def test_the_copy_holds_every_reference_file() -> None:
    names = {p.name for p in COPY.iterdir()}
    assert {"tokenizer.json", "cases.json", "compress_lookup.npy", "README.md"} <= names


def test_the_skip_reason_says_what_a_user_can_do() -> None:
    # It used to name a folder of the development workspace, which no user has.
    assert "shared/" not in SKIP_REASON and "ENGRAM_REFERENCE_SOURCE" in SKIP_REASON


@pytest.mark.skipif(not SOURCE.is_dir(), reason=SKIP_REASON)
def test_the_copy_matches_its_source() -> None:
    for source in SOURCE.iterdir():
        copy = COPY / source.name
        assert copy.is_file(), f"{source.name} is missing from data/engram-hash"
        if source.name != "README.md":  # the copy's README adds its provenance
            assert copy.read_bytes() == source.read_bytes(), source.name


def test_no_code_reads_the_source_at_run_time() -> None:
    """Only this test may know where the copy came from: a user's clone has no such folder."""
    source = WORKSPACE_SOURCE.relative_to(REPO_ROOT.parent)
    needles = (source.as_posix(), f"{os.pardir}/{source.parts[0]}")
    for name in source_files():
        # Markdown too: the code blocks of README and docs/ run in the tests.
        runs = name.endswith((".py", ".sh", ".toml", ".md")) and not name.startswith("data/")
        if runs and name != "tests/test_reference_copy.py":
            text = (REPO_ROOT / name).read_text(errors="replace")
            assert not any(n in text for n in needles), name
