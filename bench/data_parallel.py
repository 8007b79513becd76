"""Data-parallel training steps/s: 2 ranks (processes, DDP over gloo for the dense weights)
training the example model, three ways, taking turns round after round:

- `store, synchronous`: Engram rows in a daemon on this machine, each step applied once
  when both ranks have pushed their shares (`TrainPipeline(step_sync=...)`);
- `store, asynchronous`: the same daemon, each rank's pushes applied as they come (Hogwild);
- `tables in DDP`: the rows in each rank (`LocalEmbedding`), their sparse gradients
  all-reduced by DDP with the dense ones, `SparseAdam` on every rank (the baseline).

Each run trains `--steps` steps after `--warmup` untimed ones, on a global batch of
`--batch` sequences. Target: synchronous at least 0.9x tables in DDP. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from _common import compared, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAYS = {
    "store, synchronous": ("store", False),
    "store, asynchronous": ("store", True),
    "tables in DDP": ("local", False),
}


def rank_main(args: argparse.Namespace) -> None:
    """One rank: trains, and on rank 0 prints the seconds of the timed steps."""
    import torch.distributed as dist
    from tiny_engram_lm import Trainer, batches

    dist.init_process_group(
        "gloo", init_method=f"file://{args.rendezvous}", rank=args.rank, world_size=args.world
    )
    backend, asynchronous = WAYS[args.way]
    share = args.batch // args.world
    with Trainer(
        backend,
        2,
        args.address if backend == "store" else None,
        tables=args.tables,
        max_files=8,
        data_parallel=True,
        asynchronous_rows=asynchronous,
    ) as trainer:
        windows = [
            w[args.rank * share : (args.rank + 1) * share]
            for w in batches(
                trainer.ids, args.batch, trainer.cfg.seq, args.warmup + args.steps, seed=0
            )
        ]
        trainer.run(windows[: args.warmup])
        dist.barrier()
        began = time.perf_counter()
        trainer.run(windows[args.warmup :])
        dist.barrier()
        seconds = time.perf_counter() - began
    if args.rank == 0:
        print(json.dumps({"seconds": seconds}))
    dist.destroy_process_group()


def run_ranks(way: str, address: str, tables: str, args: argparse.Namespace) -> float:
    """Steps/s of one run of 2 ranks trained `way`."""
    rendezvous = os.path.join(tempfile.gettempdir(), f"engram-bench-{uuid.uuid4().hex}")
    common = [
        "--way", way, "--address", address, "--tables", tables, "--rendezvous", rendezvous,
        "--world", str(args.world), "--batch", str(args.batch), "--steps", str(args.steps),
        "--warmup", str(args.warmup),
    ]  # fmt: skip
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--rank", str(rank), *common],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"},
        )
        for rank in range(args.world)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    if os.path.exists(rendezvous):
        os.unlink(rendezvous)
    if any(p.returncode for p in processes):
        raise SystemExit(f"{way}: a rank failed")
    seconds = json.loads([x for x in outputs[0].splitlines() if x.startswith("{")][-1])["seconds"]
    return float(args.steps / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--png")
    for hidden in ("--rank", "--way", "--address", "--tables", "--rendezvous"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        args.rank = int(args.rank)
        rank_main(args)
        return

    from tiny_engram_lm import ENGRAM_CONFIG

    from client import EngramClient
    from client.config import EngramConfig
    from client.engram_tables import create_engram_tables
    from store.local import LocalDaemon

    best: dict[str, float] = dict.fromkeys(WAYS, 0.0)
    with (
        tempfile.TemporaryDirectory() as data,
        LocalDaemon(data, log_level="WARNING", threads=1) as daemon,
        EngramClient(daemon.address) as client,
    ):
        config = EngramConfig.from_json(ENGRAM_CONFIG)
        for number in range(args.rounds):
            for way in WAYS:
                tables = f"r{number}-{way.split(',')[-1].strip()}-L"
                if WAYS[way][0] == "store":
                    create_engram_tables(client, config, tables, optimizer="adam", lr=1e-3)
                best[way] = max(best[way], run_ranks(way, daemon.address, tables, args))
    baseline = best["tables in DDP"]
    results: list[dict[str, Any]] = [
        compared(way, best[way], "steps/s", "tables in DDP", baseline,
                 target=0.9 if way == "store, synchronous" else None)
        for way in ("store, synchronous", "store, asynchronous")
    ]  # fmt: skip
    report(
        {
            "benchmark": "data_parallel",
            "ranks": args.world,
            "global_batch": args.batch,
            "steps": args.steps,
            **{
                f"{way.replace(', ', '_').replace(' ', '_')}_steps_per_s": v
                for way, v in best.items()
            },
            "results": results,
        },
        args.png,
    )


if __name__ == "__main__":
    main()
