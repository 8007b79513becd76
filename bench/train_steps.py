"""Training steps/s of the example language model (`examples/tiny_engram_lm.py`) with
Engram rows in a store daemon on this machine, with and without prefetching, against rows in
process (`LocalTable`). The three runs alternate for `--rounds` rounds and each keeps its best
(least disturbed) round: this machine's noise moves single runs by 10-20%. Prints one JSON
line of ratios measured in this run.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from _common import report
from tiny_engram_lm import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--png")
    args = parser.parse_args()
    # A short warm-up run first, so neither side pays for first-use costs.
    train("local", 3, args.batch, progress=False)
    runs = {
        "local": partial(train, "local", args.steps, args.batch, progress=False),
        "prefetched": partial(train, "store", args.steps, args.batch, prefetch=2, progress=False),
        "unprefetched": partial(train, "store", args.steps, args.batch, prefetch=0, progress=False),
    }
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.rounds):
        for name, run in runs.items():
            best[name] = max(best[name], run()["steps_per_s"])
    local, prefetched, unprefetched = best["local"], best["prefetched"], best["unprefetched"]
    report(
        {
            "benchmark": "train_steps",
            "steps": args.steps,
            "rounds": args.rounds,
            "local_steps_per_s": local,
            "store_prefetch_steps_per_s": prefetched,
            "store_no_prefetch_steps_per_s": unprefetched,
            "store_prefetch_vs_local": prefetched / local,
            "store_no_prefetch_vs_local": unprefetched / local,
        },
        args.png,
    )


if __name__ == "__main__":
    main()
