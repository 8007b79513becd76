"""What the client's calls return: plain dataclasses (JSON-ready with `dataclasses.asdict`,
numbers as numbers), built from the daemons' answers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from client.hash_identity import HashIdentity
from store._proto.engram.store.v1 import store_pb2 as pb


@dataclass(frozen=True)
class TableInfo:
    name: str
    num_rows: int
    dim: int
    dtype: str
    optimizer: str
    lr: float
    step: int
    written_rows: int
    # Server-side token hashing: the fingerprint `LookupTokens` must quote (0: none).
    hash_fingerprint: int
    row_checksums: bool
    shards: int
    read_only: bool = False
    weight_decay: float = 0.0
    # What decides which rows token ids read (client/hash_identity.py); None without a hash
    # config.
    hash_identity: HashIdentity | None = None

    @staticmethod
    def of_shards(infos: list[pb.TableInfo]) -> TableInfo:
        spec = infos[0].spec
        identity = (
            HashIdentity.of_hash_config(spec.hash_config) if spec.HasField("hash_config") else None
        )
        return TableInfo(
            name=spec.name,
            num_rows=sum(i.spec.num_rows for i in infos),
            dim=spec.dim,
            dtype=spec.dtype or "float32",
            optimizer=spec.optimizer.WhichOneof("kind") or "sgd",
            lr=spec.optimizer.lr,
            step=max(i.step for i in infos),
            written_rows=sum(i.written_rows for i in infos),
            hash_fingerprint=infos[0].hash_fingerprint,
            row_checksums=not spec.skip_row_checksums,
            shards=len(infos),
            read_only=spec.read_only,
            weight_decay=spec.optimizer.weight_decay,
            hash_identity=identity,
        )


@dataclass(frozen=True)
class PushResult:
    rows: int
    step: int
    duplicate: bool
    # With `return_rows`: float32 `[len(keys), dim]`, each key's row as the push left it.
    updated_rows: npt.NDArray[np.float32] | None = None

    @staticmethod
    def of_shards(
        replies: list[pb.PushResponse], updated_rows: npt.NDArray[np.float32] | None
    ) -> PushResult:
        """One push's result from the answers of the shards it went to."""
        return PushResult(
            rows=sum(r.rows for r in replies),
            step=max(r.step for r in replies),
            duplicate=all(r.duplicate for r in replies),
            updated_rows=updated_rows,
        )


@dataclass(frozen=True)
class BatchResult:
    pushes: list[PushResult]
    # Per lookup: float32 rows of shape `keys.shape + (dim,)`.
    lookups: list[npt.NDArray[np.float32]]


@dataclass(frozen=True)
class CheckpointTable:
    name: str
    rows: int
    step: int
    bytes: int


@dataclass(frozen=True)
class CheckpointInfo:
    """One daemon's checkpoint."""

    id: int
    # The checkpoint this one holds the changes since (0: a full checkpoint).
    parent: int
    created_unix: float
    tables: list[CheckpointTable]

    @staticmethod
    def of(info: pb.CheckpointInfo) -> CheckpointInfo:
        return CheckpointInfo(
            id=info.id,
            parent=info.parent,
            created_unix=info.created_unix,
            tables=[CheckpointTable(t.name, t.rows, t.step, t.bytes) for t in info.tables],
        )


@dataclass(frozen=True)
class TableStats:
    name: str
    lookups: int
    rows_looked_up: int
    pushes: int
    rows_pushed: int
    duplicate_pushes: int


@dataclass(frozen=True)
class DurableStepStats:
    """How long a daemon's flushes (or checkpoints) held pushes off, and took, in seconds:
    the longest of any one since it started, and the last."""

    count: int = 0
    longest_hold_s: float = 0.0
    longest_total_s: float = 0.0
    last_hold_s: float = 0.0
    last_total_s: float = 0.0

    @staticmethod
    def of(reply: pb.DurableStepStats) -> DurableStepStats:
        return DurableStepStats(
            reply.count,
            reply.longest_hold_s,
            reply.longest_total_s,
            reply.last_hold_s,
            reply.last_total_s,
        )


@dataclass(frozen=True)
class DaemonStats:
    """One daemon's counters since it started."""

    address: str
    uptime_s: float
    checkpoints: int
    tables: list[TableStats]
    store_id: str = ""
    # A follower's leader, the leader's checkpoint it holds, and why catching up last
    # failed ("" when it did not, and for a daemon that follows none).
    follows: str = ""
    followed_checkpoint: int = 0
    follow_error: str = ""
    flushes: DurableStepStats = field(default_factory=DurableStepStats)
    checkpoints_taken: DurableStepStats = field(default_factory=DurableStepStats)

    @staticmethod
    def of(address: str, reply: pb.StatsResponse) -> DaemonStats:
        return DaemonStats(
            address=address,
            uptime_s=reply.uptime_s,
            checkpoints=reply.checkpoints,
            store_id=reply.store_id,
            follows=reply.follows,
            followed_checkpoint=reply.followed_checkpoint,
            follow_error=reply.follow_error,
            flushes=DurableStepStats.of(reply.flushes),
            checkpoints_taken=DurableStepStats.of(reply.checkpoints_taken),
            tables=[
                TableStats(
                    t.name,
                    t.lookups,
                    t.rows_looked_up,
                    t.pushes,
                    t.rows_pushed,
                    t.duplicate_pushes,
                )
                for t in reply.tables
            ],
        )


@dataclass(frozen=True)
class DamagedBlock:
    address: str
    table: str
    # "params.engram" (the rows) or "state.engram" (the optimizer's).
    file: str
    # The block's first row in the whole table (64 rows a block).
    first_row: int


@dataclass(frozen=True)
class VerifyReport:
    """A scrub of live tables on every daemon."""

    tables: int
    written_rows: int
    damaged: list[DamagedBlock] = field(default_factory=list)
    # Tables kept without row checksums, so not checked.
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged


@dataclass(frozen=True)
class ChangedPackInfo:
    table: str
    checkpoint: int
    rows: int
    bytes: int
    # Where it was saved ("" when it was not).
    path: str = ""


@dataclass(frozen=True)
class ChangedRows:
    """What turns a daemon's checkpoint `since` into its latest, `checkpoint`: per table,
    whether it is rebuilt from its packs (`reset`) and the packs (rows and bytes) that do it."""

    store_id: str
    since: int
    checkpoint: int
    reset: list[str]
    packs: list[ChangedPackInfo]
