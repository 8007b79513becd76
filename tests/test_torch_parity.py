"""Training with rows in a store daemon matches training with rows in process."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from daemon import Daemon, daemon_thread
from torch import nn

from client import EngramClient, NgramHashMapping
from client.config import EngramConfig
from client.torch import Engram, LocalEmbedding, StoreEmbedding

HIDDEN, HC, STEPS = 16, 2, 20


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with daemon_thread(tmp_path_factory.mktemp("parity") / "data") as d:
        yield d


class TinyModel(nn.Module):
    def __init__(self, engram: Engram) -> None:
        super().__init__()
        self.tokens = nn.Embedding(8192, HIDDEN * HC)
        self.engram = engram
        self.out = nn.Linear(HIDDEN, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.tokens(ids).view(*ids.shape, HC, HIDDEN)
        hidden = hidden + self.engram(hidden, ids)
        loss: torch.Tensor = (self.out(hidden.mean(dim=2)) ** 2).mean()
        return loss


def build(config: EngramConfig, mapping: NgramHashMapping, embedding: nn.Module) -> TinyModel:
    torch.manual_seed(0)
    engram = Engram(1, config, HIDDEN, HC, mapping, embedding)  # type: ignore[arg-type]
    return TinyModel(engram)


@pytest.mark.parametrize(
    ("optimizer", "store_args", "torch_optimizer"),
    [
        ("sgd", {"lr": 0.5}, lambda p: torch.optim.SGD(p, lr=0.5)),
        # lr 0.01: torch (2.15 on) updates rows with a fused multiply-add and the store
        # rounds twice, a last-bit difference that Adagrad on a near-empty accumulator
        # multiplies by lr / sqrt(sum): at lr 0.1 that reaches 1e-5 within 20 steps. A wrong
        # update (state, eps, order) still shows at 0.01 by orders of magnitude more.
        (
            "adagrad",
            {"lr": 0.01, "eps": 1e-10},
            lambda p: torch.optim.Adagrad(p, lr=0.01, eps=1e-10),
        ),
        (
            "adam",
            {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8},
            lambda p: torch.optim.SparseAdam(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8),
        ),
    ],
)
def test_store_table_trains_like_a_local_table(
    daemon: Daemon,
    tiny_engram: tuple[EngramConfig, NgramHashMapping],
    optimizer: str,
    store_args: dict[str, object],
    torch_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
) -> None:
    config, mapping = tiny_engram
    sizes = mapping.table_sizes(1)
    with EngramClient(daemon.address) as client:
        client.create_table(
            f"parity-{optimizer}",
            sum(sizes),
            config.embed_dim_per_head,
            optimizer=optimizer,
            init_std=0.5,
            seed=1,
            **store_args,  # type: ignore[arg-type]
        )
        initial = client.lookup(f"parity-{optimizer}", np.arange(sum(sizes)))
        local = LocalEmbedding(sizes, config.embed_dim_per_head)
        with torch.no_grad():
            local.embedding.weight.copy_(torch.from_numpy(initial))
        store = StoreEmbedding(sizes, config.embed_dim_per_head, client, f"parity-{optimizer}")
        local_model = build(config, mapping, local)
        store_model = build(config, mapping, store)

        def dense(model: TinyModel) -> list[torch.Tensor]:
            return [p for n, p in model.named_parameters() if "multi_head_embedding" not in n]

        local_dense = torch.optim.SGD(dense(local_model), lr=0.05)
        store_dense = torch.optim.SGD(dense(store_model), lr=0.05)
        local_sparse = torch_optimizer([local.embedding.weight])
        rng = np.random.default_rng(2)
        with torch.sparse.check_sparse_tensor_invariants(enable=True):  # type: ignore[no-untyped-call]
            for _ in range(STEPS):
                ids = torch.from_numpy(rng.integers(0, 8192, (2, 12)))
                losses = []
                for model, opts in (
                    (local_model, (local_dense, local_sparse)),
                    (store_model, (store_dense,)),
                ):
                    for opt in opts:
                        opt.zero_grad()
                    loss = model(ids)
                    loss.backward()
                    for opt in opts:
                        opt.step()
                    losses.append(loss.item())
                assert losses[1] == pytest.approx(losses[0], rel=1e-5)
        store.wait_for_pushes()
        trained = client.lookup(f"parity-{optimizer}", np.arange(sum(sizes)))
    assert not np.allclose(trained, initial), "the store's rows must have been trained"
    np.testing.assert_allclose(
        trained, local.embedding.weight.detach().numpy(), rtol=1e-5, atol=1e-5
    )
