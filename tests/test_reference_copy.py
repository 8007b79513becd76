"""The repository's copy of the reference vectors (data/engram-hash) is the source's: the
workspace's shared/reference/engram-hash, where a checkout has one beside it."""

from __future__ import annotations

import os

import pytest
from conftest import REPO_ROOT, source_files

COPY = REPO_ROOT / "data" / "engram-hash"
SOURCE = REPO_ROOT.parent / "shared" / "reference" / "engram-hash"


def test_the_copy_holds_every_reference_file() -> None:
    names = {p.name for p in COPY.iterdir()}
    assert {"tokenizer.json", "cases.json", "compress_lookup.npy", "README.md"} <= names


@pytest.mark.skipif(
    not SOURCE.is_dir(), reason="no shared/reference/engram-hash beside this checkout to compare"
)
def test_the_copy_matches_its_source() -> None:
    for source in SOURCE.iterdir():
        copy = COPY / source.name
        assert copy.is_file(), f"{source.name} is missing from data/engram-hash"
        if source.name != "README.md":  # the copy's README adds its provenance
            assert copy.read_bytes() == source.read_bytes(), source.name


def test_no_code_reads_the_source_at_run_time() -> None:
    """Only this test may know where the copy came from: a user's clone has no such folder."""
    source = SOURCE.relative_to(REPO_ROOT.parent)
    needles = (source.as_posix(), f"{os.pardir}/{source.parts[0]}")
    for name in source_files():
        if name.endswith((".py", ".sh", ".toml")) and name != "tests/test_reference_copy.py":
            text = (REPO_ROOT / name).read_text(errors="replace")
            assert not any(n in text for n in needles), name
