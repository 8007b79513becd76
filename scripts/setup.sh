# Sourced by the other scripts: a virtual environment in .venv with the project installed
# (the Rust extension compiled by maturin) and the development tools. Says what it does: the
# first run downloads PyTorch and compiles the Rust crates for minutes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
  say "creating a virtual environment in .venv"
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install --quiet --upgrade pip

mapfile -t packages < <(python - <<'PY'
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["dev"]))
PY
)
stamp=".venv/packages.installed"
if [ "$(printf '%s\n' "${packages[@]}")" != "$(cat "$stamp" 2>/dev/null)" ]; then
  say "installing Python packages (first run: PyTorch and the rest download, a few minutes)"
  set +e
  python -m pip install "${packages[@]}" | grep -v "^Requirement already satisfied"
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    say "pip could not install the packages (status $status)"
    exit 1
  fi
  printf '%s\n' "${packages[@]}" > "$stamp"
else
  say "Python packages already installed"
fi

say "compiling the Rust extension and installing the project (first run: about 3 minutes of \
cargo; later runs: under a minute); full log in .venv/build.log"
if ! python -m pip install --no-deps --verbose -e . > .venv/build.log 2>&1; then
  tail -n 40 .venv/build.log >&2
  say "the build failed; the whole log is in .venv/build.log"
  exit 1
fi
grep -E "^\s*(Finished|📦 Built)" .venv/build.log | sed 's/^ */  /' >&2 || true
# clippy builds the binding too; point PyO3 at this environment's interpreter.
export PYO3_PYTHON="$root/.venv/bin/python"
say "ready"
