"""The repository stands on its own: a copy of the checkout with no `shared/` beside it (as
a user's clone has none) runs the examples, the docs' blocks and the tests that read the
reference data. CI runs this on every change, so a new dependency on a file outside the
repository fails here, not in a user's first minute."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, source_files


@pytest.mark.slow
def test_a_checkout_without_shared_beside_it_runs_the_examples_and_reference_tests(
    tmp_path: Path,
) -> None:
    clone = tmp_path / "workspace" / "engram-store"
    for name in source_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, clone / name)
    for built in glob.glob(str(REPO_ROOT / "store" / "_native*.so")):  # the compiled extension
        shutil.copy2(built, clone / "store")
    assert not (clone.parent / "shared").exists()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")},
        "PYTHONPATH": str(clone),  # the copy's packages, not the checkout's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def run(*command: str) -> str:
        result = subprocess.run(
            command, cwd=clone, env=env, capture_output=True, text=True, timeout=280
        )
        assert result.returncode == 0, (
            f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
        return result.stdout

    where = run(
        sys.executable, "-c", "import store, client; print(store.__file__, client.__file__)"
    )
    assert where.count(str(clone)) == 2, where
    assert "daemon stopped with exit code 0" in run(sys.executable, "examples/quickstart.py")
    assert "loss" in run(
        sys.executable, "examples/tiny_engram_lm.py", "--steps", "2", "--max-files", "3"
    )
    report = run(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_hashing_reference.py",
        "tests/test_reference_copy.py",
        "tests/test_docs.py",
        # README's python blocks (the docs' read no more than README's: the reference-copy
        # test checks that no page names the workspace's copy).
        "-k",
        "README and not bash",
    )
    assert "failed" not in report and "error" not in report, report
    assert "set ENGRAM_REFERENCE_SOURCE to their directory" in run(
        sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
        "tests/test_reference_copy.py",
    )  # fmt: skip
