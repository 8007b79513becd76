"""The store tables of an Engram config: one per layer, holding every head's rows, sized
from the config's hashing (prime table sizes per head, computed here, never by hand)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from client.client import EngramClient
from client.config import EngramConfig
from client.hashing import HashFields, NgramHashMapping
from client.results import TableInfo
from store import _native


@dataclass(frozen=True)
class EngramTablePlan:
    """One layer's table: its name, rows (the sum of its heads' prime sizes), width, how its
    rows are stored, and its heads' sizes in hash-id column order."""

    layer: int
    name: str
    num_rows: int
    dim: int
    head_sizes: list[int]
    dtype: str = "float32"


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


def plan_engram_tables(config: EngramConfig, prefix: str = "engram-L") -> list[EngramTablePlan]:
    """The tables `create_engram_tables` makes: `{prefix}{layer}` for each layer. The sizes
    come from the config's prime search alone: no tokenizer is needed (one that is named is
    read, so that a config that could not hash is refused here too)."""
    if config.tokenizer_name_or_path:
        hash_mapping(config)
    return _sized_tables(config, prefix)


def _sized_tables(config: EngramConfig, prefix: str) -> list[EngramTablePlan]:
    """The plans, from the config's fields alone (checked, naming a bad one)."""
    fields = HashFields.check(
        config.engram_vocab_size,
        config.max_ngram_size,
        config.n_embed_per_ngram,
        config.n_head_per_ngram,
        config.layer_ids,
        config.pad_id,
        config.seed,
    )
    sizes = _native.table_sizes(fields.vocab_sizes, fields.n_head_per_ngram, len(fields.layer_ids))
    plans = []
    for layer, layer_sizes in zip(config.layer_ids, sizes, strict=True):
        heads = [p for order in layer_sizes for p in order]
        plans.append(
            EngramTablePlan(
                layer,
                f"{prefix}{layer}",
                sum(heads),
                config.embed_dim_per_head,
                heads,
                config.row_dtype,
            )
        )
    return plans


def create_engram_tables(
    client: EngramClient, config: EngramConfig, prefix: str = "engram-L", **table_options: Any
) -> list[TableInfo]:
    """Creates each layer's table (seeded with its layer id unless `seed` is given, rows of
    the config's `row_dtype` unless `dtype` is). On one daemon, and when the config names a
    tokenizer, the table also gets the layer's hash config, so `lookup_tokens` works on it;
    `table_options` are `EngramClient.create_table`'s."""
    mapping = hash_mapping(config) if config.tokenizer_name_or_path else None
    infos = []
    # The mapping, when there is one, has read (and checked) the tokenizer already.
    for plan in _sized_tables(config, prefix) if mapping else plan_engram_tables(config, prefix):
        options = {"seed": plan.layer, "dtype": config.row_dtype, **table_options}
        if len(client.shards) == 1 and mapping is not None:
            options.setdefault("hash_config", mapping.hash_config(plan.layer))
        infos.append(client.create_table(plan.name, plan.num_rows, plan.dim, **options))
    return infos
