"""Fine-tuning a released model's memory (examples/finetune_memory.py's loop), measured:

- fine-tuning steps/s of the V4.1-structured model (EngramV41 at two layers, 24 heads of
  256-wide rows) with its tables in a local daemon (bfloat16 rows, row-wise Adagrad;
  `StoreEmbedding`) against the same tables in process (`LocalEmbedding`, torch's sparse
  Adagrad), taking turns of a few steps;
- importing an FP8 checkpoint for training (dequantized into bfloat16 tables) against a
  sequential write of the bfloat16 table's bytes, and exporting the table back to FP8 against
  a sequential write of the FP8 file's bytes (both fsynced).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from _common import compared, report, sequential_write
from finetune_memory import (
    DIM,
    LAYERS,
    SEQ,
    TOKENIZER,
    V41_MAPPING,
    Model,
    engram_config,
    loss_of,
)
from tiny_engram_lm import batches, corpus_ids

from client import EngramClient
from client.engram_tables import hash_mapping
from client.imports import export_tables, import_checkpoint, load_mapping, with_dtype
from client.tensor_files import SafetensorsWriter, TensorSpec
from client.torch import LocalEmbedding, StoreEmbedding, TrainPipeline
from store.local import LocalDaemon
from store.spec import OptimizerSpec


def fp8_checkpoint(path: str, rows: int) -> None:
    """One V4.1-named layer of `rows` FP8 rows (codes of normal values, scales near 1)."""
    rng = np.random.default_rng(0)
    codes = torch.from_numpy(rng.standard_normal((rows, DIM), np.float32)).to(torch.float8_e4m3fn)
    scales = np.full((rows, DIM // 32), 120, np.uint8)
    writer = SafetensorsWriter(
        path,
        [
            TensorSpec("layers.1.engram.embed.weight", "F8_E4M3", (rows, DIM)),
            TensorSpec("layers.1.engram.embed.scale", "F8_E8M0", (rows, DIM // 32)),
        ],
    )
    writer.write_rows("layers.1.engram.embed.weight", 0, codes.view(torch.uint8).numpy())
    writer.write_rows("layers.1.engram.embed.scale", 0, scales)
    writer.close()


def training_steps(args: argparse.Namespace, client: EngramClient) -> list[dict[str, Any]]:
    mapping = hash_mapping(engram_config(args.rows_per_head))
    ids = corpus_ids(Tokenizer.from_file(TOKENIZER), 30)
    optimizer = OptimizerSpec("rowwise_adagrad", 0.01)
    pipeline = TrainPipeline(client)
    stored: dict[int, LocalEmbedding | StoreEmbedding] = {}
    local: dict[int, LocalEmbedding | StoreEmbedding] = {}
    for layer in LAYERS:
        name, sizes = f"finetune-bench-L{layer}", mapping.table_sizes(layer)
        client.create_table(name, sum(sizes), DIM, dtype="bfloat16", optimizer=optimizer)
        stored[layer] = StoreEmbedding(sizes, DIM, client, name, pipeline=pipeline)
        local[layer] = LocalEmbedding(sizes, DIM)
    torch.manual_seed(0)
    models = {"store": Model(mapping, stored), "in process": Model(mapping, local)}
    sparse = torch.optim.Adagrad(
        [e.embedding.weight for e in local.values() if isinstance(e, LocalEmbedding)], lr=0.01
    )
    dense = {k: torch.optim.AdamW(m.engram_dense(), lr=1e-3) for k, m in models.items()}
    windows = list(batches(ids, args.batch, SEQ, args.steps * (args.rounds + 1) * 2, seed=0))
    seconds = dict.fromkeys(models, 0.0)
    for round_number in range(args.rounds + 1):
        for name, model in models.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                loss = loss_of(model, windows.pop())
                dense[name].zero_grad()
                sparse.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                dense[name].step()
                if name == "in process":
                    sparse.step()
            for embedding in stored.values():
                if isinstance(embedding, StoreEmbedding):
                    embedding.wait_for_pushes()
            if round_number:  # the first round warms both up
                seconds[name] += time.perf_counter() - started
    pipeline.close()
    steps = args.steps * args.rounds
    return [
        compared(
            "fine-tuning steps, tables in a local daemon",
            steps / seconds["store"],
            "steps/s",
            "the same tables in process (torch sparse Adagrad)",
            steps / seconds["in process"],
        )
    ]


def import_and_export(
    args: argparse.Namespace, client: EngramClient, tmp: str
) -> list[dict[str, Any]]:
    released = os.path.join(tmp, "released.safetensors")
    fp8_checkpoint(released, args.import_rows)
    rules = with_dtype(load_mapping(V41_MAPPING), "bfloat16")
    optimizer = OptimizerSpec("rowwise_adagrad", 0.01)
    started = time.perf_counter()
    import_checkpoint(client, released, rules, optimizer=optimizer)
    imported_s = time.perf_counter() - started
    bf16_bytes = args.import_rows * DIM * 2
    started = time.perf_counter()
    sequential_write(os.path.join(tmp, "sequential"), bf16_bytes)
    write_bf16_s = time.perf_counter() - started
    shipped = os.path.join(tmp, "shipped.safetensors")
    started = time.perf_counter()
    export_tables(client, ["engram-L1"], shipped, dtype="fp8_e4m3")
    with open(shipped, "rb+") as f:
        os.fsync(f.fileno())
    exported_s = time.perf_counter() - started
    fp8_bytes = os.path.getsize(shipped)
    started = time.perf_counter()
    sequential_write(os.path.join(tmp, "sequential"), fp8_bytes)
    write_fp8_s = time.perf_counter() - started
    mb = 1 << 20
    return [
        compared(
            f"import of {args.import_rows} FP8 rows for training (bfloat16 written)",
            bf16_bytes / imported_s / mb,
            "MiB/s",
            "sequential write of the same bytes",
            bf16_bytes / write_bf16_s / mb,
        ),
        compared(
            f"export of {args.import_rows} bfloat16 rows back to FP8 (file written)",
            fp8_bytes / exported_s / mb,
            "MiB/s",
            "sequential write of the same bytes",
            fp8_bytes / write_fp8_s / mb,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows-per-head", type=int, default=4000, help="where primes start")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="steps a turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--import-rows", type=int, default=500_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("ENGRAM_BENCH_DIR")) as tmp:
        # One engine thread while training: the trainer needs the other core. An import or
        # an export has the daemon to itself.
        with (
            LocalDaemon(os.path.join(tmp, "train"), log_level="WARNING", threads=1) as daemon,
            EngramClient(daemon.address) as client,
        ):
            results = training_steps(args, client)
        with (
            LocalDaemon(os.path.join(tmp, "ship"), log_level="WARNING") as daemon,
            EngramClient(daemon.address) as client,
        ):
            results += import_and_export(args, client, tmp)
    report(
        {
            "benchmark": "finetune",
            "rows_per_head": args.rows_per_head,
            "import_rows": args.import_rows,
            "threads": torch.get_num_threads(),
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
