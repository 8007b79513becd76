from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = Path(
    os.environ.get(
        "ENGRAM_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference" / "engram-hash"
    )
)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The published reference's outputs (shared/reference/engram-hash beside the checkout)."""
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
