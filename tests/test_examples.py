"""Every example runs end to end."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import REPO_ROOT
from tokenizers import Tokenizer

from client import NgramHashMapping

TEXT = "Only Alexander the Great could tame the horse."


def run_example(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """examples/`script` run with `args`, its output captured as text."""
    command = [sys.executable, str(REPO_ROOT / "examples" / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_quickstart(tokenizer_path: Path, tmp_path: Path) -> None:
    result = run_example(
        "quickstart.py",
        *("--tokenizer", str(tokenizer_path), "--dim", "8", "--text", TEXT),
        *("--data-dir", str(tmp_path)),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    ids = Tokenizer.from_file(str(tokenizer_path)).encode(TEXT, add_special_tokens=False).ids
    mapping = NgramHashMapping([40960, 40960], 3, 64, 8, [1, 15], tokenizer_path, 0, 0)
    rows = {layer: len(np.unique(k)) for layer, k in mapping.row_keys([ids]).items()}
    out = result.stdout
    assert f"layer  1: 656832 x 8 bfloat16 rows; token lookup (1, {len(ids)}, 16, 8)" in out
    assert f"Adam step 1 on {rows[1]} rows" in out
    assert f"checkpoint 1: 2 tables, {rows[1] + rows[15]} rows" in out
    assert "daemon stopped with exit code 0" in out
    assert "stopped; tables flushed" in result.stderr


def test_tiny_language_model_trains_with_both_backends() -> None:
    spec = importlib.util.spec_from_file_location(
        "tiny_engram_lm", REPO_ROOT / "examples" / "tiny_engram_lm.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    for backend in ("store", "local"):
        result = module.train(backend, steps=8, batch=4, max_files=5, progress=False)
        assert result["last_loss"] < result["first_loss"], backend
        assert result["tokens_per_s"] > 0


def test_the_evidence_experiment_reports_every_model_and_the_ablation(tmp_path: Path) -> None:
    result = run_example(
        "evidence.py",
        *("--steps", "4", "--eval-every", "2", "--seeds", "2", "--max-files", "40"),
        *("--out", str(tmp_path)),
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "results.json").read_text())
    runs = record["runs"]
    assert sorted((r["model"], r["seed"]) for r in runs) == [
        (model, seed) for model in ("baseline", "engram", "wide") for seed in (0, 1)
    ]
    for run in runs:
        assert [step for step, _ in run["curve"]] == [0, 2, 4]
        assert all(np.isfinite(loss) for _, loss in run["curve"])
    engram = [r for r in runs if r["model"] == "engram"]
    assert all("final_loss_engram_zeroed" in r for r in engram)
    # The wide baseline matches the Engram model's parameters (tables included) within 1%.
    wide = next(r for r in runs if r["model"] == "wide")
    assert abs(wide["parameters"] - engram[0]["parameters"]) < 0.01 * engram[0]["parameters"]
    summary = record["summary"]
    assert summary["gain_over_baseline"]["n"] == 2 and summary["gain_over_wide"]["n"] == 2
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "against baseline (the same model)" in result.stdout


def _shape(line: str) -> str:
    """A printed line with its figures, paths and quoted text blanked: what a run must
    reproduce of README's sample, whatever the machine's timings."""
    line = re.sub(r"'[^']*'", "'…'", line)
    line = re.sub(r"(daemon log|written): \S+/", r"\1: …/", line)
    return re.sub(r"[-+]?\d[\d.,]*", "#", line).rstrip()


def _demo_sample() -> list[str]:
    """The lines README shows under "What the demo prints"."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### What the demo prints", 1)[1]
    return section.split("```text\n", 1)[1].split("```", 1)[0].splitlines()


def test_the_demo_prints_what_readme_shows_and_keeps_its_files(tmp_path: Path) -> None:
    """Rough edges of a first run: the demo's daemon logs to a file named in the output
    (not between the demo's lines), its figures stay where the user can open them, and both
    parts print README's sample line for line (figures aside)."""
    log = tmp_path / "daemon.log"
    quickstart = run_example("quickstart.py", "--daemon-log", str(log), timeout=120)
    assert quickstart.returncode == 0, quickstart.stderr
    assert quickstart.stderr == "", "the daemon's log goes to its file, not the demo's output"
    assert "stopped; tables flushed" in log.read_text()
    evidence = run_example(
        "evidence.py",
        *("--quick", "--models", "baseline", "engram", "--steps", "2", "--max-files", "20"),
        *("--out", str(tmp_path / "results")),
        timeout=240,
    )
    assert evidence.returncode == 0, evidence.stderr
    printed = (quickstart.stdout + evidence.stdout).splitlines()
    assert [_shape(line) for line in printed] == [_shape(line) for line in _demo_sample()]
    assert printed[1] == f"daemon log: {log}"
    assert printed[-1] == f"written: {tmp_path / 'results' / 'results.json'} and curves.png"
    # demo.sh gives both parts its results folder, and removes nothing of it on exit.
    demo = (REPO_ROOT / "scripts" / "demo.sh").read_text()
    assert 'results="${DEMO_RESULTS:-demo-results}"' in demo
    assert '--daemon-log "$results/daemon.log"' in demo and '--out "$results"' in demo
    assert "trap" not in demo and "rm -rf" not in demo


def test_the_fine_tuning_loop_runs_end_to_end(tmp_path: Path) -> None:
    """examples/finetune_memory.py in its quick mode: a released model's FP8 Engram tables
    imported for training, fine-tuned three ways, exported to FP8 and swapped into a serving
    daemon under reads (the loop, not a result: a few steps)."""
    result = run_example("finetune_memory.py", "--quick", "--out", str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "results.json").read_text())
    runs = record["runs"]
    assert sorted(r["variant"] for r in runs) == ["frozen", "tables", "tables+dense"]
    for run in runs:
        assert run["curve"][0] == [0, run["domain_before"]]
        assert all(np.isfinite(loss) for _, loss in run["curve"])
    # Every run starts from the same released model; training moved each.
    assert len({round(r["domain_before"], 9) for r in runs}) == 1
    assert all(r["domain_after"] != r["domain_before"] for r in runs)
    shipping = record["shipping"]
    assert shipping["reads_during_the_swap"] > 0 and shipping["reads_of_neither_version"] == 0
    assert shipping["served_rows_changed"] and shipping["served_hash_identity"]
    assert record["summary"]["tables_domain_after"]["n"] == 1
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "written:" in result.stdout
