"""README's code blocks run as written: each on its own, twice in a row, from the
repository's root as a user would, leaving nothing behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README, flags=re.DOTALL)
# The first screen's two commands are this test run itself (`./scripts/test.sh`) and the
# examples that tests/test_examples.py runs (`./scripts/demo.sh`); the benchmark suite's
# commands take minutes, and tests/test_benchmarks.py runs the suite in its tiny mode.
RUN_ELSEWHERE = ("./scripts/demo.sh", "bench/suite.py")
RUNNABLE = [
    (i, kind, code)
    for i, (kind, code) in enumerate(BLOCKS)
    if not any(command in code for command in RUN_ELSEWHERE)
]
SCRATCH = {".git", ".venv", "target", ".pytest_cache", ".mypy_cache", ".ruff_cache", "bench"}


def repository_files() -> set[str]:
    """Every file under the repository's root but build outputs and caches."""
    found: set[str] = set()
    for directory, subdirectories, files in os.walk(REPO_ROOT):
        subdirectories[:] = [d for d in subdirectories if d not in SCRATCH and d != "__pycache__"]
        found.update(os.path.join(directory, f) for f in files)
    return found


def test_the_readme_has_runnable_blocks() -> None:
    kinds = [kind for _, kind, _ in RUNNABLE]
    assert kinds.count("python") >= 3 and kinds.count("bash") >= 1


@pytest.mark.parametrize(("index", "kind", "code"), RUNNABLE, ids=lambda v: str(v)[:12])
def test_a_readme_block_runs_alone_twice_and_leaves_nothing(
    index: int, kind: str, code: str
) -> None:
    before = repository_files()
    command = [sys.executable, "-c", code] if kind == "python" else ["bash", "-euo", "pipefail"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("ENGRAM_STORE_")}
    for attempt in (1, 2):
        result = subprocess.run(
            command,
            input=code if kind == "bash" else None,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, (
            f"README block {index} ({kind}), run {attempt}:\n{result.stdout}\n{result.stderr}"
        )
    assert repository_files() == before, "the block left files in the repository"


def test_the_results_in_the_readme_are_those_of_the_records() -> None:
    """README's results sections are written from bench/results by the suite, never by
    hand: they must equal what the committed records give."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import _readme
        import _records
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    records = _records.read_all(_records.RESULTS_DIR)
    evidence = json.loads(
        (REPO_ROOT / "bench" / "results" / "evidence" / "results.json").read_text()
    )
    assert records, "bench/results holds no benchmark records"
    assert _readme.regenerate(README, records, evidence) == README, (
        "README's results differ from bench/results: run python bench/suite.py --render-only"
    )
