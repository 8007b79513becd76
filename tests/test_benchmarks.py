"""The benchmark suite runs every benchmark end to end in its tiny mode, so none can rot
unnoticed: each writes a record with its machine, date, commit and results (value, baseline,
ratio), a chart, and the docs' results pages from the records. The numbers of such runs
mean nothing; that they are produced and well formed does."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
from _plan import BENCHMARKS

pytestmark = pytest.mark.slow
NOT_BENCHMARKS = {"compare_builds.py", "suite.py"}


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Runs `bench/suite.py --mode tiny` once into a temporary results directory and a copy
    of the docs' results pages (the evidence record copied beside, as in bench/results)."""
    root = tmp_path_factory.mktemp("suite")
    results = root / "results"
    shutil.copytree(REPO_ROOT / "bench" / "results" / "evidence", results / "evidence")
    docs = root / "docs"
    docs.mkdir()
    for page in ("benchmarks.md", "evidence.md"):
        shutil.copy(REPO_ROOT / "docs" / page, docs / page)
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "suite.py"), "--mode", "tiny",
         "--results-dir", str(results), "--docs", str(docs)],
        capture_output=True, text=True, timeout=1200, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    return results, docs, done.stderr


def record(results: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((results / f"{name}.json").read_text())
    return loaded


def test_every_benchmark_script_is_in_the_suite() -> None:
    scripts = {p.name for p in (REPO_ROOT / "bench").glob("*.py") if not p.name.startswith("_")}
    assert scripts - NOT_BENCHMARKS == {f"{b.name}.py" for b in BENCHMARKS}
    assert all("tiny" in b.args for b in BENCHMARKS)


@pytest.mark.parametrize("name", [b.name for b in BENCHMARKS])
def test_a_benchmark_writes_a_record_and_a_chart(
    tiny_suite: tuple[Path, Path, str], name: str
) -> None:
    results, _, _ = tiny_suite
    written = record(results, name)
    assert written["benchmark"] == name and written["mode"] == "tiny"
    assert written["machine"]["cores"] == os.cpu_count()
    assert written["date"][:4].isdigit() and written["commit"]
    assert written["results"]
    for result in written["results"]:
        assert result["value"] >= 0 and result["baseline_value"] > 0, result
        assert math.isclose(result["ratio"], result["value"] / result["baseline_value"])
    assert (results / f"{name}.png").stat().st_size > 1000


def test_the_docs_copy_gets_every_record(tiny_suite: tuple[Path, Path, str]) -> None:
    results, docs, _ = tiny_suite
    text = (docs / "benchmarks.md").read_text()
    for benchmark in BENCHMARKS:
        assert benchmark.title in text
        for result in record(results, benchmark.name)["results"]:
            assert f"| {result['name']} |" in text
    assert "Engram's gain over baseline" in (docs / "evidence.md").read_text()


@pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
)
def test_lookups_are_measured_against_redis(tiny_suite: tuple[Path, Path, str]) -> None:
    results, _, _ = tiny_suite
    lookups = record(results, "lookups")
    assert lookups["details"]["redis"].startswith("redis-server")
    names = [r["name"] for r in lookups["results"]]
    assert any(n.startswith("Redis MGET") for n in names)
    assert any(n.startswith("gRPC messages vs Redis") for n in names)
