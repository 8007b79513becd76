"""Training steps/s of the example language model (`examples/tiny_engram_lm.py`) with
Engram rows in a store daemon on this machine, with and without prefetching, against rows in
process (`LocalEmbedding`).

The three trainers are built once and take turns: each round, every one trains
`--segment` steps (waiting for its pushes at the end), in a rotating order. Turns of well
under a second make this machine's noise, which moves whole runs by 10-20%, fall on all
three alike. A prefetcher starts afresh at every turn, so prefetching gains nothing from the
pauses. `--device cuda` trains on a GPU: the rows in process then live on the device, and
the store's are prefetched onto it (what prefetching costs a GPU step). Prints one JSON
line of ratios measured in this run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from itertools import islice

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from _common import compared, report
from tiny_engram_lm import Trainer, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--segment", type=int, default=10, help="steps per turn")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="where the model trains (cuda)")
    parser.add_argument("--png")
    args = parser.parse_args()
    with (
        Trainer("local", device=args.device) as local,
        Trainer("store", prefetch=2, device=args.device) as prefetched,
        Trainer("store", prefetch=0, device=args.device) as unprefetched,
    ):
        trainers = {"local": local, "prefetched": prefetched, "unprefetched": unprefetched}
        # One extra round first, so no trainer pays for first-use costs while timed.
        total = (args.rounds + 1) * args.segment
        streams = {
            name: batches(t.ids, args.batch, t.cfg.seq, total, seed=0)
            for name, t in trainers.items()
        }
        seconds = dict.fromkeys(trainers, 0.0)
        names = list(trainers)
        for round_number in range(args.rounds + 1):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                windows = list(islice(streams[name], args.segment))
                start = time.perf_counter()
                trainers[name].run(windows)
                if round_number > 0:
                    seconds[name] += time.perf_counter() - start
    steps = args.rounds * args.segment
    rate = {name: steps / s for name, s in seconds.items()}
    report(
        {
            "benchmark": "train_steps",
            "device": args.device,
            "steps": steps,
            "segment": args.segment,
            "local_steps_per_s": rate["local"],
            "store_prefetch_steps_per_s": rate["prefetched"],
            "store_no_prefetch_steps_per_s": rate["unprefetched"],
            "store_prefetch_vs_local": rate["prefetched"] / rate["local"],
            "store_no_prefetch_vs_local": rate["unprefetched"] / rate["local"],
            "results": [
                compared(
                    "StoreEmbedding, prefetch",
                    rate["prefetched"],
                    "steps/s",
                    "LocalEmbedding",
                    rate["local"],
                    target=0.9,
                ),
                compared(
                    "StoreEmbedding, no prefetch",
                    rate["unprefetched"],
                    "steps/s",
                    "LocalEmbedding",
                    rate["local"],
                ),
            ],
        },
        args.png,
    )


if __name__ == "__main__":
    main()
