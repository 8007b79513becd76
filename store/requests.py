"""What the engine is asked and what it answers, as plain typed objects: the server builds
them from protobuf (`store.conversions`), the engine never sees a message.

Arrays travel as `Packed`: little-endian values of a dtype and shape whose bytes are in
`data`, or in a same-machine client's shared buffer (`buffer`), untouched until the Rust
engine reads or writes them there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from store import _native
from store.pauses import Pause
from store.spec import SyncStep, TableSpec


@dataclass(frozen=True)
class SharedRange:
    """Bytes from `offset` of a shared buffer file, which its creator proves it may name
    with the `token` in the file's header."""

    path: str
    offset: int
    token: bytes


@dataclass(frozen=True)
class Packed:
    """An array: `dtype` values of `shape`, packed in `data` unless they are in `buffer`."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes = b""
    buffer: SharedRange | None = None


@dataclass(frozen=True)
class Lookup:
    """Rows of `keys` (any shape) as `dtype`, streamed in chunks of `rows_per_chunk` rows
    (0: about 1 MiB), or written whole into `out`."""

    table: str
    keys: Packed
    dtype: str = "float32"
    rows_per_chunk: int = 0
    out: SharedRange | None = None
    # When set, the table must still be this incarnation of its name.
    incarnation: str = ""


@dataclass(frozen=True)
class TokenLookup:
    """Rows of raw token ids `[batch, seq]`, hashed by the table's hash config, which must
    have `hash_fingerprint`; with `last_position_only`, of each sequence's last token only."""

    table: str
    token_ids: Packed
    hash_fingerprint: int
    dtype: str = "float32"
    rows_per_chunk: int = 0
    out: SharedRange | None = None
    last_position_only: bool = False
    # bool [batch, seq]: which tokens take part in the n-grams (None: every one).
    token_mask: Packed | None = None


@dataclass(frozen=True)
class Push:
    """Gradients `[len(keys), dim]` for the table's optimizer, applied once per
    (`client_id`, `sequence`) when a client id is given; with `return_rows`, the rows the
    push leaves come back (over the gradients when they came in a buffer)."""

    table: str
    keys: Packed
    grads: Packed
    step: int = 0
    client_id: str = ""
    sequence: int = 0
    return_rows: bool = False
    # One rank's share of a data-parallel step (store/step_sync.py), or None.
    sync: SyncStep | None = None
    # When set, the table must still be this incarnation of its name.
    incarnation: str = ""


@dataclass(frozen=True)
class PendingRows:
    """Rows checked but not gathered yet: `keys[start:end]` of `table`, to be written once,
    straight into wherever they go (a message's bytes)."""

    table: _native.TrainableTable
    keys: _native.Keys
    start: int
    end: int


@dataclass(frozen=True)
class RowsWrite:
    """Rows `[first_row, first_row + n)` of a table being imported, packed as it stores
    them, in `rows.data` or in the shared buffer `rows.buffer`."""

    table: str
    first_row: int
    rows: Packed


@dataclass(frozen=True)
class RowChunk:
    """Rows `[offset, offset + shape[0])` of a lookup's `total_rows`; the first chunk also
    carries the whole answer's shape. Rows written into a shared buffer come as one chunk
    with no data; rows still `pending` have no data yet either."""

    offset: int
    total_rows: int
    rows: Packed
    result_shape: tuple[int, ...] = ()
    in_shared_buffer: bool = False
    pending: PendingRows | None = None


@dataclass(frozen=True)
class PushOutcome:
    """Distinct rows changed, the table's step after the push, whether it was a repeat of
    one applied before, and (with `return_rows`, gradients in the message) the rows."""

    rows: int
    step: int
    duplicate: bool = False
    updated_rows: Packed | None = None


@dataclass(frozen=True)
class BatchOutcome:
    pushes: list[PushOutcome]
    lookups: list[RowChunk]
    # Bytes of the answer budget (store/answer_budget.py) its rows in the message hold,
    # for the server to give back once the reply is sent.
    held_bytes: int = 0


@dataclass(frozen=True)
class TableStatus:
    """A served table: its spec, step, written rows, hashing fingerprint (0: no hash config)
    and optimizer state width (float32 values per row)."""

    spec: TableSpec
    step: int
    written_rows: int
    hash_fingerprint: int
    state_dim: int
    incarnation: str = ""


@dataclass(frozen=True)
class DamagedBlock:
    table: str
    file: str
    first_row: int


@dataclass(frozen=True)
class VerifyResult:
    tables: int
    written_rows: int = 0
    damaged: list[DamagedBlock] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TableCountersSnapshot:
    name: str
    lookups: int
    rows_looked_up: int
    pushes: int
    rows_pushed: int
    duplicate_pushes: int


@dataclass(frozen=True)
class FollowStatus:
    """A follower's place: the leader it follows, the leader's checkpoint its tables equal,
    and why catching up last failed ("" when it did not)."""

    leader: str = ""
    checkpoint: int = 0
    error: str = ""


@dataclass(frozen=True)
class StatsResult:
    uptime_s: float
    checkpoints: int
    tables: list[TableCountersSnapshot]
    store_id: str = ""
    follow: FollowStatus = field(default_factory=FollowStatus)
    # How long flushes and checkpoints held pushes off (store/pauses.py), by kind.
    pauses: dict[str, Pause] = field(default_factory=dict)


@dataclass(frozen=True)
class ChangedPack:
    """One checkpoint's pack of one table, with what its manifest says of it; `path` where
    it lies (on the leader: in its checkpoint; on a follower: where it was received)."""

    checkpoint: int
    rows: int
    step: int
    bytes: int
    crc32: int
    path: str = ""


@dataclass(frozen=True)
class ChangedTable:
    """How a table of the latest checkpoint differs from the caller's: built afresh from
    `packs` (`reset`), or `packs` applied onto the caller's copy."""

    name: str
    reset: bool
    packs: list[ChangedPack]


@dataclass(frozen=True)
class Changes:
    """What turns a store's checkpoint `since` into its latest, `checkpoint`; `manifest`
    is that checkpoint's (None when nothing changed)."""

    store_id: str
    checkpoint: int
    manifest: dict[str, Any] | None
    tables: list[ChangedTable]
