from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from store.local_token import RUNTIME_DIR_VARIABLE

REPO_ROOT = Path(__file__).resolve().parent.parent

# The daemons the tests start publish their local tokens (store/local_token.py) in a
# directory of the test run's own, not in the user's home.
os.environ.setdefault(RUNTIME_DIR_VARIABLE, tempfile.mkdtemp(prefix="engram-runtime-"))
atexit.register(shutil.rmtree, os.environ[RUNTIME_DIR_VARIABLE], ignore_errors=True)
REFERENCE_DIR = Path(os.environ.get("ENGRAM_REFERENCE_DIR", REPO_ROOT / "data" / "engram-hash"))


# Build outputs, environments and caches: not part of the repository's sources.
NOT_SOURCES = {".git", ".venv", "target", "out", "__pycache__", ".pytest_cache", ".mypy_cache",
               ".ruff_cache"}  # fmt: skip


def source_files() -> list[str]:
    """The repository's files (relative paths): git's list in a checkout (tracked, and new
    files not ignored), else every file outside build outputs and caches."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        listed = []
        for directory, subdirectories, files in os.walk(REPO_ROOT):
            subdirectories[:] = [d for d in subdirectories if d not in NOT_SOURCES]
            listed += [os.path.relpath(os.path.join(directory, f), REPO_ROOT) for f in files]
    return sorted(f for f in listed if (REPO_ROOT / f).is_file())


@pytest.fixture
def as_a_user() -> list[str]:
    """A command prefix under which file permissions bind the daemon."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions would not bind the daemon")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@pytest.fixture
def shm(tmp_path: Path) -> Path:
    """A private shared-buffer directory (instead of /dev/shm) for a daemon and its clients."""
    directory = tmp_path / "shm"
    directory.mkdir()
    return directory


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The published reference's outputs (data/engram-hash, or ENGRAM_REFERENCE_DIR)."""
    if not (REFERENCE_DIR / "cases.json").is_file():
        pytest.fail(
            f"reference vectors not found at {REFERENCE_DIR}; set ENGRAM_REFERENCE_DIR",
            pytrace=False,
        )
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_cases(reference_dir: Path) -> dict[str, Any]:
    cases: dict[str, Any] = json.loads((reference_dir / "cases.json").read_text())
    return cases


@pytest.fixture(scope="session")
def tokenizer_path(reference_dir: Path) -> Path:
    return reference_dir / "tokenizer.json"


@pytest.fixture(scope="session")
def tiny_engram(tokenizer_path: Path) -> tuple[Any, Any]:
    """A small Engram configuration (layer 1, 2- and 3-grams, 2 heads of 8 dims) and its
    hash mapping, for tests of the PyTorch layer."""
    from client import NgramHashMapping
    from client.config import EngramConfig

    config = EngramConfig(
        str(tokenizer_path),
        engram_vocab_size=[53, 59],
        n_embed_per_ngram=16,
        n_head_per_ngram=2,
        layer_ids=[1],
        pad_id=0,
    )
    mapping = NgramHashMapping(
        config.engram_vocab_size,
        config.max_ngram_size,
        config.n_embed_per_ngram,
        config.n_head_per_ngram,
        config.layer_ids,
        tokenizer_path,
        config.pad_id,
        config.seed,
    )
    return config, mapping
