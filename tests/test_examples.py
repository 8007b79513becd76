"""Every example runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def test_quickstart(tokenizer_path: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "examples" / "quickstart.py"),
            "--tokenizer",
            str(tokenizer_path),
            "--dim",
            "8",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "layer  1: table 656832 x 8 bfloat16" in result.stdout
    assert "after one SGD step" in result.stdout
