#!/usr/bin/env bash
# The main job end to end on an embedded default: a local store daemon serving Engram
# tables (token lookups over gRPC, Adam pushes, a checkpoint; examples/quickstart.py), then
# the same small language model trained twice on the standard library's sources, without
# Engram and with Engram rows in a local daemon, ending with their losses on held-out files
# (examples/evidence.py --quick). Its results, figures and the daemon's log are kept in
# ./demo-results/ (DEMO_RESULTS to put them elsewhere). Extra arguments go to the quickstart.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
results="${DEMO_RESULTS:-demo-results}"
mkdir -p "$results"
rm -f "$results/daemon.log"
python examples/quickstart.py --daemon-log "$results/daemon.log" "$@"
python examples/evidence.py --quick --models baseline engram --out "$results"
