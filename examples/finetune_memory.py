"""Fine-tune a released model's Engram memory on a domain, then ship the new version to a
serving daemon without downtime: the loop, at DeepSeek-V4.1-Flash's structure scaled down
(2/3/4-grams x 8 heads, rows of 256 values kept as FP8 with E8M0 scales, two Engram layers;
fewer rows and a narrow model, so that it runs in minutes on 2 cores).

1. The "released model": a small language model with V4.1's Engram module
   (`client.torch.EngramV41`) at its two layers, trained on the standard library's top-level
   modules (every 20th held out), its Engram tables written as an FP8 checkpoint under V4.1's
   tensor names (`layers.{L}.engram.embed.weight` and `.scale`), its dense weights saved.
2. Import for training: that checkpoint into a daemon as bfloat16 tables, dequantized
   exactly, trained by the daemon's row-wise Adagrad (`engram-store import --dtype bfloat16
   --optimizer rowwise_adagrad`), each carrying its hash identity.
3. Fine-tune on the user's domain, a package of the standard library the model never saw
   (`email`; its files split into train and held out), at equal steps and batches:
   `tables` (only the Engram tables, rows in the store, pushed by the backward pass),
   `tables+dense` (the tables and the dense Engram weights, `wkv` and the gate weights), and
   the baseline a user has today, `frozen` (tables frozen, the dense Engram weights trained).
4. Ship: the fine-tuned tables exported to FP8 again (the UE8M0 rule) with their hash
   identity, and imported with `--replace` into a serving daemon that serves the released
   version meanwhile: a reader looking rows up throughout sees one version or the other.

Reports the held-out loss on the domain and on the general held-out files before and after,
per seed, whatever the result: `results.json` and `curves.png` in `--out`.

    python examples/finetune_memory.py            # 3 seeds, a few minutes
    python examples/finetune_memory.py --quick    # 1 seed, few steps: the loop, not a result
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from evidence import commit, machine
from tiny_engram_lm import batches, stdlib_files, tokenize_files

from client import EngramClient, NgramHashMapping
from client.config import EngramConfig
from client.engram_tables import hash_mapping
from client.imports import (
    export_tables,
    import_checkpoint,
    load_mapping,
    mapping_rules,
    with_dtype,
)
from client.tensor_files import SafetensorsWriter, TensorSpec
from client.torch import EngramV41, LocalEmbedding, StoreEmbedding, TrainPipeline
from store import Table
from store.local import LocalDaemon
from store.spec import OptimizerSpec

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "data", "engram-hash", "tokenizer.json")
V41_MAPPING = os.path.join(HERE, "mappings", "deepseek_v4.1_flash.json")
LAYERS = [0, 1]
DIM, HEADS_PER_ORDER = 256, 8
VOCAB, HIDDEN, HC, SEQ = 8192, 64, 2, 64
# The paper trains its tables at 5x the dense learning rate, without weight decay.
TABLE_LR_MULTIPLIER = 5.0


def engram_config(rows_per_head: int) -> EngramConfig:
    """V4.1's Engram structure (client/presets.py) with each head's prime searched from
    `rows_per_head` instead of 16,000,000."""
    preset = EngramConfig.preset("deepseek-v4.1-flash")
    return EngramConfig(
        TOKENIZER,
        engram_vocab_size=[rows_per_head] * (preset.max_ngram_size - 1),
        max_ngram_size=preset.max_ngram_size,
        n_embed_per_ngram=HEADS_PER_ORDER * DIM,
        n_head_per_ngram=HEADS_PER_ORDER,
        layer_ids=LAYERS,
        pad_id=preset.pad_id,
        seed=preset.seed,
    )


class Block(nn.Module):
    def __init__(self, engram: EngramV41) -> None:
        super().__init__()
        self.engram = engram
        self.norm1 = nn.RMSNorm(HIDDEN)
        self.attn = nn.MultiheadAttention(HIDDEN, 4, batch_first=True)
        self.norm2 = nn.RMSNorm(HIDDEN)
        self.mlp = nn.Sequential(
            nn.Linear(HIDDEN, 4 * HIDDEN), nn.GELU(), nn.Linear(4 * HIDDEN, HIDDEN)
        )

    def forward(self, streams: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        streams = self.engram(streams, ids)  # h + gate * value, as V4.1's module returns
        x = streams.mean(dim=2)
        mask = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), diagonal=1)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        out: torch.Tensor = streams + (x - streams.mean(dim=2)).unsqueeze(2)
        return out


class Model(nn.Module):
    def __init__(
        self,
        mapping: NgramHashMapping,
        embeddings: Mapping[int, LocalEmbedding | StoreEmbedding],
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.pos = nn.Embedding(SEQ, HIDDEN)
        self.blocks = nn.ModuleList(
            [Block(EngramV41(layer, mapping, HIDDEN, HC, embeddings[layer])) for layer in LAYERS]
        )
        self.norm = nn.RMSNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1]))
        streams = x.unsqueeze(2).expand(-1, -1, HC, -1).contiguous()
        for block in self.blocks:
            streams = block(streams, ids)
        logits: torch.Tensor = self.head(self.norm(streams.mean(dim=2)))
        return logits

    def dense_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if ".embed." not in k}

    def engram_dense(self) -> list[nn.Parameter]:
        """The dense Engram weights: `wkv` and the gate weights of each layer."""
        return [p for n, p in self.named_parameters() if ".engram." in n and ".embed." not in n]


def loss_of(model: Model, windows: np.ndarray) -> torch.Tensor:
    chunk = torch.from_numpy(np.ascontiguousarray(windows))
    logits = model(chunk[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), chunk[:, 1:].reshape(-1))


def evaluate(model: Model, windows: np.ndarray) -> float:
    with torch.no_grad():
        return float(np.mean([loss_of(model, w[None]).item() for w in windows]))


def fixed_windows(ids: np.ndarray, count: int) -> np.ndarray:
    starts = np.linspace(0, len(ids) - SEQ - 2, count).astype(int)
    return np.stack([ids[s : s + SEQ + 1] for s in starts])


def corpora(tokenizer: Tokenizer, max_files: int, domain: str) -> dict[str, np.ndarray]:
    general = stdlib_files(max_files)
    package = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], domain, "*.py")))
    if len(package) < 4:
        raise SystemExit(f"--domain {domain}: not a package of the standard library")
    return {
        "general_train": tokenize_files(tokenizer, [p for i, p in enumerate(general) if i % 20]),
        "general_held_out": tokenize_files(tokenizer, general[::20]),
        "domain_train": tokenize_files(tokenizer, [p for i, p in enumerate(package) if i % 4]),
        "domain_held_out": tokenize_files(tokenizer, package[::4]),
    }


def pretrain(
    mapping: NgramHashMapping, ids: np.ndarray, args: argparse.Namespace
) -> tuple[Model, dict[int, LocalEmbedding]]:
    """The released model and its tables: everything trained, tables in process (sparse
    Adam)."""
    torch.manual_seed(1000)
    embeddings = {layer: LocalEmbedding(mapping.table_sizes(layer), DIM) for layer in LAYERS}
    model = Model(mapping, embeddings)
    tables = [e.embedding.weight for e in embeddings.values()]
    dense = [p for n, p in model.named_parameters() if ".embed.embedding" not in n]
    optimizers = [
        torch.optim.AdamW(dense, lr=args.dense_lr),
        torch.optim.SparseAdam(tables, lr=args.dense_lr * TABLE_LR_MULTIPLIER),
    ]
    for step, window in enumerate(batches(ids, args.batch, SEQ, args.pretrain_steps, seed=1000)):
        loss = loss_of(model, window)
        for o in optimizers:
            o.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        for o in optimizers:
            o.step()
        if step % 50 == 0:
            print(f"  pretraining step {step}: loss {loss.item():.3f}", flush=True)
    return model, embeddings


def write_released(tables: dict[int, LocalEmbedding], path: str, scratch: str) -> None:
    """The model's Engram tables as V4.1 names them: FP8 E4M3 values and E8M0 scales (each
    table quantized by an FP8 store table, with the UE8M0 rule)."""
    tensors, packed = [], {}
    for layer, embedding in tables.items():
        rows = embedding.embedding.weight.detach().numpy()
        fp8 = Table.create(
            os.path.join(scratch, f"L{layer}.engram"), len(rows), DIM, dtype="fp8_e4m3"
        )
        fp8.write_rows(np.arange(len(rows)), rows)
        packed[layer] = fp8.gather(np.arange(len(rows)), dtype="fp8_e4m3")
        tensors += [
            TensorSpec(f"layers.{layer}.engram.embed.weight", "F8_E4M3", (len(rows), DIM)),
            TensorSpec(f"layers.{layer}.engram.embed.scale", "F8_E8M0", (len(rows), DIM // 32)),
        ]
    writer = SafetensorsWriter(path, tensors)
    for layer, rows in packed.items():
        writer.write_rows(f"layers.{layer}.engram.embed.weight", 0, rows[:, :DIM])
        writer.write_rows(f"layers.{layer}.engram.embed.scale", 0, rows[:, DIM:])
    writer.close()


def fine_tune(
    variant: str,
    seed: int,
    released: str,
    dense: dict[str, torch.Tensor],
    mapping: NgramHashMapping,
    client: EngramClient,
    corpus: dict[str, np.ndarray],
    windows: dict[str, np.ndarray],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One fine-tuning run from the released model; the held-out losses along the way."""
    table_lr = args.dense_lr * TABLE_LR_MULTIPLIER
    optimizer = OptimizerSpec("rowwise_adagrad", table_lr)
    # A fresh copy of the released tables, dequantized exactly into trainable bfloat16 rows.
    import_checkpoint(
        client,
        released,
        with_dtype(load_mapping(V41_MAPPING), "bfloat16"),
        replace=True,
        hash_config_of=mapping.hash_config,
        optimizer=optimizer,
    )
    with ExitStack() as stack:
        pipeline = TrainPipeline(client)
        stack.callback(pipeline.close)
        embeddings: dict[int, LocalEmbedding | StoreEmbedding] = {}
        if variant == "frozen":
            for layer in LAYERS:
                local = LocalEmbedding(mapping.table_sizes(layer), DIM)
                rows = client.lookup(f"engram-L{layer}", np.arange(mapping.layer_table_rows(layer)))
                local.embedding.weight.data = torch.from_numpy(rows)
                local.embedding.weight.requires_grad_(False)
                embeddings[layer] = local
        else:
            embeddings |= {
                layer: StoreEmbedding(
                    mapping.table_sizes(layer), DIM, client, f"engram-L{layer}", pipeline=pipeline
                )
                for layer in LAYERS
            }
        model = Model(mapping, embeddings)
        model.load_state_dict(dense, strict=False)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        trained = model.engram_dense() if variant in ("tables+dense", "frozen") else []
        for parameter in trained:
            parameter.requires_grad_(True)
        dense_optimizer = torch.optim.AdamW(trained, lr=args.dense_lr) if trained else None
        general_before = evaluate(model, windows["general_held_out"])
        curve = [(0, evaluate(model, windows["domain_held_out"]))]
        started = time.perf_counter()
        for step, window in enumerate(
            batches(corpus["domain_train"], args.batch, SEQ, args.steps, seed=seed), start=1
        ):
            loss = loss_of(model, window)
            if dense_optimizer is not None:
                dense_optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # a StoreEmbedding pushes
            if dense_optimizer is not None:
                dense_optimizer.step()
            if step % args.eval_every == 0 or step == args.steps:
                for embedding in embeddings.values():
                    if isinstance(embedding, StoreEmbedding):
                        embedding.wait_for_pushes()
                curve.append((step, evaluate(model, windows["domain_held_out"])))
        seconds = time.perf_counter() - started
        return {
            "variant": variant,
            "seed": seed,
            "curve": curve,
            "domain_before": curve[0][1],
            "domain_after": curve[-1][1],
            "general_before": general_before,
            "general_after": evaluate(model, windows["general_held_out"]),
            "steps_per_s": args.steps / seconds,
        }


def ship(
    client: EngramClient, mapping: NgramHashMapping, released: str, shipped: str, scratch: str
) -> dict[str, Any]:
    """The fine-tuned tables exported to FP8 with their hash identity and swapped into a
    serving daemon that serves the released version meanwhile, a reader looking rows up
    throughout: each read must be the one version or the other."""
    export_tables(client, [f"engram-L{layer}" for layer in LAYERS], shipped, dtype="fp8_e4m3")
    exported = mapping_rules(
        {
            "tables": [
                {"tensor": r"(?P<name>engram-L\d+)", "scales": "{name}_scale", "table": "{name}"}
            ]
        },
        "the shipped tables",
    )
    keys = np.arange(0, mapping.layer_table_rows(LAYERS[0]), 7)
    with (
        LocalDaemon(os.path.join(scratch, "serving"), log_level="WARNING") as serving,
        EngramClient(serving.address) as server,
        EngramClient(serving.address) as reader,
    ):
        rules = load_mapping(V41_MAPPING)
        import_checkpoint(server, released, rules, hash_config_of=mapping.hash_config)
        old = server.lookup("engram-L0", keys)
        seen: list[np.ndarray] = []
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                seen.append(reader.lookup("engram-L0", keys))

        thread = threading.Thread(target=read)
        thread.start()
        try:
            # Checked against the served tables' identity, then swapped in crash-atomically.
            import_checkpoint(server, shipped, exported, replace=True)
            time.sleep(0.1)
        finally:
            stop.set()
            thread.join()
        new = server.lookup("engram-L0", keys)
        return {
            "reads_during_the_swap": len(seen),
            "reads_of_neither_version": sum(
                not (np.array_equal(rows, old) or np.array_equal(rows, new)) for rows in seen
            ),
            "served_rows_changed": not np.array_equal(old, new),
            "served_hash_identity": server.describe("engram-L0").hash_identity is not None,
        }


VARIANTS = ("frozen", "tables+dense", "tables")  # the last run's tables are the ones shipped


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(values: list[float]) -> dict[str, float]:
        return {
            "mean": float(np.mean(values)),
            "stdev": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values),
        }

    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        for key in ("domain_before", "domain_after", "general_before", "general_after"):
            summary[f"{variant}_{key}"] = stat([r[key] for r in mine])
    return summary


def draw(runs: list[dict[str, Any]], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(7, 4))
    colours = {"frozen": "tab:grey", "tables+dense": "tab:orange", "tables": "tab:blue"}
    for run in runs:
        steps, losses = zip(*run["curve"], strict=True)
        label = run["variant"] if run["seed"] == 0 else None
        axis.plot(steps, losses, color=colours[run["variant"]], alpha=0.8, label=label)
    axis.set_xlabel("fine-tuning step")
    axis.set_ylabel("held-out loss on the domain (nats/token)")
    axis.set_title("Fine-tuning a released model's Engram memory")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 seed and few steps")
    parser.add_argument("--seeds", type=int, help="fine-tuning seeds (default 3; quick 1)")
    parser.add_argument("--steps", type=int, help="fine-tuning steps (default 150; quick 6)")
    parser.add_argument("--pretrain-steps", type=int, help="(default 400; quick 10)")
    parser.add_argument("--eval-every", type=int, help="steps between held-out measurements")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dense-lr", type=float, default=3e-3)
    parser.add_argument("--rows-per-head", type=int, default=2000, help="where primes start")
    parser.add_argument("--max-files", type=int, default=200, help="standard-library modules")
    parser.add_argument("--domain", default="email", help="the standard-library package")
    parser.add_argument("--eval-windows", type=int, default=48)
    parser.add_argument(
        "--out",
        default=os.path.normpath(os.path.join(HERE, "..", "bench", "results", "finetune")),
        help="where results.json and curves.png go",
    )
    args = parser.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.steps = args.steps or (6 if args.quick else 150)
    args.pretrain_steps = args.pretrain_steps or (10 if args.quick else 400)
    args.eval_every = args.eval_every or max(1, args.steps // 6)
    if args.quick:
        args.max_files, args.eval_windows = min(args.max_files, 40), min(args.eval_windows, 8)
    began = time.perf_counter()
    tokenizer = Tokenizer.from_file(TOKENIZER)
    corpus = corpora(tokenizer, args.max_files, args.domain)
    windows = {
        k: fixed_windows(corpus[k], args.eval_windows)
        for k in ("domain_held_out", "general_held_out")
    }
    mapping = hash_mapping(engram_config(args.rows_per_head))
    rows = sum(mapping.layer_table_rows(layer) for layer in LAYERS)
    print(f"pretraining the released model ({rows} Engram rows of {DIM} values in 2 layers)")
    model, tables = pretrain(mapping, corpus["general_train"], args)
    dense = model.dense_state()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        released = os.path.join(scratch, "released.safetensors")
        write_released(tables, released, scratch)
        with (
            LocalDaemon(os.path.join(scratch, "train"), log_level="WARNING") as daemon,
            EngramClient(daemon.address) as client,
        ):
            for seed in range(args.seeds):
                for variant in VARIANTS:
                    run = fine_tune(
                        variant, seed, released, dense, mapping, client, corpus, windows, args
                    )
                    runs.append(run)
                    print(
                        f"  seed {seed} {variant:12} domain {run['domain_before']:.3f} -> "
                        f"{run['domain_after']:.3f}, general {run['general_before']:.3f} -> "
                        f"{run['general_after']:.3f}",
                        flush=True,
                    )
            shipping = ship(
                client, mapping, released, os.path.join(scratch, "shipped.safetensors"), scratch
            )
    summary = summarize(runs)
    os.makedirs(args.out, exist_ok=True)
    result = {
        "experiment": "finetune",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "commit": commit(),
        "domain": args.domain,
        "seeds": args.seeds,
        "steps": args.steps,
        "pretrain_steps": args.pretrain_steps,
        "batch": args.batch,
        "engram_rows": rows,
        "dense_lr": args.dense_lr,
        "table_lr": args.dense_lr * TABLE_LR_MULTIPLIER,
        "tokens": {k: len(v) for k, v in corpus.items()},
        "seconds": time.perf_counter() - began,
        "summary": summary,
        "shipping": shipping,
        "runs": runs,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    drawn = draw(runs, os.path.join(args.out, "curves.png"))
    print(f"held-out loss after {args.steps} steps on {args.domain} ({args.seeds} seed(s)):")
    for variant in VARIANTS:
        d0, d1 = summary[f"{variant}_domain_before"], summary[f"{variant}_domain_after"]
        g0, g1 = summary[f"{variant}_general_before"], summary[f"{variant}_general_after"]
        print(
            f"  {variant:12} domain {d0['mean']:.3f} -> {d1['mean']:.3f} +- {d1['stdev']:.3f}, "
            f"general {g0['mean']:.3f} -> {g1['mean']:.3f} +- {g1['stdev']:.3f}"
        )
    print(
        f"shipped: {shipping['reads_during_the_swap']} reads during the swap, "
        f"{shipping['reads_of_neither_version']} of neither version"
    )
    where = os.path.join(args.out, "results.json") + (" and curves.png" if drawn else "")
    print(f"written: {where}")
    if shipping["reads_of_neither_version"] or not shipping["served_rows_changed"]:
        raise SystemExit("the swap served a mix of versions, or nothing changed")


if __name__ == "__main__":
    main()
