"""Data-parallel training with the store: 2 and 4 ranks (processes, DDP over gloo for the
dense weights, step-synchronous pushes for the Engram rows) train the example model to the
same losses and the same rows as one process training on the global batch, for SGD, Adagrad
and Adam tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
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


def launch(
    address: str,
    prefix: str,
    world: int,
    run: Path,
    per_rank: dict[int, list[str]] | None = None,
    *extra: str,
) -> list[tuple[int, str]]:
    """Runs `world` ranks of tests/data_parallel_rank.py to their end: (exit code, output)
    of each. Rank 0 writes `run/losses-{prefix}.json`."""
    run.mkdir(parents=True, exist_ok=True)
    rendezvous = run / f"rendezvous-{uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    common = ["--steps", str(STEPS), "--batch", str(GLOBAL_BATCH), "--dense-optimizer",
              DENSE[0], "--dense-lr", str(DENSE[1]), *extra]  # fmt: skip
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "tests" / "data_parallel_rank.py"),
                address,
                prefix,
                str(rank),
                str(world),
                str(rendezvous),
                str(run / f"losses-{prefix}.json"),
                *common,
                *(per_rank or {}).get(rank, []),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    return [(p.returncode, out) for p, out in zip(processes, outputs, strict=True)]


def ranks(
    address: str,
    prefix: str,
    world: int,
    run: Path,
    per_rank: dict[int, list[str]] | None = None,
    *extra: str,
) -> list[float]:
    """The global losses of `world` ranks that all finish."""
    for rank, (code, output) in enumerate(launch(address, prefix, world, run, per_rank, *extra)):
        assert code == 0, f"rank {rank}:\n{output[-3000:]}"
    losses: list[float] = json.loads((run / f"losses-{prefix}.json").read_text())
    return losses


@pytest.fixture(scope="module")
def one_process_runs(address: str) -> dict[str, tuple[list[float], list[np.ndarray]]]:
    """Per optimizer, the losses and final rows of one process on the global batch, trained
    once and compared with every world size."""
    return {}


@pytest.mark.parametrize("optimizer", list(LEARNING_RATES))
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_train_like_one_process_on_the_global_batch(
    address: str,
    optimizer: str,
    world: int,
    tmp_path: Path,
    one_process_runs: dict[str, tuple[list[float], list[np.ndarray]]],
) -> None:
    if optimizer not in one_process_runs:
        single = make_tables(address, f"one-{optimizer}-L", optimizer)
        losses = one_process(address, f"one-{optimizer}-L")
        one_process_runs[optimizer] = (losses, all_rows(address, single))
    expected, expected_rows = one_process_runs[optimizer]
    parallel = make_tables(address, f"ddp-{optimizer}-{world}-L", optimizer)
    got = ranks(address, f"ddp-{optimizer}-{world}-L", world, tmp_path)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert expected[-1] < expected[0]  # it trained
    for mine, theirs in zip(all_rows(address, parallel), expected_rows, strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0)
    with EngramClient(address) as client:
        assert [client.describe(t).step for t in parallel] == [STEPS] * len(parallel)


@pytest.mark.serial  # timing-sensitive: run alone
def test_a_rank_dying_mid_step_fails_the_step_and_the_job_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    """Rank 1 dies in step 15 after its backward pass (DDP's all-reduce done), before it
    pushes: rank 0's push fails after the step's timeout, naming rank 1, and nothing of step
    15 is applied. The job restarted from the checkpoint of step 10 (the store's, and the
    dense weights) ends where an uninterrupted run ends."""
    with daemon_thread(tmp_path / "whole") as whole:
        make_tables(whole.address, "L", "adam")
        expected = ranks(whole.address, "L", 2, tmp_path / "whole-run")
        expected_rows = all_rows(whole.address, [f"L{layer}" for layer in (0, 1)])
    with daemon_thread(tmp_path / "cut") as cut:
        tables = make_tables(cut.address, "L", "adam")
        run = tmp_path / "cut-run"
        outputs = launch(
            cut.address,
            "L",
            2,
            run,
            {1: ["--die-at", "15"]},
            "--checkpoint-at",
            "10",
            "--step-timeout",
            "3",
        )
        assert outputs[1][0] == 9, outputs[1][1][-2000:]
        assert outputs[0][0] == 3, outputs[0][1][-2000:]
        error = json.loads((run / "losses-L.json").read_text())["error"]
        assert "step 15" in error and "rank(s) 1 of 2 did not push" in error
        with EngramClient(cut.address) as client:
            assert [client.describe(t).step for t in tables] == [14, 14]
            client.restore()
            assert [client.describe(t).step for t in tables] == [10, 10]
        resumed = ranks(cut.address, "L", 2, run, {}, "--checkpoint-at", "10", "--resume")
        np.testing.assert_allclose(resumed, expected[10:], atol=1e-6, rtol=0)
        for mine, theirs in zip(all_rows(cut.address, tables), expected_rows, strict=True):
            np.testing.assert_array_equal(mine, theirs)
