"""Engram configurations of released models, as their inference code defines them, for
`EngramConfig.preset`.

`deepseek-v4.1-flash`, as read from DeepSeek-V4.1-Flash's inference code and its engines'
support (the issue that asked for it quotes them; we could not read those sources here, so
every value is a field of the returned config that a user can change): Engram at layers 1
and 14; 2-, 3- and 4-grams with 8 heads each, so 24 hash ids per position and layer; every
(order, head) searches its prime upward from 16,000,000 as the reference's search does,
never reusing a prime across orders or layers (16000057, 16000079, 16000081, ...), so a
layer's table has the sum of its 24 primes as rows: 384,006,168 (layer 1) and 384,016,682
(layer 14); rows of 256 values stored as FP8 E4M3 with a power-of-two (E8M0) scale per 32
values; multipliers as the reference's with seed 0; pad id 2 (a raw id, mapped through the
compression table). Its tokenizer compresses to 99,092 ids and its code refuses any other
count, since every multiplier depends on it: so does `EngramConfig.preset`, given a
tokenizer. The tables' sizes do not depend on the tokenizer: without one, a preset plans and
creates tables, and hashing (token lookups) needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    # EngramConfig's fields, by the reference's names, and how the store keeps the rows.
    fields: dict[str, Any]
    # What the model's tokenizer compresses to; a tokenizer of another count is refused.
    compressed_vocab_size: int


PRESETS = {
    "deepseek-v4.1-flash": Preset(
        {
            "engram_vocab_size": [16_000_000, 16_000_000, 16_000_000],
            "max_ngram_size": 4,
            # 8 heads of 256 values each.
            "n_embed_per_ngram": 8 * 256,
            "n_head_per_ngram": 8,
            "layer_ids": [1, 14],
            "pad_id": 2,
            "seed": 0,
            "row_dtype": "fp8_e4m3",
        },
        compressed_vocab_size=99_092,
    ),
}
