"""The one typed description of a table and its optimizer, shared by the command line, the
client, the server and the Rust binding (which reads these objects' attributes).

Every option's name and default is spelled here once; `check()` validates a spec at the
door with errors naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from store.errors import InvalidArgumentError

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
# What rows and gradients travel as, and what float tables store.
FLOAT_DTYPES = ("float32", "bfloat16", "float16")
# Stored by serving tables (see rust/src/quant.rs): each row holds its values, one byte
# each, then one scale per QUANT_GROUP values; read packed as stored or dequantized.
QUANTIZED_DTYPES = ("fp8_e4m3", "int8")
TABLE_DTYPES = FLOAT_DTYPES + QUANTIZED_DTYPES
QUANT_GROUP = 32
_SCALE_BYTES = {"fp8_e4m3": 1, "int8": 4}
_ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
INITS = ("normal", "zeros")
TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# The published configurations use 3-grams (4 at most) and 8 heads; these bound what a
# table spec may ask of the hashing kernel.
MAX_NGRAM_SIZE = 16
MAX_HEADS_PER_NGRAM = 256
# The widths of the protocol's integer fields.
UINT32_MAX = (1 << 32) - 1
UINT64_MAX = (1 << 64) - 1


def row_bytes(dtype: str, dim: int) -> int:
    """Bytes of one row of `dim` values stored or sent as `dtype`."""
    if dtype in _SCALE_BYTES:
        return dim + dim // QUANT_GROUP * _SCALE_BYTES[dtype]
    return dim * _ELEMENT_BYTES[dtype]


def row_width(dtype: str, dim: int) -> int:
    """The last dimension of rows as arrays: their values, or the bytes of a packed
    quantized row."""
    return row_bytes(dtype, dim) if dtype in QUANTIZED_DTYPES else dim


def check_table_argument(value: object, argument: str = "table") -> str:
    """`value`, when it is a string: what a client checks of a table name it is given before
    sending it (the daemon checks the name itself)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{argument} must be a string, got {value!r}")
    return value


def check_table_name(name: str) -> str:
    if not TABLE_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"table name must be 1-128 letters, digits, '_', '.' or '-' starting with a "
            f"letter or digit, got {name!r}"
        )
    return name


@dataclass(frozen=True)
class OptimizerSpec:
    """A server-side optimizer. Hyper-parameters left at 0 take PyTorch's defaults (Adagrad
    and row-wise Adagrad eps 1e-10; SparseAdam betas (0.9, 0.999), eps 1e-8): see
    `resolved`."""

    name: str = "sgd"
    lr: float = 0.01
    eps: float = 0.0
    beta1: float = 0.0
    beta2: float = 0.0
    initial_accumulator_value: float = 0.0
    # PyTorch's (coupled, L2) weight decay on the rows a push touches.
    weight_decay: float = 0.0

    def check_fields(self) -> OptimizerSpec:
        """This spec, after checking that each field has its type."""
        if not isinstance(self.name, str):
            raise InvalidArgumentError(f"optimizer must be a name, got {self.name!r}")
        for name in ("lr", "eps", "beta1", "beta2", "initial_accumulator_value", "weight_decay"):
            if not is_real(getattr(self, name)):
                raise InvalidArgumentError(f"{name} must be a number, got {getattr(self, name)!r}")
        return self

    def check(self) -> OptimizerSpec:
        """This spec, after checking what the engine does not: its fields' types, its name,
        and `lr` and `weight_decay` (which `tune_table` changes)."""
        self.check_fields()
        if self.name not in OPTIMIZERS:
            raise InvalidArgumentError(f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidArgumentError(f"lr must be positive, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InvalidArgumentError(
                f"weight_decay must be non-negative, got {self.weight_decay}"
            )
        return self

    def state_dim(self, dim: int) -> int:
        """Float32 state values per row of `dim` values (rust/src/optim.rs)."""
        return {"sgd": 0, "adagrad": dim, "rowwise_adagrad": 1, "adam": 2 * dim}[self.name]

    def resolved(self) -> OptimizerSpec:
        """This optimizer with PyTorch's defaults in place of zeros."""
        self.check()
        if self.name in ("adagrad", "rowwise_adagrad"):
            return dataclasses.replace(self, eps=self.eps or 1e-10)
        if self.name == "adam":
            return dataclasses.replace(
                self,
                eps=self.eps or 1e-8,
                beta1=self.beta1 or 0.9,
                beta2=self.beta2 or 0.999,
            )
        return self


@dataclass(frozen=True)
class HashSpec:
    """One Engram layer's hashing, resolved (`NgramHashMapping.hash_config`): a table with
    one hashes raw token ids itself (`LookupTokens`)."""

    max_ngram_size: int
    n_head_per_ngram: int
    pad_id: int
    layer_id: int
    # One multiplier per n-gram position, and each head's prime table size, in order.
    multipliers: tuple[int, ...]
    table_sizes: tuple[int, ...]
    # Raw token id -> compressed id.
    lookup_table: npt.NDArray[np.int64] = field(compare=False, repr=False)
    # The tokenizer's digest, for the table's hash identity ("" when unknown).
    tokenizer_sha256: str = ""

    @property
    def heads(self) -> int:
        return (self.max_ngram_size - 1) * self.n_head_per_ngram

    def check(self) -> HashSpec:
        if self.tokenizer_sha256 and not re.fullmatch("[0-9a-f]{64}", self.tokenizer_sha256):
            raise InvalidArgumentError(
                "hash_config.tokenizer_sha256 must be 64 lowercase hex digits, got "
                f"{self.tokenizer_sha256[:80]!r}"
            )
        if not 2 <= self.max_ngram_size <= MAX_NGRAM_SIZE:
            raise InvalidArgumentError(
                f"hash_config.max_ngram_size must be 2..{MAX_NGRAM_SIZE}, got {self.max_ngram_size}"
            )
        if not 1 <= self.n_head_per_ngram <= MAX_HEADS_PER_NGRAM:
            raise InvalidArgumentError(
                f"hash_config.n_head_per_ngram must be 1..{MAX_HEADS_PER_NGRAM}, got "
                f"{self.n_head_per_ngram}"
            )
        if self.pad_id < 0:
            raise InvalidArgumentError(
                f"hash_config.pad_id must not be negative, got {self.pad_id}"
            )
        if len(self.multipliers) != self.max_ngram_size:
            raise InvalidArgumentError(
                f"hash_config.multipliers has {len(self.multipliers)} entries, expected "
                f"max_ngram_size = {self.max_ngram_size}"
            )
        if len(self.table_sizes) != self.heads:
            raise InvalidArgumentError(
                f"hash_config.table_sizes has {len(self.table_sizes)} entries, expected "
                f"{self.heads}"
            )
        if self.lookup_table.ndim != 1:
            raise InvalidArgumentError("hash_config.lookup_table must be 1-D")
        return self


@dataclass(frozen=True)
class TableSpec:
    """A table: its name, shape and storage, how never-written rows start, its optimizer,
    and where it sits in a table sharded over several daemons (`first_row`)."""

    name: str
    num_rows: int
    dim: int
    dtype: str = "float32"
    init: str = "normal"
    init_std: float = 0.02
    seed: int = 0
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    # Accept gradients that are NaN or infinite (refused by default).
    allow_non_finite: bool = False
    # The global row of this shard's row 0.
    first_row: int = 0
    # Keep per-block row checksums for `verify` (each push pays two hashes of each row).
    row_checksums: bool = True
    # Serve lookups only: pushes are refused.
    read_only: bool = False
    hash_config: HashSpec | None = None

    def check_fields(self) -> TableSpec:
        """This spec, after checking that each field has its type and fits the protocol's
        width (proto/engram/store/v1/store.proto): what a client checks before sending it."""
        check_table_argument(self.name, "table name")
        checked_integer("num_rows", self.num_rows, 0, UINT64_MAX)
        checked_integer("dim", self.dim, 0, UINT32_MAX)
        checked_integer("seed", self.seed, 0, UINT64_MAX)
        checked_integer("first_row", self.first_row, 0, UINT64_MAX)
        for text in ("dtype", "init"):
            if not isinstance(getattr(self, text), str):
                raise InvalidArgumentError(f"{text} must be a string, got {getattr(self, text)!r}")
        if not is_real(self.init_std):
            raise InvalidArgumentError(f"init_std must be a number, got {self.init_std!r}")
        for flag in ("allow_non_finite", "row_checksums", "read_only"):
            checked_bool(flag, getattr(self, flag))
        if self.hash_config is not None and not isinstance(self.hash_config, HashSpec):
            raise InvalidArgumentError(
                f"hash_config must be a HashSpec (NgramHashMapping.hash_config), got "
                f"{self.hash_config!r}"
            )
        self.optimizer.check_fields()
        return self

    def check(self) -> TableSpec:
        """This spec, after checking every field the engine does not."""
        self.check_fields()
        check_table_name(self.name)
        if self.num_rows <= 0 or self.dim <= 0:
            raise InvalidArgumentError(
                f"num_rows and dim must be positive, got {self.num_rows} and {self.dim}"
            )
        if self.first_row > UINT64_MAX - self.num_rows:
            raise InvalidArgumentError(
                f"first_row {self.first_row} + num_rows {self.num_rows} is beyond 2^64"
            )
        if self.dtype not in TABLE_DTYPES:
            raise InvalidArgumentError(f"dtype must be one of {TABLE_DTYPES}, got {self.dtype!r}")
        if self.dtype in QUANTIZED_DTYPES and self.dim % QUANT_GROUP:
            raise InvalidArgumentError(
                f"{self.dtype} rows hold whole groups of {QUANT_GROUP} values: dim must be a "
                f"multiple of {QUANT_GROUP}, got {self.dim}"
            )
        if self.init not in INITS:
            raise InvalidArgumentError(f"init must be one of {INITS}, got {self.init!r}")
        self.optimizer.check()
        if self.hash_config is not None:
            hashed_rows = int(sum(self.hash_config.check().table_sizes))
            if hashed_rows > self.num_rows:
                raise InvalidArgumentError(
                    f"hash config addresses {hashed_rows} rows but the table has {self.num_rows}"
                )
        return self

    def disk_bytes_per_row(self) -> int:
        """Disk a written row takes, with its optimizer state; rows never written take none."""
        state = 0 if self.dtype in QUANTIZED_DTYPES else self.optimizer.state_dim(self.dim)
        return row_bytes(self.dtype, self.dim) + 4 * state

    def resolved(self) -> TableSpec:
        """This spec with its optimizer's defaults filled in (what the engine is given)."""
        return dataclasses.replace(self, optimizer=self.optimizer.resolved())


# Bounds of a step-synchronous push (`SyncStep`).
REDUCTIONS = ("mean", "sum")
MAX_WORLD_SIZE = 65536
DEFAULT_STEP_TIMEOUT_S = 300.0
MAX_STEP_TIMEOUT_S = 86400.0


@dataclass(frozen=True)
class SyncStep:
    """One rank's share of step `step` of a table in a data-parallel job of `world_size`
    ranks: the daemon applies the step once every rank has pushed it, with the `reduction`
    of the ranks' gradients DDP uses (`mean`, or `sum`), and fails it for every rank when
    they have not all pushed within `timeout_s` (0: `DEFAULT_STEP_TIMEOUT_S`)."""

    step: int
    rank: int
    world_size: int
    reduction: str = "mean"
    timeout_s: float = 0.0

    def check(self) -> SyncStep:
        for name in ("step", "rank", "world_size"):
            checked_integer(name, getattr(self, name), 0, UINT64_MAX)
        if not is_real(self.timeout_s):
            raise InvalidArgumentError(f"timeout_s must be a number, got {self.timeout_s!r}")
        if self.step < 1:
            raise InvalidArgumentError(f"a synchronous push needs a step >= 1, got {self.step}")
        if not 1 <= self.world_size <= MAX_WORLD_SIZE:
            raise InvalidArgumentError(
                f"world_size must be in 1..{MAX_WORLD_SIZE}, got {self.world_size}"
            )
        if not 0 <= self.rank < self.world_size:
            raise InvalidArgumentError(
                f"rank must be in 0..{self.world_size - 1} (world size {self.world_size}), "
                f"got {self.rank}"
            )
        if self.reduction not in REDUCTIONS:
            raise InvalidArgumentError(
                f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}"
            )
        if not 0 <= self.timeout_s <= MAX_STEP_TIMEOUT_S:
            raise InvalidArgumentError(
                f"timeout_s must be in 0..{MAX_STEP_TIMEOUT_S:g} seconds, got {self.timeout_s}"
            )
        return self

    @property
    def timeout(self) -> float:
        return step_timeout(self.timeout_s)


def step_timeout(timeout_s: float) -> float:
    """Seconds a step waits for its ranks, from a request's `timeout_s` (0: the default)."""
    return timeout_s or DEFAULT_STEP_TIMEOUT_S


def checked_integer(name: str, value: object, low: int, high: int) -> int:
    """`value` as an int, when it is an integer in `low..high`; otherwise
    `InvalidArgumentError` naming `name`."""
    if not is_integer(value) or not low <= value <= high:  # type: ignore[operator]
        raise InvalidArgumentError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return int(value)  # type: ignore[call-overload,no-any-return]


def checked_bool(name: str, value: object) -> bool:
    """`value` as a bool, when it is one (Python's or numpy's); otherwise
    `InvalidArgumentError` naming `name` (a string's truth is not the caller's meaning)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be a boolean, got {value!r}")
    return bool(value)


def is_real(value: object) -> bool:
    """Whether `value` is a real number, Python's or numpy's (booleans are not numbers here)."""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def is_integer(value: object) -> bool:
    """Whether `value` is an integer, Python's or numpy's (booleans are not numbers here)."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def is_seconds(value: object, zero_allowed: bool = False) -> bool:
    """Whether `value` is a finite number of seconds: above zero, or at least zero when
    `zero_allowed` (booleans are not numbers here)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value >= 0 if zero_allowed else value > 0)
    )
