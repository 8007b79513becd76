"""Engram's configuration, with the reference's field names and defaults."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngramConfig:
    tokenizer_name_or_path: str
    engram_vocab_size: list[int] = field(default_factory=lambda: [129280 * 5, 129280 * 5])
    max_ngram_size: int = 3
    n_embed_per_ngram: int = 512
    n_head_per_ngram: int = 8
    layer_ids: list[int] = field(default_factory=lambda: [1, 15])
    pad_id: int = 2
    seed: int = 0
    kernel_size: int = 4
    # How the store keeps the tables' rows (a released model's format, for its preset).
    row_dtype: str = "float32"

    @property
    def embed_dim_per_head(self) -> int:
        """Width of one head's rows."""
        return self.n_embed_per_ngram // self.n_head_per_ngram

    @property
    def engram_hidden_size(self) -> int:
        """Width of a position's concatenated rows."""
        return (self.max_ngram_size - 1) * self.n_embed_per_ngram

    @staticmethod
    def preset(name: str, tokenizer: str | os.PathLike[str] | None = None) -> EngramConfig:
        """The Engram config of a released model (`client.presets`: "deepseek-v4.1-flash").
        Without `tokenizer`, its tables can be planned and created but no token hashed
        (`tokenizer_name_or_path` is empty); a tokenizer that does not compress to the
        model's count is refused, since every multiplier depends on it."""
        from client.presets import PRESETS

        if name not in PRESETS:
            raise ValueError(f"unknown Engram preset {name!r}; known: {sorted(PRESETS)}")
        preset = PRESETS[name]
        path = "" if tokenizer is None else os.fspath(tokenizer)
        if path:
            from client.hashing import CompressedTokenizer

            compressed = len(CompressedTokenizer(path))
            if compressed != preset.compressed_vocab_size:
                raise ValueError(
                    f"tokenizer {path} compresses to {compressed} ids, but {name} was trained "
                    f"with a tokenizer of {preset.compressed_vocab_size}: its hash ids would "
                    "be another model's"
                )
        return EngramConfig(path, **preset.fields)

    @staticmethod
    def from_json(path: str | os.PathLike[str]) -> EngramConfig:
        """An Engram config from a JSON object with the fields above (the reference's names);
        a relative `tokenizer_name_or_path` is taken relative to the file. Unknown fields
        raise `ValueError` naming them."""
        with open(path) as f:
            try:
                fields = json.load(f)
            except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
                raise ValueError(f"{path}: not a JSON Engram config: {error}") from None
        if not isinstance(fields, dict):
            raise ValueError(f"{path}: an Engram config is a JSON object")
        known = {f.name for f in dataclasses.fields(EngramConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"{path}: unknown Engram config fields {unknown}; known: {sorted(known)}"
            )
        if not isinstance(fields.get("tokenizer_name_or_path"), str):
            raise ValueError(f"{path}: tokenizer_name_or_path (a path) is required")
        tokenizer = os.path.join(
            os.path.dirname(os.path.abspath(path)), fields["tokenizer_name_or_path"]
        )
        return EngramConfig(**{**fields, "tokenizer_name_or_path": tokenizer})
