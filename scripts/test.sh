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
step "cargo test"
cargo test --locked
step "pytest"
python -m pytest
