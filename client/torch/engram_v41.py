"""The Engram module of DeepSeek-V4.1-Flash, beside the reference demo's (`engram.py`).

As the issue that asked for it quotes V4.1's inference code (we could not read that code
here, so the choices it leaves open are arguments: `bias`, `norm_eps`): a position's 24 rows
(2/3/4-grams x 8 heads, hashed with the token mask) are flattened and projected by `wkv` to
one key per hyper-connection copy of the hidden stream plus one value shared by all copies;
each copy's gate is the sigmoid of the signed square root (magnitude clamped at 1e-6) of
the dot product of that copy of the stream and its key, both RMS-normalised per (token,
copy) over the hidden size, weighted by `q_weight * k_weight` and scaled by
hidden_size^-0.5; masked positions (image tokens) get gate 0; the output is
`h + gate * value`. There is no short convolution.

The rows come from a backend (`LocalEmbedding`, or `StoreEmbedding` for rows in a store
daemon, whose backward pushes their gradients), so a released model's memory can be
fine-tuned with its tables in the store while `wkv` and the gate weights train as usual.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from client.hashing import NgramHashMapping
from client.torch.embeddings import LocalEmbedding, StoreEmbedding


class EngramV41(nn.Module):
    def __init__(
        self,
        layer_id: int,
        hash_mapping: NgramHashMapping,
        hidden_size: int,
        hc_mult: int = 4,
        embedding: LocalEmbedding | StoreEmbedding | None = None,
        bias: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if layer_id not in hash_mapping.layer_ids:
            raise ValueError(f"layer_id {layer_id} is not one of {hash_mapping.layer_ids}")
        self.layer_id = layer_id
        self.hash_mapping = hash_mapping
        self.hidden_size = hidden_size
        self.hc_mult = hc_mult
        self.norm_eps = norm_eps
        dim = hash_mapping.n_embed_per_ngram // hash_mapping.n_head_per_ngram
        self.embed = embedding or LocalEmbedding(hash_mapping.table_sizes(layer_id), dim)
        rows_width = hash_mapping.heads_per_layer * dim
        self.wkv = nn.Linear(rows_width, (hc_mult + 1) * hidden_size, bias=bias)
        self.q_weight = nn.Parameter(torch.ones(hidden_size))
        self.k_weight = nn.Parameter(torch.ones(hidden_size))

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        hash_ids: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states [B, T, hc_mult, D], input_ids [B, T] (raw token ids), token_mask
        [B, T] (True: the token takes part; None: every one) -> [B, T, hc_mult, D].
        `hash_ids` (hashed with that mask) and `rows` may come precomputed."""
        if hash_ids is None:
            mask = None if token_mask is None else token_mask.cpu().numpy().astype(np.bool_)
            hashed = self.hash_mapping.hash(input_ids.cpu().numpy(), token_mask=mask)
            hash_ids = torch.from_numpy(hashed[self.layer_id]).to(hidden_states.device)
        flat = self.embed(hash_ids, rows).flatten(start_dim=-2).to(hidden_states.dtype)
        batch, seq = flat.shape[:2]
        kv = self.wkv(flat).view(batch, seq, self.hc_mult + 1, self.hidden_size)
        keys, value = kv[:, :, : self.hc_mult], kv[:, :, self.hc_mult]
        dot = (self._rms(hidden_states) * self._rms(keys) * self.q_weight * self.k_weight).sum(-1)
        dot = dot * self.hidden_size**-0.5
        gate = torch.sigmoid(dot.sign() * dot.abs().clamp_min(1e-6).sqrt())
        if token_mask is not None:
            gate = gate * token_mask.to(gate.device, gate.dtype).unsqueeze(-1)
        out: torch.Tensor = hidden_states + gate.unsqueeze(-1) * value.unsqueeze(2)
        return out

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.norm_eps)
