"""Every benchmark runs end to end in a tiny configuration, so none can rot unnoticed. The
numbers of such runs mean nothing; that each prints its JSON line with its fields does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

TINY = {
    "gather.py": ["--rows", "20000", "--keys", "5000", "--repeats", "1"],
    "hashing.py": ["--batch", "2", "--seq", "64", "--repeats", "1"],
    "store_rpc.py": ["--rows", "20000", "--batch", "2048", "--repeats", "1"],
    "push_safety.py": ["--rounds", "1", "--rows", "20000", "--batch", "2048"],
    "train_steps.py": ["--segment", "1", "--rounds", "1", "--batch", "2"],
    "serving.py": ["--rows", "20000", "--steps", "10", "--repeats", "1"],
    "beyond_ram.py": ["--rows", "50000", "--steps", "5"],
}
EXPECTED_FIELDS = {
    "serving.py": [
        "fp8_dequant_vs_bf16_gather",
        "import_vs_sequential_write",
        "decode_shared_buffers_p50_us",
        "shared_buffers_p50_vs_in_process",
        "four_readers_vs_one",
    ],
    "store_rpc.py": ["grpc_lookup_rows_per_s", "socket_copy_rows_per_s"],
    "beyond_ram.py": ["cold_steps_per_s", "warm_steps_per_s", "cached_vs_in_ram"],
}


def test_every_benchmark_has_a_tiny_run() -> None:
    scripts = {p.name for p in (REPO_ROOT / "bench").glob("*.py") if not p.name.startswith("_")}
    assert scripts - {"compare_builds.py"} == set(TINY)


@pytest.mark.parametrize("script", sorted(TINY))
def test_a_benchmark_runs_and_reports(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), *TINY[script]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("{")][-1]
    report = json.loads(line)
    for field in EXPECTED_FIELDS.get(script, []):
        assert report[field] > 0, field
