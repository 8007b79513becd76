#!/usr/bin/env bash
# Builds `store._native` of git revision REV into a virtual environment of its own, for
# benchmarks that compare this build with an older one in one run:
#   bench/build_baseline.sh 808b243 bench/out/baseline
#   python bench/push_safety.py --baseline-python bench/out/baseline/bin/python
set -euo pipefail
rev="$1"
venv="$(realpath -m "${2:-bench/out/baseline}")"
root="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(mktemp -d)"
trap 'git -C "$root" worktree remove --force "$tree"' EXIT
echo "building $rev into $venv"
git -C "$root" worktree add --detach "$tree" "$rev" >/dev/null
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet numpy maturin
(cd "$tree" && PYO3_PYTHON="$venv/bin/python" "$venv/bin/maturin" build --release --quiet -o "$tree/dist")
"$venv/bin/python" -m pip install --quiet --no-deps "$tree"/dist/*.whl
echo "done: $venv/bin/python"
