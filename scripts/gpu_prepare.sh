#!/usr/bin/env bash
# Builds, on this machine, what scripts/gpu_check.sh needs on a GPU machine whose Python
# has torch (and CUDA) but not this project: the extension built for that Python, and
# wheels of the packages it lacks at the versions this checkout's environment holds. All of
# it goes to .gpu/ (ignored by git), which the GPU run carries along.
#
#   ./scripts/gpu_prepare.sh            # for Python 3.12 (GPU_PYTHON_VERSION to change)
set -euo pipefail
cd "$(dirname "$0")/.."
python_version="${GPU_PYTHON_VERSION:-3.12}"
python="${PYTHON:-.venv/bin/python}"
rm -rf .gpu
mkdir -p .gpu
# maturin carries the build configuration of common CPython versions: no such interpreter
# is needed here.
"$python" -m maturin build --release --interpreter "python$python_version" --out .gpu
# What a GPU image with torch lacks, or may hold at too old a version for the generated
# stubs (store/_proto).
packages=()
for name in grpcio grpcio-health-checking grpcio-reflection protobuf lmdb prometheus-client; do
    packages+=("$name==$("$python" -c "import importlib.metadata as m; print(m.version('$name'))")")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest .gpu \
    --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 "${packages[@]}"
ls -l .gpu
