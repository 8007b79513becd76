"""Does store-backed Engram help a model? The same small decoder-only transformer trained for
the same steps on the same tokens of the Python standard library's sources, with and without
Engram, and validated on files it never saw.

    python examples/evidence.py             # 3 seeds, all three models (about 10 minutes)
    python examples/evidence.py --quick     # 1 seed, fewer steps (under 3 minutes)

The models (`examples/tiny_engram_lm.py`: 2 blocks, hidden 64, 64-token windows, batches of
8, AdamW at 3e-3 for dense weights):
- `baseline`: no Engram;
- `engram`: Engram at both blocks (2/3-grams x 4 heads, `tiny_engram_lm.engram.json`), its
  rows in a local store daemon, trained by the daemon's Adam at 5x the dense learning rate
  and without weight decay, as the paper trains its tables;
- `wide`: no Engram, the hidden size widened until the model has as many parameters as
  `engram` with its tables, so that a gain is not just "more parameters".

Every `--eval-every` steps each model's loss is measured on the same held-out windows (5% of
the files, every 20th in sorted order, never trained on); at the end the Engram model is
measured once more with Engram's output zeroed (the ablation). Written to `--out`: one JSON
record (every curve, final losses, gaps with their spread over seeds, parameter counts,
steps/s) and `curves.png`; a summary is printed, whatever the result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from tiny_engram_lm import (
    ENGRAM_CONFIG,
    Block,
    ModelConfig,
    TinyEngramLM,
    Trainer,
    batches,
    stdlib_files,
    tokenize_files,
)

from client.config import EngramConfig

MODELS = ("baseline", "engram", "wide")
DENSE_LR = 3e-3
# The paper trains Engram's tables at 5x the dense learning rate, without weight decay.
TABLE_LR = 5 * DENSE_LR
HELD_OUT_EVERY = 20
EVAL_WINDOWS = 64


def split_corpus(tokenizer: Tokenizer, max_files: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the training files and of the held-out ones (every 20th file, sorted by
    name), from the standard library's modules; at most `max_files` files in all."""
    files = stdlib_files(max_files)
    held_out = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [f for f in files if f not in held_out]
    return tokenize_files(tokenizer, train), tokenize_files(tokenizer, held_out)


def held_out_windows(ids: np.ndarray, seq: int) -> np.ndarray:
    """`EVAL_WINDOWS` evenly spaced `[seq + 1]` windows of the held-out tokens."""
    starts = np.linspace(0, len(ids) - seq - 2, EVAL_WINDOWS).astype(np.int64)
    return np.stack([ids[s : s + seq + 1] for s in starts])


def evaluate(model: TinyEngramLM, windows: np.ndarray, zero_engram: bool = False) -> float:
    """Mean next-token loss on `windows`; with `zero_engram`, Engram's output left out."""
    blocks = [block for block in model.blocks if isinstance(block, Block)]
    for block in blocks:
        block.engram_enabled = not zero_engram
    try:
        with torch.no_grad():
            losses = []
            for chunk in np.array_split(windows, max(1, len(windows) // 16)):
                logits = model(torch.from_numpy(np.ascontiguousarray(chunk[:, :-1])))
                targets = torch.from_numpy(np.ascontiguousarray(chunk[:, 1:]))
                loss = nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
                )
                losses.append(loss.item() * len(chunk))
        return sum(losses) / len(windows)
    finally:
        for block in blocks:
            block.engram_enabled = True


def parameter_count(trainer: Trainer) -> int:
    """Dense parameters plus the Engram tables' rows x width (wherever they live)."""
    dense = sum(
        p.numel() for n, p in trainer.model.named_parameters() if "embedding.weight" not in n
    )
    mapping = trainer.mapping
    rows = sum(sum(mapping.table_sizes(layer)) for layer in trainer.cfg.engram_layers)
    return dense + rows * (mapping.n_embed_per_ngram // mapping.n_head_per_ngram)


def width_matching(parameters: int, heads: int) -> int:
    """The hidden size (a multiple of `heads`) of a model without Engram whose parameter
    count is nearest `parameters` (the count grows with the width: a bisection)."""

    def count(hidden: int) -> int:
        cfg = ModelConfig(hidden=hidden, engram_layers=())
        return sum(p.numel() for p in TinyEngramLM(cfg, {}).parameters())

    low, high = 1, 1
    while count(high * heads) < parameters:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle * heads) < parameters else (low, middle)
    return min((low * heads, high * heads), key=lambda hidden: abs(count(hidden) - parameters))


def train_one(
    model: str,
    seed: int,
    args: argparse.Namespace,
    train_ids: np.ndarray,
    windows: np.ndarray,
    wide_hidden: int,
) -> dict[str, Any]:
    hidden = wide_hidden if model == "wide" else ModelConfig.hidden
    with Trainer(
        "store",
        engram=model == "engram",
        hidden=hidden,
        dense_lr=DENSE_LR,
        table_lr=TABLE_LR,
        seed=seed,
        corpus=train_ids,
    ) as trainer:
        data = list(batches(train_ids, args.batch, trainer.cfg.seq, args.steps, seed))
        curve = [(0, evaluate(trainer.model, windows))]
        began = time.perf_counter()
        trained = 0.0
        for start in range(0, args.steps, args.eval_every):
            chunk = data[start : start + args.eval_every]
            step_began = time.perf_counter()
            trainer.run(chunk)
            trained += time.perf_counter() - step_began
            curve.append((start + len(chunk), evaluate(trainer.model, windows)))
            print(
                f"\r{model:8} seed {seed}: step {curve[-1][0]}/{args.steps} "
                f"held-out loss {curve[-1][1]:.3f}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        print(file=sys.stderr)
        record: dict[str, Any] = {
            "model": model,
            "seed": seed,
            "hidden": hidden,
            "parameters": parameter_count(trainer),
            "curve": curve,
            "final_loss": curve[-1][1],
            "steps_per_s": args.steps / trained,
            "seconds": time.perf_counter() - began,
        }
        if model == "engram":
            record["final_loss_engram_zeroed"] = evaluate(trainer.model, windows, zero_engram=True)
    return record


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    def finals(model: str, key: str = "final_loss") -> list[float]:
        return [r[key] for r in records if r["model"] == model]

    def spread(values: list[float]) -> dict[str, float]:
        return {
            "mean": statistics.mean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values),
        }

    summary: dict[str, Any] = {
        f"{model}_final_loss": spread(finals(model)) for model in MODELS if finals(model)
    }
    by_seed = {(r["model"], r["seed"]): r for r in records}
    seeds = sorted({r["seed"] for r in records})
    if finals("engram") and finals("baseline"):
        gaps = [
            by_seed["baseline", s]["final_loss"] - by_seed["engram", s]["final_loss"] for s in seeds
        ]
        summary["gain_over_baseline"] = spread(gaps)
        summary["engram_zeroed_final_loss"] = spread(finals("engram", "final_loss_engram_zeroed"))
    if finals("engram") and finals("wide"):
        gaps = [
            by_seed["wide", s]["final_loss"] - by_seed["engram", s]["final_loss"] for s in seeds
        ]
        summary["gain_over_wide"] = spread(gaps)
    return summary


def draw(records: list[dict[str, Any]], summary: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed; {path} not drawn", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for model in MODELS:
        curves = [r["curve"] for r in records if r["model"] == model]
        if not curves:
            continue
        steps = [step for step, _ in curves[0]]
        losses = np.array([[loss for _, loss in curve] for curve in curves])
        mean = losses.mean(axis=0)
        (line,) = ax.plot(steps, mean, label=f"{model} ({len(curves)} seeds)")
        if len(curves) > 1:
            ax.fill_between(
                steps, losses.min(axis=0), losses.max(axis=0), alpha=0.2, color=line.get_color()
            )
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("Held-out loss on unseen standard-library files")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plus_minus(values: dict[str, float]) -> str:
    """' +- stdev' over several seeds; nothing for one."""
    return f" +- {values['stdev']:.3f}" if values["n"] > 1 else ""


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB"


def commit() -> str:
    """The checkout's commit, marked `+changes` when it has uncommitted ones ('' outside git)."""
    root = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return ""
    return f"{rev}+changes" if rev and dirty else rev


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, 150 steps")
    parser.add_argument("--steps", type=int, help="training steps (default 300; quick 150)")
    parser.add_argument("--seeds", type=int, help="seeds (default 3; quick 1)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eval-every", type=int, help="steps between held-out measurements")
    parser.add_argument("--max-files", type=int, default=200, help="standard-library modules read")
    parser.add_argument(
        "--out",
        default=os.path.normpath(
            os.path.join(os.path.dirname(__file__), "..", "bench", "results", "evidence")
        ),
        help="where results.json and curves.png go",
    )
    args = parser.parse_args()
    args.steps = args.steps or (150 if args.quick else 300)
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.eval_every = args.eval_every or max(1, args.steps // 10)
    econf = EngramConfig.from_json(ENGRAM_CONFIG)
    tokenizer = Tokenizer.from_file(econf.tokenizer_name_or_path)
    train_ids, held_out_ids = split_corpus(tokenizer, args.max_files)
    windows = held_out_windows(held_out_ids, ModelConfig.seq)
    wide_hidden = ModelConfig.hidden
    if "wide" in args.models:
        with Trainer("local", engram=True, corpus=train_ids[:1000]) as probe:
            wide_hidden = width_matching(parameter_count(probe), ModelConfig.heads)
    began = time.perf_counter()
    records = [
        train_one(model, seed, args, train_ids, windows, wide_hidden)
        for seed in range(args.seeds)
        for model in args.models
    ]
    summary = summarize(records)
    os.makedirs(args.out, exist_ok=True)
    result = {
        "experiment": "evidence",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "commit": commit(),
        "steps": args.steps,
        "seeds": args.seeds,
        "batch": args.batch,
        "tokens_per_step": args.batch * ModelConfig.seq,
        "train_tokens": len(train_ids),
        "held_out_tokens": len(held_out_ids),
        "dense_lr": DENSE_LR,
        "table_lr": TABLE_LR,
        "seconds": time.perf_counter() - began,
        "summary": summary,
        "runs": records,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    drawn = draw(records, summary, os.path.join(args.out, "curves.png"))
    print(f"held-out loss after {args.steps} steps ({args.seeds} seed(s)):")
    for model in args.models:
        s = summary[f"{model}_final_loss"]
        params = next(r["parameters"] for r in records if r["model"] == model)
        print(f"  {model:8} {s['mean']:.3f}{plus_minus(s)}   ({params / 1e6:.2f} M parameters)")
    for key, against in (("gain_over_baseline", "baseline"), ("gain_over_wide", "wide")):
        if key in summary:
            gain = summary[key]
            verb = "lowers" if gain["mean"] >= 0 else "raises"
            print(
                f"  Engram {verb} it by {abs(gain['mean']):.3f}{plus_minus(gain)} against "
                f"{against} ({'the same model' if against == 'baseline' else 'equal parameters'})"
            )
    if "engram_zeroed_final_loss" in summary:
        zeroed = summary["engram_zeroed_final_loss"]["mean"]
        print(f"  the Engram model with Engram's output zeroed: {zeroed:.3f}")
    where = os.path.join(args.out, "results.json") + (" and curves.png" if drawn else "")
    print(f"written: {where}")


if __name__ == "__main__":
    main()
