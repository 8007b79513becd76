#!/usr/bin/env bash
# The main job end to end: hash a sentence with the reference tokenizer, gather its rows
# from freshly created tables, apply one gradient step. Extra arguments go to the example.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
python examples/quickstart.py "$@"
python examples/tiny_engram_lm.py --steps 60
