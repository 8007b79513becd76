"""Engram hashing, bit for bit the published reference (`engram_demo_v1.py`).

`CompressedTokenizer` merges token ids whose text normalises to the same key;
`NgramHashMapping` hashes the suffix n-grams of compressed ids into per-head prime-sized
tables. Argument names follow the reference so its users can switch by changing an import.
The per-token work runs in the Rust kernel (`store._native`) with the GIL released.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import numpy.typing as npt
from tokenizers import Regex, Tokenizer, normalizers

from client.hash_identity import HashIdentity
from store import _native
from store._proto.engram.store.v1 import store_pb2 as pb
from store.arrays import as_int64_array, as_token_mask
from store.spec import is_integer

TokenizerLike = Union[str, "os.PathLike[str]", Tokenizer, Any]

# The reference keeps a lone space as a key of its own: it is swapped for this private-use
# character around the Strip step.
_SENTINEL = "\ue000"
_REPLACEMENT_CHARACTER = "\ufffd"
_PRIME_1 = 10007


def _key_normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.NFD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
            normalizers.Replace(Regex(r"^ $"), _SENTINEL),
            normalizers.Strip(),
            normalizers.Replace(_SENTINEL, " "),
        ]
    )


def load_tokenizer(tokenizer: TokenizerLike) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json path, a directory holding one, a
    `Tokenizer`, or a transformers fast tokenizer (its backend is used)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    if isinstance(tokenizer, (str, os.PathLike)):
        path = os.fspath(tokenizer)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer: no tokenizer.json at {path!r}")
        return Tokenizer.from_file(path)
    raise TypeError(
        "tokenizer must be a path to tokenizer.json, a directory holding one, or a "
        f"tokenizers.Tokenizer; got {type(tokenizer).__name__}"
    )


class CompressedTokenizer:
    """Maps raw token ids to compressed ids: tokens whose decoded text normalises to the same
    key (NFKC, accents stripped, lowercased, whitespace collapsed) share one id."""

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self.tokenizer = load_tokenizer(tokenizer)
        self.lookup_table, self.num_new_token = self._build_lookup_table()
        # SHA-256 of the tokenizer's canonical JSON: one tokenizer, one digest, however it
        # was given (client/hash_identity.py).
        self.sha256 = hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()

    def _build_lookup_table(self) -> tuple[npt.NDArray[np.int64], int]:
        normalizer = _key_normalizer()
        vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        key_to_new: dict[str, int] = {}
        lookup = np.empty(vocab_size, dtype=np.int64)
        for tid in range(vocab_size):
            text = self.tokenizer.decode([tid], skip_special_tokens=False)
            if _REPLACEMENT_CHARACTER in text:
                # A partial UTF-8 sequence: the raw token string tells such tokens apart.
                key = self.tokenizer.id_to_token(tid) or text
            else:
                key = normalizer.normalize_str(text) or text
            lookup[tid] = key_to_new.setdefault(key, len(key_to_new))
        return lookup, len(key_to_new)

    @property
    def vocab_size(self) -> int:
        """Number of raw token ids."""
        return len(self.lookup_table)

    def __len__(self) -> int:
        return self.num_new_token

    def __call__(self, input_ids: Any) -> npt.NDArray[np.int64]:
        """Compressed ids, same shape; negative ids pass through unchanged."""
        ids = as_int64_array(input_ids, "input_ids")
        return _native.compress_ids(ids.reshape(-1), self.lookup_table).reshape(ids.shape)


def _positive_int(value: Any, name: str) -> int:
    if not is_integer(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class HashFields:
    """The fields of an Engram hashing that need no tokenizer, checked."""

    vocab_sizes: list[int]
    max_ngram_size: int
    n_embed_per_ngram: int
    n_head_per_ngram: int
    layer_ids: list[int]
    seed: int

    @staticmethod
    def check(
        engram_vocab_size: Sequence[int],
        max_ngram_size: int,
        n_embed_per_ngram: int,
        n_head_per_ngram: int,
        layer_ids: Sequence[int],
        pad_id: int,
        seed: int,
    ) -> HashFields:
        """The fields, or a `ValueError` naming the first one out of its range."""
        if not is_integer(max_ngram_size):
            raise ValueError(f"max_ngram_size must be an integer, got {max_ngram_size!r}")
        if max_ngram_size < 2:
            raise ValueError(f"max_ngram_size must be at least 2, got {max_ngram_size}")
        vocab_sizes = [_positive_int(v, "engram_vocab_size entries") for v in engram_vocab_size]
        if len(vocab_sizes) != max_ngram_size - 1:
            raise ValueError(
                f"engram_vocab_size needs one size per n-gram order 2..{max_ngram_size} "
                f"({max_ngram_size - 1} entries), got {len(vocab_sizes)}"
            )
        n_embed = _positive_int(n_embed_per_ngram, "n_embed_per_ngram")
        n_head = _positive_int(n_head_per_ngram, "n_head_per_ngram")
        layers = [int(layer) for layer in layer_ids]
        if not layers:
            raise ValueError("layer_ids must name at least one layer")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer_ids must be distinct, got {layers}")
        if any(layer < 0 for layer in layers):
            raise ValueError(f"layer_ids must be non-negative, got {layers}")
        if not is_integer(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not is_integer(pad_id):
            raise ValueError(f"pad_id must be an integer token id, got {pad_id!r}")
        return HashFields(vocab_sizes, int(max_ngram_size), n_embed, n_head, layers, int(seed))


class NgramHashMapping:
    """Hash ids of every Engram layer for batches of raw token ids."""

    def __init__(
        self,
        engram_vocab_size: Sequence[int],
        max_ngram_size: int,
        n_embed_per_ngram: int,
        n_head_per_ngram: int,
        layer_ids: Sequence[int],
        tokenizer_name_or_path: TokenizerLike | CompressedTokenizer,
        pad_id: int,
        seed: int,
    ) -> None:
        fields = HashFields.check(
            engram_vocab_size,
            max_ngram_size,
            n_embed_per_ngram,
            n_head_per_ngram,
            layer_ids,
            pad_id,
            seed,
        )
        vocab_sizes = fields.vocab_sizes
        self.n_embed_per_ngram = fields.n_embed_per_ngram
        self.n_head_per_ngram = fields.n_head_per_ngram
        self.layer_ids = fields.layer_ids
        self.vocab_size_per_ngram = vocab_sizes
        self.max_ngram_size = fields.max_ngram_size
        self.seed = fields.seed

        if isinstance(tokenizer_name_or_path, CompressedTokenizer):
            self.compressed_tokenizer = tokenizer_name_or_path
        else:
            self.compressed_tokenizer = CompressedTokenizer(tokenizer_name_or_path)
        self.tokenizer_vocab_size = len(self.compressed_tokenizer)
        raw_vocab = self.compressed_tokenizer.vocab_size
        if not 0 <= pad_id < raw_vocab:
            raise ValueError(f"pad_id {pad_id} is outside the tokenizer vocabulary of {raw_vocab}")
        self.pad_id = int(self.compressed_tokenizer.lookup_table[pad_id])

        self.layer_multipliers = {layer: self._multipliers(layer) for layer in self.layer_ids}
        sizes = _native.table_sizes(vocab_sizes, self.n_head_per_ngram, len(self.layer_ids))
        self.vocab_size_across_layers: dict[int, list[list[int]]] = dict(
            zip(self.layer_ids, sizes, strict=True)
        )
        self._hasher = _native.NgramHasher(
            self.max_ngram_size,
            self.n_head_per_ngram,
            self.pad_id,
            [self.layer_multipliers[layer].tolist() for layer in self.layer_ids],
            [[p for order in sizes_ for p in order] for sizes_ in sizes],
            self.compressed_tokenizer.lookup_table,
        )

    def _multipliers(self, layer_id: int) -> npt.NDArray[np.int64]:
        # numpy's generator is part of the reference's definition, so it is used as is.
        max_long = np.iinfo(np.int64).max
        half_bound = max(1, (max_long // self.tokenizer_vocab_size) // 2)
        rng = np.random.default_rng(self.seed + _PRIME_1 * layer_id)
        draws = rng.integers(0, half_bound, size=(self.max_ngram_size,), dtype=np.int64)
        return draws * 2 + 1

    @property
    def heads_per_layer(self) -> int:
        """Hash ids per position and layer: `(max_ngram_size - 1) * n_head_per_ngram`."""
        return self._hasher.heads_per_layer

    def table_sizes(self, layer_id: int) -> list[int]:
        """The prime size of each head's table for a layer, in hash-id column order."""
        return [p for order in self.vocab_size_across_layers[layer_id] for p in order]

    def hash_config(self, layer_id: int) -> pb.HashConfig:
        """The resolved hashing of one layer, for a store table that hashes token ids itself
        (`LookupTokens`)."""
        lookup = self.compressed_tokenizer.lookup_table
        return pb.HashConfig(
            max_ngram_size=self.max_ngram_size,
            n_head_per_ngram=self.n_head_per_ngram,
            pad_id=self.pad_id,
            layer_id=layer_id,
            multipliers=self.layer_multipliers[layer_id].tolist(),
            table_sizes=self.table_sizes(layer_id),
            lookup_table=pb.Array(
                dtype="int64", shape=[len(lookup)], data=lookup.astype("<i8").tobytes()
            ),
            tokenizer_sha256=self.compressed_tokenizer.sha256,
        )

    def hash_identity(self, layer_id: int) -> HashIdentity:
        """Everything that decides one layer's rows (client/hash_identity.py)."""
        return HashIdentity.of_hash_config(self.hash_config(layer_id))

    def fingerprint(self, layer_id: int) -> int:
        """Digest of one layer's hashing; a store table built from :meth:`hash_config` reports
        the same value and refuses token lookups quoting another."""
        return _native.NgramHasher(
            self.max_ngram_size,
            self.n_head_per_ngram,
            self.pad_id,
            [self.layer_multipliers[layer_id].tolist()],
            [self.table_sizes(layer_id)],
            self.compressed_tokenizer.lookup_table,
        ).fingerprint

    def head_offsets(self, layer_id: int) -> npt.NDArray[np.int64]:
        """Where each head's rows start when a layer's heads share one table (as the
        reference's MultiHeadEmbedding lays them out): the running sum of head sizes."""
        sizes = np.array(self.table_sizes(layer_id), dtype=np.int64)
        return np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def layer_table_rows(self, layer_id: int) -> int:
        """Rows of the table holding every head of a layer."""
        return sum(self.table_sizes(layer_id))

    def row_keys(self, input_ids: Any, token_mask: Any = None) -> dict[int, npt.NDArray[np.int64]]:
        """`{layer_id: [B, T, heads]}` row keys into each layer's shared head table: the hash
        ids shifted by :meth:`head_offsets`."""
        return {
            layer: hashes + self.head_offsets(layer)
            for layer, hashes in self.hash(input_ids, token_mask).items()
        }

    def hash(self, input_ids: Any, token_mask: Any = None) -> dict[int, npt.NDArray[np.int64]]:
        """`[B, T]` raw token ids (array, list or CPU tensor) -> `{layer_id: [B, T, heads]}`
        int64 hash ids; each layer's array is a view into one buffer built by the kernel.

        `token_mask` (`[B, T]` booleans, True where a token takes part; None: every token
        does) is DeepSeek-V4.1's rule for image spans: walking back from position t with
        shift s = 0, 1, ..., a slot is blocked when t - s < 0, when the token at t - s is
        masked, or when a smaller shift was blocked, and a blocked slot takes the compressed
        pad id. A masked position hashes as all pads, and no n-gram reaches across a masked
        span."""
        ids = self._as_input_ids(input_ids)
        out = np.empty(self.output_shape(*ids.shape), np.int64)
        self.hash_into(ids, out, token_mask)
        return {layer: out[i] for i, layer in enumerate(self.layer_ids)}

    def output_shape(self, batch: int, seq: int) -> tuple[int, int, int, int]:
        """Shape of the buffer :meth:`hash_into` fills: `[layers, batch, seq, heads]`."""
        return (len(self.layer_ids), batch, seq, self.heads_per_layer)

    def hash_into(self, input_ids: Any, out: npt.NDArray[np.int64], token_mask: Any = None) -> None:
        """:meth:`hash` into a reusable int64 buffer of shape :meth:`output_shape`, layers in
        `layer_ids` order. Reusing buffers spares the cost of faulting in fresh memory, which
        is about as large as the hashing itself."""
        ids = self._as_input_ids(input_ids)
        mask = None if token_mask is None else as_token_mask(token_mask, ids.shape)
        expected = self.output_shape(*ids.shape)
        if out.shape != expected or out.dtype != np.int64 or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous int64 array of shape {expected}, "
                f"got {out.dtype} {out.shape}"
            )
        self._hasher.hash_into(ids, out, mask)

    @staticmethod
    def _as_input_ids(input_ids: Any) -> npt.NDArray[np.int64]:
        ids = as_int64_array(input_ids, "input_ids")
        if ids.ndim != 2:
            raise ValueError(f"input_ids must have shape [batch, seq], got {ids.shape}")
        return ids
