"""Server-side optimizers against PyTorch's sparse optimizers on nn.Embedding(sparse=True)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from store import _native
from store.spec import OptimizerSpec, TableSpec

ROWS, DIM, STEPS = 200, 16, 50


def make_table(path: Path, optimizer: str, lr: float, **hyper: float) -> _native.TrainableTable:
    return _native.TrainableTable.create(
        str(path),
        TableSpec(
            "t", ROWS, DIM, init_std=0.5, seed=7, optimizer=OptimizerSpec(optimizer, lr, **hyper)
        ),
    )


def all_rows(table: _native.TrainableTable) -> np.ndarray:
    out = np.empty((ROWS, DIM), np.float32)
    table.lookup(np.arange(ROWS, dtype=np.uint64), "float32", into=out)
    return out


def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    """50 steps of keys (with repeats, most rows untouched in a step) and gradients."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(STEPS):
        keys = rng.integers(0, ROWS, size=64).astype(np.uint64)
        keys[:8] = keys[8:16]  # guaranteed duplicates
        out.append((keys, rng.standard_normal((64, DIM)).astype(np.float32)))
    return out


def torch_run(
    initial: np.ndarray, make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
) -> np.ndarray:
    embedding = torch.nn.Embedding(ROWS, DIM, sparse=True)
    with torch.no_grad():
        embedding.weight.copy_(torch.from_numpy(initial))
    optimizer = make_optimizer(list(embedding.parameters()))
    # Adagrad builds sparse tensors; torch warns unless the invariant checks are chosen.
    with torch.sparse.check_sparse_tensor_invariants(enable=True):  # type: ignore[no-untyped-call]
        for keys, grads in batches():
            optimizer.zero_grad()
            out = embedding(torch.from_numpy(keys.astype(np.int64)))
            (out * torch.from_numpy(grads)).sum().backward()
            optimizer.step()
    return embedding.weight.detach().numpy()


def store_run(table: _native.TrainableTable) -> np.ndarray:
    for keys, grads in batches():
        table.push(keys, grads)
    return all_rows(table)


@pytest.mark.parametrize(
    ("name", "hyper", "make_optimizer"),
    [
        ("sgd", {}, lambda p: torch.optim.SGD(p, lr=0.1)),
        (
            "adagrad",
            {"eps": 1e-10, "initial_accumulator_value": 0.1},
            lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-10, initial_accumulator_value=0.1),
        ),
        (
            "adam",
            {"eps": 1e-8, "beta1": 0.9, "beta2": 0.999},
            lambda p: torch.optim.SparseAdam(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8),
        ),
    ],
)
def test_matches_torch_sparse_optimizer(
    tmp_path: Path,
    name: str,
    hyper: dict[str, float],
    make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
) -> None:
    lr = 0.01 if name == "adam" else 0.1
    table = make_table(tmp_path / name, name, lr, **hyper)
    initial = all_rows(table)
    expected = torch_run(initial, make_optimizer)
    got = store_run(table)
    assert table.step == STEPS
    assert not np.allclose(got, initial), "the optimizer must have moved the rows"
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_rowwise_adagrad_matches_its_definition(tmp_path: Path) -> None:
    table = make_table(tmp_path / "t", "rowwise_adagrad", 0.1, eps=1e-10)
    params = all_rows(table).astype(np.float64)
    accumulators = np.zeros(ROWS)
    for keys, grads in batches():
        summed = np.zeros((ROWS, DIM))
        np.add.at(summed, keys.astype(np.int64), grads)
        touched = np.unique(keys.astype(np.int64))
        accumulators[touched] += (summed[touched] ** 2).mean(axis=1)
        params[touched] -= 0.1 * summed[touched] / (np.sqrt(accumulators[touched])[:, None] + 1e-10)
    np.testing.assert_allclose(store_run(table), params, rtol=1e-5, atol=1e-6)
    assert table.state_dim == 1
