#!/usr/bin/env bash
# The main job end to end on an embedded default: a local store daemon serving Engram
# tables (token lookups over gRPC, Adam pushes, a checkpoint; examples/quickstart.py), then
# the same small language model trained twice on the standard library's sources, without
# Engram and with Engram rows in a local daemon, ending with their losses on held-out files
# (examples/evidence.py --quick; its figures go to a temporary directory). Extra arguments
# go to the quickstart.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
python examples/quickstart.py "$@"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
python examples/evidence.py --quick --models baseline engram --out "$out"
