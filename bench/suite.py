"""Every benchmark in one command, in bounded time: each script runs in a process of its
own, its JSON line becomes a record in `bench/results/<name>.json` (machine, date, commit,
command, and every result with its baseline and ratio) with a chart beside it
(`<name>.png`), and the docs' results pages (docs/benchmarks.md, docs/evidence.md) are
rewritten from the records.

    python bench/suite.py             # default: under 15 minutes on a 2-core machine
    python bench/suite.py --quick     # under 3 minutes, smaller tables
    python bench/suite.py --mode full # the scripts' own defaults, and beyond_ram (1.5x RAM of disk)
    python bench/suite.py --only lookups,pushes
    python bench/suite.py --render-only   # charts and docs pages from the records already there

`lookups` starts a `redis-server` from the OS packages (apt-get install redis-server);
without one it runs without the Redis baseline and says so. Exits 1 when a benchmark failed
or ran out of time (the others are still recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
import _charts
import _pages
import _records
from _plan import BENCHMARKS, BUDGET_S, Benchmark

DOCS = os.path.join(_records.ROOT, "docs")


def say(message: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def arguments(benchmark: Benchmark, mode: str) -> list[str]:
    args = list(benchmark.args[mode])
    if benchmark.name == "lookups" and shutil.which("redis-server") is None:
        say("lookups: redis-server is not installed (apt-get install redis-server): "
            "measuring without the Redis baseline")  # fmt: skip
        args.append("--skip-redis")
    return args


def run(benchmark: Benchmark, mode: str, seconds_left: float, results_dir: str) -> bool:
    """Runs one benchmark and records it; False when it failed or ran out of time."""
    args = arguments(benchmark, mode)
    say(f"{benchmark.name}: python {benchmark.script} {' '.join(args)}")
    began = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, os.path.join(_records.ROOT, benchmark.script), *args],
            capture_output=True,
            text=True,
            timeout=seconds_left,
            cwd=_records.ROOT,
            env={**os.environ, "PYTHONPATH": _records.ROOT},
        )
    except subprocess.TimeoutExpired:
        say(f"{benchmark.name}: stopped after {seconds_left:.0f} s, the suite's time budget")
        return False
    seconds = time.monotonic() - began
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        say(f"{benchmark.name}: failed (exit code {done.returncode}):\n{done.stderr[-3000:]}")
        return False
    record = _records.new_record(benchmark.name, mode, args, seconds, json.loads(lines[-1]))
    if not record["results"]:
        say(f"{benchmark.name}: reported no results: {record['details']}")
        return False
    path = _records.write(record, results_dir)
    _charts.draw(record, os.path.join(results_dir, f"{benchmark.name}.png"))
    say(f"{benchmark.name}: {seconds:.0f} s, {len(record['results'])} results in {path}")
    return True


def render(results_dir: str, docs_dir: str | None) -> None:
    records = _records.read_all(results_dir)
    for record in records:
        _charts.draw(record, os.path.join(results_dir, f"{record['benchmark']}.png"))
    if docs_dir is None:
        return
    experiments = {}
    for experiment in ("evidence", "finetune"):
        path = os.path.join(results_dir, experiment, "results.json")
        if os.path.exists(path):
            with open(path) as f:
                experiments[experiment] = json.load(f)
    pages = _pages.regenerate(docs_dir, records, **experiments)
    for name, text in pages.items():
        with open(os.path.join(docs_dir, name), "w") as f:
            f.write(text)
    say(f"{docs_dir}: results pages rewritten from {len(records)} records")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=list(BUDGET_S), default="default")
    parser.add_argument("--quick", action="store_const", const="quick", dest="mode")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument(
        "--results-dir", help="where records go (default: bench/results; tiny: a temporary one)"
    )
    parser.add_argument(
        "--docs", help="the docs folder whose results pages to rewrite (default: docs; tiny: none)"
    )
    parser.add_argument("--render-only", action="store_true", help="only charts and the docs")
    parser.add_argument(
        "--jobs",
        type=int,
        help="benchmarks run at once (default 1; tiny: 2). More than one skews every figure: "
        "for checking that the scripts run, not for measuring",
    )
    args = parser.parse_args()
    results_dir = args.results_dir or (
        tempfile.mkdtemp(prefix="engram-bench-") if args.mode == "tiny" else _records.RESULTS_DIR
    )
    docs = args.docs or (None if args.mode == "tiny" else DOCS)
    if args.render_only:
        render(results_dir, docs)
        return

    chosen = [b for b in BENCHMARKS if args.mode in b.args]
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {b.name for b in BENCHMARKS}
        if unknown:
            parser.error(f"--only: no benchmark named {', '.join(sorted(unknown))}")
        chosen = [b for b in chosen if b.name in names]
    skipped = [b.name for b in BENCHMARKS if args.mode not in b.args]
    if skipped:
        say(f"not run in {args.mode} mode: {', '.join(skipped)} (--mode full runs them)")
    deadline = time.monotonic() + BUDGET_S[args.mode]
    jobs = args.jobs or (2 if args.mode == "tiny" else 1)
    with ThreadPoolExecutor(jobs) as pool:
        done = pool.map(
            lambda b: run(b, args.mode, max(deadline - time.monotonic(), 1.0), results_dir),
            chosen,
        )
        failed = [b.name for b, ok in zip(chosen, list(done), strict=True) if not ok]
    render(results_dir, docs)
    if failed:
        say(f"failed or out of time: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
