"""One rank of a data-parallel run of the example model (tests/test_data_parallel.py): DDP
over gloo for the dense weights, the Engram rows pushed to the store as this rank's shares
of each step. Trains on its slice of each global batch and, on rank 0, writes the global
losses (the mean of the ranks' losses, as one process training on the global batch
computes them) to a JSON file.

    python tests/data_parallel_rank.py ADDRESS TABLES RANK WORLD RENDEZVOUS OUT --steps 20

`--checkpoint-at N`: after step N, rank 0 checkpoints the store and saves the dense weights
beside OUT; `--resume`: starts after that step from them. `--die-at N`: the rank dies in
step N after its backward pass, before its rows are pushed (exit code 9); a rank whose step
fails writes the error to OUT and exits with code 3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from tiny_engram_lm import Trainer, batches

from client import DataParallelStepError, EngramClient


def die_at(trainer: Trainer, step: int) -> None:
    """Makes the process die when the pipeline sends its `step`-th step."""
    pipeline = next(iter(trainer.tables.values())).pipeline
    client, sends = pipeline.client, iter(range(1, 1 << 30))
    send = client.batch

    def batch(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("sync") and next(sends) == step:
            # After the other ranks' all-reduce of this step is over too (a rank gone during
            # one fails it in gloo first): only the store then waits for this rank.
            time.sleep(2)
            os._exit(9)
        return send(*args, **kwargs)

    client.batch = batch  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("address", "tables", "rank", "world", "rendezvous", "out"):
        parser.add_argument(name)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="global batch")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--dense-optimizer", default="adamw")
    parser.add_argument("--dense-lr", type=float, default=3e-3)
    parser.add_argument("--step-timeout", type=float, default=0.0)
    parser.add_argument("--checkpoint-at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--die-at", type=int, default=0)
    args = parser.parse_args()
    rank, world = int(args.rank), int(args.world)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{args.rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    share = args.batch // world
    dense_state = f"{args.out}.dense.pt"
    with Trainer(
        "store",
        args.prefetch,
        args.address,
        tables=args.tables,
        max_files=4,
        data_parallel=True,
        dense_optimizer=args.dense_optimizer,
        dense_lr=args.dense_lr,
        step_timeout_s=args.step_timeout,
    ) as trainer:
        windows = [
            w[rank * share : (rank + 1) * share]
            for w in batches(trainer.ids, args.batch, trainer.cfg.seq, args.steps, seed=0)
        ]
        first = 0
        if args.resume:
            first = args.checkpoint_at
            trainer.load_dense(torch.load(dense_state))
        if args.die_at:
            die_at(trainer, args.die_at - first)
        phases = [windows[first:]]
        if args.checkpoint_at and not args.resume:
            phases = [windows[: args.checkpoint_at], windows[args.checkpoint_at :]]
        losses: list[float] = []
        try:
            for number, phase in enumerate(phases):
                losses += trainer.run(phase)
                if number == 0 and len(phases) == 2:
                    dist.barrier()
                    if rank == 0:
                        with EngramClient(args.address) as client:
                            client.checkpoint()
                        torch.save(trainer.dense_state(), dense_state)
                    dist.barrier()
        except DataParallelStepError as error:
            with open(args.out, "w") as f:
                json.dump({"rank": rank, "error": str(error)}, f)
            os._exit(3)
    total = torch.tensor(losses, dtype=torch.float64)
    dist.all_reduce(total)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump((total / world).tolist(), f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
