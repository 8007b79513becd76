"""The Engram layer, with the reference's structure and parameter names
(`engram_demo_v1.py`): multi-head embedding of hashed n-grams, per-branch key projections
gated against the hidden state through RMSNorms, a value projection, and a depthwise causal
short convolution with dilation = max n-gram order over `hc_mult` branches.

The embedding is a backend (`LocalEmbedding` or `StoreEmbedding`), so the same module trains with
rows in process or in a store daemon.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from client.config import EngramConfig
from client.hashing import NgramHashMapping
from client.torch.embeddings import LocalEmbedding, StoreEmbedding


class ShortConv(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        kernel_size: int = 4,
        dilation: int = 1,
        norm_eps: float = 1e-5,
        hc_mult: int = 4,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.hc_mult = hc_mult
        self.activation = activation
        total_channels = hidden_size * hc_mult
        self.conv = nn.Conv1d(
            in_channels=total_channels,
            out_channels=total_channels,
            kernel_size=kernel_size,
            groups=total_channels,
            bias=False,
            padding=(kernel_size - 1) * dilation,
            dilation=dilation,
        )
        self.norms = nn.ModuleList([nn.RMSNorm(hidden_size, eps=norm_eps) for _ in range(hc_mult)])
        if activation:
            self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, hc_mult, D] -> same shape."""
        batch, seq, groups, channels = x.shape
        normed = torch.cat([self.norms[i](x[:, :, i, :]) for i in range(groups)], dim=-1)
        y = self.conv(normed.transpose(1, 2))[..., :seq]
        if self.activation:
            y = self.act_fn(y)
        out: torch.Tensor = y.transpose(1, 2).reshape(batch, seq, groups, channels).contiguous()
        return out


class Engram(nn.Module):
    """One Engram layer. `embedding` defaults to a `LocalEmbedding` of the layer's heads."""

    def __init__(
        self,
        layer_id: int,
        config: EngramConfig,
        hidden_size: int,
        hc_mult: int = 4,
        hash_mapping: NgramHashMapping | None = None,
        embedding: LocalEmbedding | StoreEmbedding | None = None,
    ) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.hidden_size = hidden_size
        self.hc_mult = hc_mult
        self.hash_mapping = hash_mapping or NgramHashMapping(
            engram_vocab_size=config.engram_vocab_size,
            max_ngram_size=config.max_ngram_size,
            n_embed_per_ngram=config.n_embed_per_ngram,
            n_head_per_ngram=config.n_head_per_ngram,
            layer_ids=config.layer_ids,
            tokenizer_name_or_path=config.tokenizer_name_or_path,
            pad_id=config.pad_id,
            seed=config.seed,
        )
        self.multi_head_embedding = embedding or LocalEmbedding(
            self.hash_mapping.table_sizes(layer_id), config.embed_dim_per_head
        )
        self.short_conv = ShortConv(
            hidden_size,
            kernel_size=config.kernel_size,
            dilation=config.max_ngram_size,
            hc_mult=hc_mult,
        )
        engram_hidden_size = config.engram_hidden_size
        self.value_proj = nn.Linear(engram_hidden_size, hidden_size)
        self.key_projs = nn.ModuleList(
            [nn.Linear(engram_hidden_size, hidden_size) for _ in range(hc_mult)]
        )
        self.norm1 = nn.ModuleList([nn.RMSNorm(hidden_size) for _ in range(hc_mult)])
        self.norm2 = nn.ModuleList([nn.RMSNorm(hidden_size) for _ in range(hc_mult)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        hash_ids: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states [B, T, hc_mult, D], input_ids [B, T] -> [B, T, hc_mult, D].
        `hash_ids` and `rows` may come precomputed from a prefetcher."""
        if hash_ids is None:
            hashed = self.hash_mapping.hash(input_ids.cpu().numpy())[self.layer_id]
            hash_ids = torch.from_numpy(hashed).to(hidden_states.device)
        embeddings = self.multi_head_embedding(hash_ids, rows).flatten(start_dim=-2)
        gates = []
        for hc in range(self.hc_mult):
            key = self.norm1[hc](self.key_projs[hc](embeddings))
            query = self.norm2[hc](hidden_states[:, :, hc, :])
            gate = (key * query).sum(dim=-1) / math.sqrt(self.hidden_size)
            gate = gate.abs().clamp_min(1e-6).sqrt() * gate.sign()
            gates.append(gate.sigmoid().unsqueeze(-1))
        value = torch.stack(gates, dim=2) * self.value_proj(embeddings).unsqueeze(2)
        out: torch.Tensor = value + self.short_conv(value)
        return out
