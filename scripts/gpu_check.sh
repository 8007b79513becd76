#!/usr/bin/env bash
# The checks that need a CUDA device, as one run on a GPU machine: the CUDA tests
# (tests/test_cuda.py), then what prefetching costs a training step on the GPU
# (bench/train_steps.py --device cuda: rows in process on the device against rows
# prefetched from a local daemon), and decode steps' rows put into a device tensor
# (bench/serving.py --device cuda: RowWriter against the in-process gather copied over).
# Logs, the benchmarks' JSON lines and a chart go to $OUT (gpu-check/ without it). Needs
# .gpu/ from scripts/gpu_prepare.sh, run first on a machine with this checkout's environment:
#   device run: bash scripts/gpu_check.sh   (carry .gpu; about 5 minutes on an H200 machine)
# Exits 3 where there is no CUDA device, 2 where .gpu/ is missing, 1 where a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
out="${OUT:-gpu-check}"
if ! "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_check: no CUDA device: torch.cuda.is_available() is False for $python" >&2
    exit 3
fi
if ! compgen -G ".gpu/engram_store-*.whl" > /dev/null; then
    echo "gpu_check: no .gpu/engram_store-*.whl: run scripts/gpu_prepare.sh and carry .gpu" >&2
    exit 2
fi
mkdir -p "$out"
site=$(mktemp -d)
"$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --target "$site" .gpu/*.whl || exit 2
# This checkout's packages come first on the path: its store/ gets the extension built for
# this Python.
cp "$site"/store/_native.*.so store/
export PYTHONPATH="$PWD:$site" PYTHONUNBUFFERED=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
failed=0
"$python" -m pytest tests/test_cuda.py -v -rs -p no:cacheprovider 2>&1 \
    | tee "$out/test_cuda.log" || failed=1
grep -q " passed" "$out/test_cuda.log" && ! grep -qE "skipped|SKIPPED" "$out/test_cuda.log" \
    || failed=1
"$python" bench/train_steps.py --device cuda --rounds "${ROUNDS:-10}" \
    --png "$out/train_steps.png" > "$out/train_steps.json" 2> "$out/train_steps.log" || failed=1
"$python" bench/serving.py --device cuda --steps "${STEPS:-200}" \
    > "$out/serving.json" 2> "$out/serving.log" || failed=1
cat "$out/train_steps.json" "$out/train_steps.log" "$out/serving.json" "$out/serving.log"
exit "$failed"
