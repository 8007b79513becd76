#!/usr/bin/env bash
# Every quality gate and every test, Rust and Python. Run from anywhere; stops at the first
# failure.
set -euo pipefail
source "$(dirname "$0")/setup.sh"

step() { printf '\n== %s\n' "$*"; }
step "rustfmt"
cargo fmt --all --check
step "clippy"
cargo clippy --all-targets --all-features --locked -- -D warnings
step "ruff"
ruff check .
ruff format --check .
step "mypy"
mypy
python -m mypy.stubtest store._native
step "docs"
# The site from docs/ (mkdocs.yml): a broken link, page or API reference fails it.
site="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
step "cargo test"
cargo test --locked
step "pytest"
# Every core on the tests that time nothing (each file on one worker: they share no ports or
# directories); then, alone, the few that measure time or memory.
python -m pytest -n auto --dist loadfile -m "not serial"
python -m pytest -m serial
