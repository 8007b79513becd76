#!/usr/bin/env bash
# The main job end to end on an embedded default: a local store daemon serving Engram
# tables (token lookups over gRPC, Adam pushes, a checkpoint; examples/quickstart.py), then
# a small language model with Engram layers trained against a local daemon for 60 steps
# (examples/tiny_engram_lm.py). Extra arguments go to the quickstart.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
python examples/quickstart.py "$@"
python examples/tiny_engram_lm.py --steps 60
