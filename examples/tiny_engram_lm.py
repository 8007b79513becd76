"""Train a small decoder-only language model with Engram memory at its two first layers, on
the Python standard library's sources tokenized with the reference tokenizer.

    python examples/tiny_engram_lm.py --steps 50                 # rows in a local store daemon
    python examples/tiny_engram_lm.py --backend local --steps 50 # rows in process
    python examples/tiny_engram_lm.py --address host:port ...    # a daemon already running
    python examples/tiny_engram_lm.py --address host:port --tables engram-L  # its tables

With the store backend (the default) the script starts and stops a daemon on this machine
unless `--address` names one, and creates tables of its own unless `--tables` names the
prefix of tables made for its Engram config (`examples/tiny_engram_lm.engram.json`) by
`engram-store create-tables`. Engram rows are prefetched `--prefetch` batches ahead, trained
by the daemon's optimizer, and the dense weights by torch's AdamW.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from client import EngramClient
from client.config import EngramConfig
from client.engram_tables import create_engram_tables, hash_mapping, plan_engram_tables
from client.torch import Engram, LocalEmbedding, StepSync, StoreEmbedding, TrainPipeline
from client.torch.prefetch import Prefetcher
from store.local import LocalDaemon

ENGRAM_CONFIG = os.path.join(os.path.dirname(__file__), "tiny_engram_lm.engram.json")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8192
    hidden: int = 64
    heads: int = 4
    layers: int = 2
    hc_mult: int = 2
    seq: int = 64
    engram_layers: tuple[int, ...] = (0, 1)


def stdlib_files(max_files: int) -> list[str]:
    """The standard library's top-level modules sorted by name, at most `max_files`."""
    return sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:max_files]


def tokenize_files(tokenizer: Tokenizer, paths: list[str]) -> np.ndarray:
    """The token ids of the files, one after the other."""
    texts = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    return np.concatenate([np.array(e.ids, dtype=np.int64) for e in encoded])


def corpus_ids(tokenizer: Tokenizer, max_files: int) -> np.ndarray:
    """Token ids of the standard library's modules, in a fixed order."""
    return tokenize_files(tokenizer, stdlib_files(max_files))


def batches(ids: np.ndarray, batch: int, seq: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    """`steps` batches of `[batch, seq + 1]` windows drawn from the corpus."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        starts = rng.integers(0, len(ids) - seq - 1, batch)
        yield np.stack([ids[s : s + seq + 1] for s in starts])


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, engram: Engram | None) -> None:
        super().__init__()
        self.engram = engram
        # Off: Engram's output is left out (an ablation of a trained model).
        self.engram_enabled = True
        self.norm1 = nn.RMSNorm(cfg.hidden)
        self.attn = nn.MultiheadAttention(cfg.hidden, cfg.heads, batch_first=True)
        self.norm2 = nn.RMSNorm(cfg.hidden)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden, 4 * cfg.hidden), nn.GELU(), nn.Linear(4 * cfg.hidden, cfg.hidden)
        )

    def forward(
        self,
        streams: torch.Tensor,
        ids: torch.Tensor,
        engram_inputs: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """streams: [B, T, hc_mult, D], the hyper-connection branches of the residual."""
        if self.engram is not None and self.engram_enabled:
            hash_ids, rows = engram_inputs if engram_inputs is not None else (None, None)
            streams = streams + self.engram(streams, ids, hash_ids, rows)
        x = streams.mean(dim=2)
        seq = x.shape[1]
        mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        out: torch.Tensor = streams + (x - streams.mean(dim=2)).unsqueeze(2)
        return out


class TinyEngramLM(nn.Module):
    def __init__(self, cfg: ModelConfig, engrams: dict[int, Engram]) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos = nn.Embedding(cfg.seq, cfg.hidden)
        self.blocks = nn.ModuleList([Block(cfg, engrams.get(i)) for i in range(cfg.layers)])
        self.norm = nn.RMSNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)

    def forward(
        self,
        ids: torch.Tensor,
        engram_inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        streams = x.unsqueeze(2).expand(-1, -1, self.cfg.hc_mult, -1).contiguous()
        for i, block in enumerate(self.blocks):
            streams = block(streams, ids, (engram_inputs or {}).get(i))
        logits: torch.Tensor = self.head(self.norm(streams.mean(dim=2)))
        return logits


class Trainer:
    """The model, its data and its Engram rows' backend, ready to train on batches of windows.

    A context manager: with the store backend it holds a client (and, unless `address` names
    a running daemon, a daemon of its own) until it is left.
    """

    def __init__(
        self,
        backend: str,
        prefetch: int = 2,
        address: str | None = None,
        engram_config: str = ENGRAM_CONFIG,
        max_files: int = 40,
        seed: int = 0,
        tables: str | None = None,
        *,
        engram: bool = True,
        hidden: int = ModelConfig.hidden,
        dense_lr: float = 3e-3,
        table_lr: float = 1e-3,
        table_optimizer: str = "adam",
        dense_optimizer: str = "adamw",
        corpus: np.ndarray | None = None,
        data_parallel: bool = False,
        step_timeout_s: float = 0.0,
        asynchronous_rows: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        """`engram=False` builds the same model without Engram layers; `corpus` (token ids)
        replaces the first `max_files` standard-library modules. `data_parallel` (inside a
        torch.distributed job) trains the dense weights through DDP and pushes the rows as
        this rank's shares of each step (`StepSync`), each waiting at most `step_timeout_s` for the
        other ranks (0: the daemon's default), or, with `asynchronous_rows`, as pushes of their
        own, applied as they come (Hogwild). With the local backend, DDP all-reduces the
        tables' sparse gradients too. The model trains on `device`; the store's rows are
        prefetched onto it."""
        if backend not in ("store", "local"):
            raise ValueError(f"backend must be 'store' or 'local', got {backend!r}")
        self.prefetch = prefetch
        self.engram = engram
        self.device = torch.device(device)
        econf = EngramConfig.from_json(engram_config)
        layers = tuple(econf.layer_ids) if engram else ()
        self.cfg = ModelConfig(hidden=hidden, engram_layers=layers)
        tokenizer = Tokenizer.from_file(econf.tokenizer_name_or_path)
        self.ids = corpus if corpus is not None else corpus_ids(tokenizer, max_files)
        self.mapping = hash_mapping(econf)
        self.tables: dict[int, StoreEmbedding] = {}
        embeddings: dict[int, LocalEmbedding | StoreEmbedding] = {}
        with ExitStack() as stack:
            if backend == "store" and engram:
                own_daemon = address is None
                if address is None:
                    data_dir = stack.enter_context(tempfile.TemporaryDirectory())
                    # One engine thread: on a small machine the trainer needs the other cores.
                    daemon = LocalDaemon(data_dir, log_level="WARNING", threads=1)
                    address = stack.enter_context(daemon).address
                client = stack.enter_context(EngramClient(address))
                # Every layer's pushes of a backward pass (and the next batch's rows) in one call.
                step_sync = (
                    StepSync.from_process_group(timeout_s=step_timeout_s)
                    if data_parallel and not asynchronous_rows
                    else None
                )
                pipeline = TrainPipeline(client, step_sync=step_sync)
                stack.callback(pipeline.close)
                if tables is None or own_daemon:
                    tables = tables or f"tiny-lm-{os.getpid()}-{time.monotonic_ns()}-L"
                    create_engram_tables(
                        client, econf, tables, optimizer=table_optimizer, lr=table_lr
                    )
                for plan in plan_engram_tables(econf, tables):
                    if plan.name not in client.tables():
                        raise ValueError(
                            f"no table {plan.name} at {address}: create this model's tables "
                            f"with `engram-store create-tables --engram-config {engram_config} "
                            f"--prefix {tables} --optimizer adam --lr 1e-3`"
                        )
                    info = client.describe(plan.name)
                    if (info.num_rows, info.dim) != (plan.num_rows, plan.dim):
                        raise ValueError(
                            f"table {plan.name} is {info.num_rows} x {info.dim}, this model's "
                            f"config needs {plan.num_rows} x {plan.dim}"
                        )
                    self.tables[plan.layer] = embeddings[plan.layer] = StoreEmbedding(
                        plan.head_sizes, plan.dim, client, plan.name, pipeline=pipeline
                    )
            elif engram:
                for layer in self.cfg.engram_layers:
                    embeddings[layer] = LocalEmbedding(
                        self.mapping.table_sizes(layer), econf.embed_dim_per_head
                    )
            torch.manual_seed(seed)
            engrams = {
                layer: Engram(layer, econf, self.cfg.hidden, self.cfg.hc_mult, self.mapping, e)
                for layer, e in embeddings.items()
            }
            self.model = TinyEngramLM(self.cfg, engrams).to(self.device)
            dense = [p for n, p in self.model.named_parameters() if "multi_head_embedding" not in n]
            # Dense gradients all-reduced by DDP; Engram rows reduced by the store.
            self.forward: nn.Module = (
                nn.parallel.DistributedDataParallel(self.model) if data_parallel else self.model
            )
            optimizer_class = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[dense_optimizer]
            self.optimizers: list[torch.optim.Optimizer] = [optimizer_class(dense, lr=dense_lr)]
            if backend == "local" and engram:
                sparse = [
                    e.embedding.weight for e in embeddings.values() if isinstance(e, LocalEmbedding)
                ]
                self.optimizers.append(torch.optim.SparseAdam(sparse, lr=table_lr))
            # Built: from here on, leaving the trainer closes what it holds.
            self._stack = stack.pop_all()

    def dense_state(self) -> dict[str, Any]:
        """The dense weights and their optimizers' state (the rows are the store's to keep)."""
        return {
            "model": {k: v for k, v in self.model.state_dict().items() if "multi_head" not in k},
            "optimizers": [o.state_dict() for o in self.optimizers],
        }

    def load_dense(self, state: dict[str, Any]) -> None:
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        if unexpected or any("multi_head" not in key for key in missing):
            raise ValueError(f"not this model's dense state: {unexpected or missing}")
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def run(
        self, windows: Iterable[np.ndarray], on_step: Callable[[int, float], None] | None = None
    ) -> list[float]:
        """Trains one step on each `[batch, seq + 1]` window and waits for the step's pushes;
        returns the losses. `on_step(step, loss)` is called after each step."""
        data: Iterator[tuple[np.ndarray, dict[int, tuple[torch.Tensor, torch.Tensor]] | None]]
        with ExitStack() as stack:
            if self.tables and self.prefetch > 0:
                prefetcher = Prefetcher(
                    windows,
                    self.mapping,
                    self.tables,
                    depth=self.prefetch,
                    token_ids=lambda w: w[:, :-1],
                    device=self.device,
                )
                stack.callback(prefetcher.close)
                data = iter(prefetcher)
            else:
                data = ((w, None) for w in windows)
            losses: list[float] = []
            for window, rows in data:
                losses.append(self._step(window, rows))
                if on_step is not None:
                    on_step(len(losses), losses[-1])
        for table in self.tables.values():
            table.wait_for_pushes()
        return losses

    def _step(
        self, window: np.ndarray, rows: dict[int, tuple[torch.Tensor, torch.Tensor]] | None
    ) -> float:
        inputs = torch.from_numpy(window[:, :-1]).to(self.device)
        targets = torch.from_numpy(window[:, 1:]).to(self.device)
        for opt in self.optimizers:
            opt.zero_grad()
        with torch.sparse.check_sparse_tensor_invariants(enable=True):  # type: ignore[no-untyped-call]
            logits = self.forward(inputs, rows)
            loss: torch.Tensor = nn.functional.cross_entropy(
                logits.reshape(-1, self.cfg.vocab_size), targets.reshape(-1)
            )
            loss.backward()  # type: ignore[no-untyped-call]
        for opt in self.optimizers:
            opt.step()
        return loss.item()


def train(
    backend: str,
    steps: int,
    batch: int = 8,
    prefetch: int = 2,
    address: str | None = None,
    engram_config: str = ENGRAM_CONFIG,
    max_files: int = 40,
    progress: bool = True,
    seed: int = 0,
    tables: str | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """Trains for `steps` steps on `device`; returns the first and last loss and the
    throughput."""
    with Trainer(
        backend, prefetch, address, engram_config, max_files, seed, tables, device=device
    ) as trainer:
        tokens_per_step = batch * trainer.cfg.seq
        start = time.perf_counter()

        def show(step: int, loss: float) -> None:
            elapsed = time.perf_counter() - start
            done = int(30 * step / steps)
            print(
                f"\r[{'#' * done}{'.' * (30 - done)}] step {step}/{steps} "
                f"loss {loss:.3f} {step * tokens_per_step / elapsed:,.0f} tokens/s",
                end="",
                file=sys.stderr,
                flush=True,
            )

        windows = batches(trainer.ids, batch, trainer.cfg.seq, steps, seed)
        losses = trainer.run(windows, show if progress else None)
        elapsed = time.perf_counter() - start
        if progress:
            print(file=sys.stderr)
    return {
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-5:])),
        "steps_per_s": steps / elapsed,
        "tokens_per_s": steps * tokens_per_step / elapsed,
        "uniform_loss": math.log(trainer.cfg.vocab_size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["store", "local"], default="store")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=2, help="batches ahead (0: none)")
    parser.add_argument("--address", help="a running daemon (default: start one)")
    parser.add_argument(
        "--tables",
        help="with --address: prefix of existing tables made by `engram-store create-tables "
        "--engram-config` (default: create new ones)",
    )
    parser.add_argument("--engram-config", default=ENGRAM_CONFIG, help="Engram config (JSON)")
    parser.add_argument("--max-files", type=int, default=40, help="standard-library modules read")
    parser.add_argument("--device", default="cpu", help="where the model trains (cuda, cuda:1)")
    args = parser.parse_args()
    result = train(
        args.backend,
        args.steps,
        args.batch,
        args.prefetch,
        args.address,
        args.engram_config,
        args.max_files,
        tables=args.tables,
        device=args.device,
    )
    print(
        f"loss {result['first_loss']:.3f} -> {result['last_loss']:.3f} "
        f"(uniform {result['uniform_loss']:.3f}); {result['tokens_per_s']:,.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
