"""One benchmark, on an older commit and on this checkout, in one run: the two take turns
(old, new, new, old, ...), each in a process of its own with its own `store`, `client` and
compiled extension, so this machine's drift falls on both alike. Prints one JSON line: each
throughput figure's median on both and the ratio new / old.

    python bench/compare_builds.py 9320eda gather --runs 4 -- --rows 1000000
    python bench/compare_builds.py 9320eda train_steps --runs 2 --script each

`--script new` runs this checkout's benchmark script on both trees (for a script that was
broken or missing on the old commit); `each` runs every tree's own copy of it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def old_tree(rev: str, directory: str) -> str:
    """A worktree of `rev` with its extension compiled into its `store/`."""
    tree = os.path.join(directory, "old")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, rev], check=True)
    dist = os.path.join(directory, "dist")
    subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--quiet", "-o", dist],
        cwd=tree,
        check=True,
        env={**os.environ, "PYO3_PYTHON": sys.executable},
    )
    (wheel,) = glob.glob(os.path.join(dist, "*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("store/_native") and name.endswith(".so"):
                with archive.open(name) as src, open(os.path.join(tree, name), "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return tree


def run(tree: str, script_root: str, benchmark: str, extra: list[str]) -> dict[str, float]:
    script = os.path.join(script_root, "bench", f"{benchmark}.py")
    result = subprocess.run(
        [sys.executable, script, *extra],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": tree},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{benchmark} failed in {tree}:\n{result.stderr[-3000:]}")
    line = json.loads(result.stdout.strip().splitlines()[-1])
    return {k: v for k, v in line.items() if k.endswith("_per_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rev", help="the older commit")
    parser.add_argument("benchmark", help="a script of bench/, without .py")
    parser.add_argument("--runs", type=int, default=3, help="runs of each build")
    parser.add_argument("--script", choices=["new", "each"], default="each")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.extra = argv[split + 1 :]
    with tempfile.TemporaryDirectory() as directory:
        tree = old_tree(args.rev, directory)
        print(f"built {args.rev}; {args.runs} runs of each build", file=sys.stderr)
        try:
            results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
            for number in range(args.runs):
                order = ("old", "new") if number % 2 == 0 else ("new", "old")
                for build in order:
                    where = tree if build == "old" else ROOT
                    script_root = ROOT if args.script == "new" else where
                    results[build].append(run(where, script_root, args.benchmark, args.extra))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=True)
    metrics = sorted(set(results["old"][0]) & set(results["new"][0]))
    report: dict[str, object] = {"benchmark": args.benchmark, "old": args.rev, "runs": args.runs}
    for metric in metrics:
        old = statistics.median(r[metric] for r in results["old"])
        new = statistics.median(r[metric] for r in results["new"])
        report[metric] = {"old": old, "new": new, "new_vs_old": new / old}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
