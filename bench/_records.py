"""Benchmark records in `bench/results/`: one JSON file per benchmark, holding the run's
machine, date, commit and command beside every result (value, baseline, ratio)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "bench", "results")


def machine() -> dict[str, Any]:
    """What the numbers depend on: the CPU, its cores, the memory, the kernel, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        memory_gib = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def commit() -> str:
    """The checkout's commit, with `+changes` when tracked files outside `bench/results/`
    differ from it (the numbers then belong to no commit exactly)."""
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        changed = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":!bench/results"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed else "")


def new_record(
    benchmark: str, mode: str, command: list[str], seconds: float, line: dict[str, Any]
) -> dict[str, Any]:
    """The record of one benchmark run from the JSON line it printed."""
    results = line.pop("results", [])
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "mode": mode,
        "command": command,
        "seconds": round(seconds, 1),
        "results": results,
        "details": line,
    }


def write(record: dict[str, Any], directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{record['benchmark']}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1, allow_nan=True)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path


def read_all(directory: str) -> list[dict[str, Any]]:
    """Every benchmark record in `directory` (not the evidence experiment's), by name."""
    records = []
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json"):
                with open(os.path.join(directory, name)) as f:
                    records.append(json.load(f))
    return records
