"""The store tables of an Engram config: one per layer, holding every head's rows, sized
from the config's hashing (prime table sizes per head, computed here, never by hand)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from client.client import EngramClient
from client.config import EngramConfig
from client.hashing import NgramHashMapping
from client.results import TableInfo


@dataclass(frozen=True)
class EngramTablePlan:
    """One layer's table: its name, rows (the sum of its heads' prime sizes) and width."""

    layer: int
    name: str
    num_rows: int
    dim: int
    head_sizes: list[int]


def hash_mapping(config: EngramConfig) -> NgramHashMapping:
    return NgramHashMapping(
        config.engram_vocab_size,
        config.max_ngram_size,
        config.n_embed_per_ngram,
        config.n_head_per_ngram,
        config.layer_ids,
        config.tokenizer_name_or_path,
        config.pad_id,
        config.seed,
    )


def plan_engram_tables(
    config: EngramConfig, prefix: str = "engram-L", mapping: NgramHashMapping | None = None
) -> list[EngramTablePlan]:
    """The tables `create_engram_tables` makes: `{prefix}{layer}` for each layer."""
    mapping = mapping or hash_mapping(config)
    return [
        EngramTablePlan(
            layer,
            f"{prefix}{layer}",
            mapping.layer_table_rows(layer),
            config.embed_dim_per_head,
            mapping.table_sizes(layer),
        )
        for layer in config.layer_ids
    ]


def create_engram_tables(
    client: EngramClient, config: EngramConfig, prefix: str = "engram-L", **table_options: Any
) -> list[TableInfo]:
    """Creates each layer's table (seeded with its layer id unless `seed` is given). On one
    daemon the table also gets the layer's hash config, so `lookup_tokens` works on it;
    `table_options` are `EngramClient.create_table`'s."""
    mapping = hash_mapping(config)
    infos = []
    for plan in plan_engram_tables(config, prefix, mapping):
        options = {"seed": plan.layer, **table_options}
        if len(client.shards) == 1:
            options.setdefault("hash_config", mapping.hash_config(plan.layer))
        infos.append(client.create_table(plan.name, plan.num_rows, plan.dim, **options))
    return infos
