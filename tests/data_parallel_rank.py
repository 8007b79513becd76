"""One rank of a data-parallel run of the example model (tests/test_data_parallel.py): DDP
over gloo for the dense weights, the Engram rows pushed to the store as this rank's shares
of each step. Trains on its slice of each global batch and, on rank 0, writes the global
losses (the mean of the ranks' losses, as one process training on the global batch
computes them) to a JSON file.

    python tests/data_parallel_rank.py ADDRESS TABLES RANK WORLD RENDEZVOUS OUT --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from tiny_engram_lm import Trainer, batches


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("address", "tables", "rank", "world", "rendezvous", "out"):
        parser.add_argument(name)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="global batch")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--dense-optimizer", default="adamw")
    parser.add_argument("--dense-lr", type=float, default=3e-3)
    args = parser.parse_args()
    rank, world = int(args.rank), int(args.world)
    dist.init_process_group(
        "gloo", init_method=f"file://{args.rendezvous}", rank=rank, world_size=world
    )
    share = args.batch // world
    with Trainer(
        "store",
        args.prefetch,
        args.address,
        tables=args.tables,
        max_files=4,
        data_parallel=True,
        dense_optimizer=args.dense_optimizer,
        dense_lr=args.dense_lr,
    ) as trainer:
        windows = [
            w[rank * share : (rank + 1) * share]
            for w in batches(trainer.ids, args.batch, trainer.cfg.seq, args.steps, seed=0)
        ]
        losses = torch.tensor(trainer.run(windows), dtype=torch.float64)
    dist.all_reduce(losses)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump((losses / world).tolist(), f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
