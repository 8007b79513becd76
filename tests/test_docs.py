"""The documentation: README is the front door (at most 300 lines, one click from each
guide), and every code block of README and of docs/ runs as written: each on its own,
twice in a row, from the repository's root as a user would, leaving nothing behind. The
site itself is built strictly (`mkdocs build --strict`) by ./scripts/test.sh."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
PAGES = [README, *sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)]
# The first screen's two commands are this test run itself (`./scripts/test.sh`) and the
# examples that tests/test_examples.py runs (`./scripts/demo.sh`); the benchmark suite's
# commands take minutes, and tests/test_benchmarks.py runs the suite in its tiny mode.
RUN_ELSEWHERE = ("./scripts/demo.sh", "bench/suite.py")
BLOCKS = [
    (f"{page.relative_to(REPO_ROOT)}#{i}", kind, code)
    for page in PAGES
    for i, (kind, code) in enumerate(
        re.findall(r"```(python|bash)\n(.*?)```", page.read_text(), flags=re.DOTALL)
    )
    if not any(command in code for command in RUN_ELSEWHERE)
]
SCRATCH = {".git", ".venv", "target", ".pytest_cache", ".mypy_cache", ".ruff_cache", "bench"}
GUIDES = sorted((DOCS / "guides").glob("*.md"))


def repository_files() -> set[str]:
    """Every file under the repository's root but build outputs and caches."""
    found: set[str] = set()
    for directory, subdirectories, files in os.walk(REPO_ROOT):
        subdirectories[:] = [d for d in subdirectories if d not in SCRATCH and d != "__pycache__"]
        found.update(os.path.join(directory, f) for f in files)
    return found


def test_the_readme_is_a_front_door_one_click_from_each_guide() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    links = set(re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text))
    local = {link for link in links if not link.startswith("http")}
    assert all((REPO_ROOT / link).exists() for link in local), sorted(local)
    assert len(GUIDES) >= 4
    for guide in GUIDES:
        assert guide.relative_to(REPO_ROOT).as_posix() in local, guide.name


def test_the_pages_have_runnable_blocks() -> None:
    kinds = [kind for _, kind, _ in BLOCKS]
    assert kinds.count("python") >= 6 and kinds.count("bash") >= 4
    assert {where.split("#")[0] for where, _, _ in BLOCKS} >= {
        "README.md",
        "docs/guides/training.md",
        "docs/guides/production.md",
        "docs/guides/serving.md",
    }


@pytest.mark.parametrize(("where", "kind", "code"), BLOCKS, ids=[f"{w}-{k}" for w, k, _ in BLOCKS])
def test_a_block_runs_alone_twice_and_leaves_nothing(where: str, kind: str, code: str) -> None:
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
            f"{where} ({kind}), run {attempt}:\n{result.stdout}\n{result.stderr}"
        )
    assert repository_files() == before, "the block left files in the repository"


def test_the_results_pages_are_those_of_the_records() -> None:
    """The results pages' tables are written from bench/results by the suite, never by
    hand: they must equal what the committed records give."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import _pages
        import _records
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    records = _records.read_all(_records.RESULTS_DIR)
    experiments = {
        name: json.loads((REPO_ROOT / "bench" / "results" / name / "results.json").read_text())
        for name in ("evidence", "finetune")
    }
    assert records, "bench/results holds no benchmark records"
    pages = _pages.regenerate(DOCS, records, **experiments)
    assert len(pages) == 3
    for name, text in pages.items():
        assert (DOCS / name).read_text() == text, (
            f"docs/{name} differs from bench/results: run python bench/suite.py --render-only"
        )
