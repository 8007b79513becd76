"""Per-table learning rate and weight decay: weight decay as PyTorch's optimizers apply it,
and both changed on a live table, kept across restarts and recorded in checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from daemon import daemon_thread

from client import EngramClient, InvalidRequestError, TableNotFoundError

ROWS, DIM, STEPS, LR, DECAY = 6, 4, 10, 0.05, 0.1


def torch_optimizer(name: str, weight: torch.Tensor) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD([weight], lr=LR, weight_decay=DECAY)
    if name == "adagrad":
        return torch.optim.Adagrad([weight], lr=LR, weight_decay=DECAY, eps=1e-10)
    return torch.optim.Adam([weight], lr=LR, weight_decay=DECAY)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_weight_decay_is_pytorchs_on_the_rows_pushed(tmp_path: Path, optimizer: str) -> None:
    """Every row pushed every step: the store's update equals PyTorch's dense optimizer with
    the same weight decay."""
    rng = np.random.default_rng(0)
    with daemon_thread(tmp_path / "data") as daemon, EngramClient(daemon.address) as client:
        client.create_table(
            "t", ROWS, DIM, init="normal", optimizer=optimizer, lr=LR, weight_decay=DECAY
        )
        keys = np.arange(ROWS, dtype=np.uint64)
        weight = torch.tensor(client.lookup("t", keys), requires_grad=True)
        reference = torch_optimizer(optimizer, weight)
        for _ in range(STEPS):
            grads = rng.standard_normal((ROWS, DIM)).astype(np.float32)
            client.push("t", keys, grads)
            weight.grad = torch.from_numpy(grads)
            reference.step()
        np.testing.assert_allclose(
            client.lookup("t", keys), weight.detach().numpy(), atol=1e-5, rtol=0
        )
        assert client.describe("t").weight_decay == pytest.approx(DECAY)


def test_a_live_table_is_retuned_and_keeps_it_through_restarts_and_checkpoints(
    tmp_path: Path,
) -> None:
    keys = np.array([1, 2], np.uint64)
    ones = np.ones((2, DIM), np.float32)
    with daemon_thread(tmp_path / "data") as daemon, EngramClient(daemon.address) as client:
        client.create_table("t", ROWS, DIM, init="zeros", optimizer="sgd", lr=0.1)
        client.push("t", keys, ones)  # rows: -0.1
        client.checkpoint()
        info = client.tune_table("t", lr=0.5, weight_decay=1.0)
        assert (info.lr, info.weight_decay) == (0.5, 1.0)
        client.push("t", keys, ones)  # -0.1 - 0.5 * (1 - 0.1) = -0.55
        np.testing.assert_allclose(client.lookup("t", keys), -0.55, rtol=1e-6)
        client.checkpoint()
        with pytest.raises(InvalidRequestError, match="lr must be positive"):
            client.tune_table("t", lr=0.0)
        with pytest.raises(InvalidRequestError, match="weight_decay must be non-negative"):
            client.tune_table("t", lr=0.1, weight_decay=-1.0)
        with pytest.raises(TableNotFoundError):
            client.tune_table("nope", lr=0.1)
        assert client.describe("t").lr == 0.5
    with daemon_thread(tmp_path / "data") as daemon, EngramClient(daemon.address) as client:
        info = client.describe("t")
        assert (info.lr, info.weight_decay) == (0.5, 1.0)
        first, second = (c.id for c in client.list_checkpoints())
        client.restore([first])  # taken before the tuning
        assert (client.describe("t").lr, client.describe("t").weight_decay) == (0.1, 0.0)
        client.push("t", keys, ones)
        np.testing.assert_allclose(client.lookup("t", keys), -0.2, rtol=1e-6)
        client.restore([second])
        assert (client.describe("t").lr, client.describe("t").weight_decay) == (0.5, 1.0)
