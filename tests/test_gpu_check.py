"""scripts/gpu_check.sh, the one run of the checks that need CUDA, refuses plainly where
there is no CUDA device (it runs for real only on a GPU machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the refusal is moot")
def test_the_gpu_check_refuses_without_a_cuda_device(tmp_path: Path) -> None:
    run = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh")],
        env={"PYTHON": sys.executable, "OUT": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr
    assert "no CUDA device" in run.stderr
