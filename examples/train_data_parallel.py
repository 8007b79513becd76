"""The example model trained by several ranks at once, as a torchrun job:

    torchrun --standalone --nproc-per-node 2 examples/train_data_parallel.py --steps 20

Each rank trains on its share of every global batch: the dense weights through DDP (gloo on
CPU; use nccl on GPUs), the Engram rows through the store, where each step is applied once,
when every rank has pushed its share, with the mean of their gradients (as DDP averages the
dense ones). Without `--address`, rank 0 starts a daemon on this machine for the job and
tells the others where it is. Rank 0 prints the global loss of each step.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import ExitStack

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from tiny_engram_lm import ENGRAM_CONFIG, Trainer, batches

from client import EngramClient
from client.config import EngramConfig
from client.engram_tables import create_engram_tables
from store.local import LocalDaemon


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--address", help="a running daemon (default: rank 0 starts one)")
    parser.add_argument("--tables", default="dp-L", help="table name prefix")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        parser.error(f"--batch {args.batch} does not split over {world} ranks")
    with ExitStack() as stack:
        where = [args.address]
        if rank == 0 and args.address is None:
            data = stack.enter_context(tempfile.TemporaryDirectory())
            where[0] = stack.enter_context(LocalDaemon(data, log_level="WARNING")).address
            with EngramClient(where[0]) as client:
                config = EngramConfig.from_json(ENGRAM_CONFIG)
                create_engram_tables(client, config, args.tables, optimizer="adam", lr=5e-3)
        dist.broadcast_object_list(where)  # every rank learns the daemon's address
        share = args.batch // world
        with Trainer("store", 2, where[0], tables=args.tables, data_parallel=True) as trainer:
            windows = [
                w[rank * share : (rank + 1) * share]
                for w in batches(trainer.ids, args.batch, trainer.cfg.seq, args.steps, seed=0)
            ]
            losses = torch.tensor(trainer.run(windows), dtype=torch.float64)
        dist.all_reduce(losses)
        if rank == 0:
            for step, loss in enumerate((losses / world).tolist(), 1):
                print(f"step {step:3d}  loss {loss:.4f}")
        dist.barrier()  # the daemon outlives every rank's last push
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
