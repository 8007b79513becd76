"""Data-parallel training with the store: 2 and 4 ranks (processes, DDP over gloo for the
dense weights, step-synchronous pushes for the Engram rows) train the example model to the
same losses and the same rows as one process training on the global batch, for SGD, Adagrad
and Adam tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from daemon import daemon_thread

from client import EngramClient
from client.config import EngramConfig
from client.engram_tables import create_engram_tables, plan_engram_tables

sys.path.insert(0, str(REPO_ROOT / "examples"))
from tiny_engram_lm import ENGRAM_CONFIG, Trainer, batches

pytestmark = pytest.mark.slow
STEPS, GLOBAL_BATCH = 20, 4
# Parity at 1e-5 measures the store's reduction only where float32 rounding is not amplified:
# ranks and one process add the same gradients in different orders, so a row (or dense
# weight) whose contributions cancel to ~1e-10 gets a gradient of another sign, which AdamW
# and Adagrad from a zero accumulator turn into a step of +-lr. Hence SGD for the dense
# weights (DDP's mean is what is tested, not AdamW) and Adagrad's accumulators started at 0.1
# (PyTorch's initial_accumulator_value), where its step is smooth in the gradient.
DENSE = ("sgd", 0.1)
LEARNING_RATES = {"sgd": 0.1, "adagrad": 0.01, "adam": 0.003}
TABLE_OPTIONS = {"adagrad": {"initial_accumulator_value": 0.1}}


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with daemon_thread(tmp_path_factory.mktemp("dp") / "data") as daemon:
        yield daemon.address


def make_tables(address: str, prefix: str, optimizer: str) -> list[str]:
    config = EngramConfig.from_json(ENGRAM_CONFIG)
    with EngramClient(address) as client:
        create_engram_tables(
            client,
            config,
            prefix,
            optimizer=optimizer,
            lr=LEARNING_RATES[optimizer],
            **TABLE_OPTIONS.get(optimizer, {}),
        )
    return [plan.name for plan in plan_engram_tables(config, prefix)]


def all_rows(address: str, tables: list[str]) -> list[np.ndarray]:
    with EngramClient(address) as client:
        return [
            client.lookup(t, np.arange(client.describe(t).num_rows, dtype=np.uint64))
            for t in tables
        ]


def one_process(address: str, prefix: str) -> list[float]:
    with Trainer(
        "store", 0, address, tables=prefix, max_files=4, dense_optimizer=DENSE[0], dense_lr=DENSE[1]
    ) as trainer:
        windows = batches(trainer.ids, GLOBAL_BATCH, trainer.cfg.seq, STEPS, seed=0)
        return trainer.run(windows)


def ranks(address: str, prefix: str, world: int, tmp: Path) -> list[float]:
    out = tmp / f"losses-{prefix}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "tests" / "data_parallel_rank.py"),
                address,
                prefix,
                str(rank),
                str(world),
                str(tmp / f"rendezvous-{prefix}"),
                str(out),
                "--steps",
                str(STEPS),
                "--batch",
                str(GLOBAL_BATCH),
                "--dense-optimizer",
                DENSE[0],
                "--dense-lr",
                str(DENSE[1]),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank}:\n{output[-3000:]}"
    losses: list[float] = json.loads(out.read_text())
    return losses


@pytest.mark.parametrize("optimizer", list(LEARNING_RATES))
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_train_like_one_process_on_the_global_batch(
    address: str, optimizer: str, world: int, tmp_path: Path
) -> None:
    single = make_tables(address, f"one-{optimizer}-{world}-L", optimizer)
    parallel = make_tables(address, f"ddp-{optimizer}-{world}-L", optimizer)
    expected = one_process(address, f"one-{optimizer}-{world}-L")
    got = ranks(address, f"ddp-{optimizer}-{world}-L", world, tmp_path)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert expected[-1] < expected[0]  # it trained
    for mine, theirs in zip(all_rows(address, parallel), all_rows(address, single), strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0)
    with EngramClient(address) as client:
        assert [client.describe(t).step for t in parallel] == [STEPS] * len(parallel)
