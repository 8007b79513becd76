# Sourced by the other scripts: a virtual environment in .venv with the project installed
# (the Rust extension compiled by maturin) and the development tools.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[dev]"
# clippy builds the binding too; point PyO3 at this environment's interpreter.
export PYO3_PYTHON="$root/.venv/bin/python"
