"""DeepSeek-V4.1-Flash's Engram module (client/torch/engram_v41.py): forward and gradients
against a plain, position-by-position transcription of its definition written here, with
image tokens masked, with rows in process and in a store daemon (whose backward pushes the
rows' gradients)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from daemon import daemon_thread

from client import EngramClient, NgramHashMapping
from client.torch import EngramV41, LocalEmbedding, StoreEmbedding
from store.spec import OptimizerSpec, TableSpec

HIDDEN, HC, EPS = 16, 2, 1e-6


@pytest.fixture(scope="module")
def mapping(tokenizer_path: Path) -> NgramHashMapping:
    # V4.1's structure (2/3/4-grams x 8 heads, layers 1 and 14), smaller tables and rows.
    return NgramHashMapping([101, 103, 107], 4, 8 * 4, 8, [1, 14], tokenizer_path, 2, 0)


def transcription(
    module: EngramV41,
    h: torch.Tensor,
    ids: np.ndarray,
    mask: np.ndarray,
    table: torch.Tensor,
) -> torch.Tensor:
    """The definition, one (token, copy) at a time."""
    mapping = module.hash_mapping
    keys = mapping.row_keys(ids, token_mask=mask)[module.layer_id]
    weight, bias = module.wkv.weight, module.wkv.bias
    outputs = []
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            rows = table[torch.from_numpy(keys[b, t])].reshape(-1)  # 24 rows, flattened
            kv = weight @ rows + (bias if bias is not None else 0)
            value = kv[HC * HIDDEN :]
            for c in range(HC):
                q, k = h[b, t, c], kv[c * HIDDEN : (c + 1) * HIDDEN]
                qn = q / torch.sqrt((q * q).mean() + EPS)
                kn = k / torch.sqrt((k * k).mean() + EPS)
                dot = (qn * kn * module.q_weight * module.k_weight).sum() / HIDDEN**0.5
                signed_root = torch.sign(dot) * torch.sqrt(torch.clamp(dot.abs(), min=1e-6))
                gate = torch.sigmoid(signed_root) * float(mask[b, t])
                outputs.append(q + gate * value)
    return torch.stack(outputs).reshape(h.shape)


def inputs(seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 5000, (2, 7))
    mask = rng.random(ids.shape) > 0.3
    h = torch.randn(2, 7, HC, HIDDEN, generator=torch.Generator().manual_seed(seed))
    return h, ids, mask


@pytest.mark.parametrize("bias", [False, True])
def test_forward_and_gradients_match_the_definition(mapping: NgramHashMapping, bias: bool) -> None:
    torch.manual_seed(0)
    module = EngramV41(14, mapping, HIDDEN, hc_mult=HC, bias=bias)
    embed = module.embed
    assert isinstance(embed, LocalEmbedding)
    with torch.no_grad():
        embed.embedding.weight.normal_()
        module.q_weight.uniform_(0.5, 1.5)
        module.k_weight.uniform_(0.5, 1.5)
    h, ids, mask = inputs(1)
    h_ours = h.clone().requires_grad_()
    ours = module(h_ours, torch.from_numpy(ids), torch.from_numpy(mask))
    h_plain = h.clone().requires_grad_()
    table = embed.embedding.weight
    plain = transcription(module, h_plain, ids, mask, table)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    masked = ~mask
    torch.testing.assert_close(ours[torch.from_numpy(masked)], h[torch.from_numpy(masked)])
    upstream = torch.randn_like(ours)
    params = [module.wkv.weight, module.q_weight, module.k_weight, table]
    ours_grads = torch.autograd.grad((ours * upstream).sum(), [h_ours, *params])
    plain_grads = torch.autograd.grad((plain * upstream).sum(), [h_plain, *params])
    for got, expected in zip(ours_grads, plain_grads, strict=True):
        got = got.to_dense() if got.is_sparse else got
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_rows_in_the_store_give_the_same_output_and_push_their_gradients(
    mapping: NgramHashMapping, tmp_path: Path
) -> None:
    layer, sizes = 1, mapping.table_sizes(1)
    rows = sum(sizes)
    torch.manual_seed(3)
    local_rows = LocalEmbedding(sizes, 4)
    local = EngramV41(layer, mapping, HIDDEN, hc_mult=HC, embedding=local_rows)
    with torch.no_grad():
        local_rows.embedding.weight.normal_()
    start = local_rows.embedding.weight.detach().numpy().copy()
    h, ids, mask = inputs(2)
    with daemon_thread(tmp_path / "data") as d, EngramClient(d.address) as client:
        spec = TableSpec("L1", rows, 4, init="zeros", optimizer=OptimizerSpec("sgd", lr=1.0))
        client.create(spec, importing=True)
        client.write_rows("L1", 0, start, "float32")
        client.finish_import("L1")
        stored_rows = StoreEmbedding(sizes, 4, client, "L1")
        stored = EngramV41(layer, mapping, HIDDEN, hc_mult=HC, embedding=stored_rows)
        stored.wkv.load_state_dict(local.wkv.state_dict())
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        out_local, out_stored = local(h, ids_t, mask_t), stored(h, ids_t, mask_t)
        torch.testing.assert_close(out_stored, out_local)
        upstream = torch.randn_like(out_local)
        (out_local * upstream).sum().backward()
        (out_stored * upstream).sum().backward()
        stored_rows.wait_for_pushes()
        grad = local_rows.embedding.weight.grad
        assert grad is not None
        grad_rows = grad.to_dense().numpy()
        after = client.lookup("L1", np.arange(rows, dtype=np.uint64))
    np.testing.assert_allclose(after, start - grad_rows, rtol=1e-5, atol=1e-6)
