"""A table's hash identity: everything that decides which row a token sequence reads.

A table served under another tokenizer revision or other hash constants returns wrong rows
and raises nothing (users of other engines report exactly that), so each table made from a
hash config carries its identity, `describe` shows it, `export` writes it into the file's
metadata, and `import` refuses a file whose identity differs from its target's, naming the
fields that differ. The fields: the tokenizer's digest (SHA-256 of its canonical JSON, as
`tokenizers` serialises it, so one tokenizer given as a file, a directory or an object has
one digest), the compressed vocabulary's size, the layer, the layer's multipliers, a digest
of the heads' prime sizes and their row offsets, the compressed pad id, the n-gram size and
the heads per n-gram.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from store._proto.engram.store.v1 import store_pb2 as pb

# The key of the safetensors metadata entry that `export` writes: a JSON object of table
# name -> identity.
METADATA_KEY = "engram.hash_identity"


@dataclass(frozen=True)
class HashIdentity:
    tokenizer_sha256: str
    compressed_vocab_size: int
    layer: int
    multipliers: tuple[int, ...]
    tables_sha256: str
    pad_id: int
    max_ngram_size: int
    n_head_per_ngram: int

    @staticmethod
    def of_hash_config(config: pb.HashConfig) -> HashIdentity:
        lookup = np.frombuffer(config.lookup_table.data, dtype="<i8")
        sizes = np.array(config.table_sizes, dtype="<u8")
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype("<u8")
        return HashIdentity(
            tokenizer_sha256=config.tokenizer_sha256,
            compressed_vocab_size=int(lookup.max()) + 1 if lookup.size else 0,
            layer=int(config.layer_id),
            multipliers=tuple(int(m) for m in config.multipliers),
            tables_sha256=hashlib.sha256(sizes.tobytes() + offsets.tobytes()).hexdigest(),
            pad_id=int(config.pad_id),
            max_ngram_size=int(config.max_ngram_size),
            n_head_per_ngram=int(config.n_head_per_ngram),
        )

    def to_json(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["multipliers"] = list(self.multipliers)
        return fields

    @staticmethod
    def from_json(fields: Any, source: str) -> HashIdentity:
        """An identity read from a file; `ValueError` naming `source` if it is not one."""
        names = [f.name for f in dataclasses.fields(HashIdentity)]
        if not isinstance(fields, dict) or sorted(fields) != sorted(names):
            raise ValueError(f"{source}: not a hash identity (fields {names})")
        try:
            return HashIdentity(**{**fields, "multipliers": tuple(fields["multipliers"])})
        except TypeError as error:
            raise ValueError(f"{source}: not a hash identity: {error}") from None

    def differences(self, other: HashIdentity) -> list[str]:
        """Each field that differs, with both values (`self`'s first)."""
        return [
            f"{f.name} ({getattr(self, f.name)!r} against {getattr(other, f.name)!r})"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def identities_in_metadata(metadata: dict[str, str], source: str) -> dict[str, HashIdentity]:
    """The identities an exported file carries, by table (none when it carries none)."""
    if METADATA_KEY not in metadata:
        return {}
    try:
        entries = json.loads(metadata[METADATA_KEY])
    except ValueError as error:
        raise ValueError(f"{source}: metadata {METADATA_KEY} is not JSON: {error}") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{source}: metadata {METADATA_KEY} is not an object")
    return {
        name: HashIdentity.from_json(fields, f"{source}: {METADATA_KEY}[{name!r}]")
        for name, fields in entries.items()
    }
