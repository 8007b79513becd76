from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Array(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SharedBuffer(_message.Message):
    __slots__ = ("path", "offset", "token")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    token: bytes
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., token: _Optional[bytes] = ...) -> None: ...

class SgdConfig(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdagradConfig(_message.Message):
    __slots__ = ("eps", "initial_accumulator_value")
    EPS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_ACCUMULATOR_VALUE_FIELD_NUMBER: _ClassVar[int]
    eps: float
    initial_accumulator_value: float
    def __init__(self, eps: _Optional[float] = ..., initial_accumulator_value: _Optional[float] = ...) -> None: ...

class RowWiseAdagradConfig(_message.Message):
    __slots__ = ("eps",)
    EPS_FIELD_NUMBER: _ClassVar[int]
    eps: float
    def __init__(self, eps: _Optional[float] = ...) -> None: ...

class AdamConfig(_message.Message):
    __slots__ = ("beta1", "beta2", "eps")
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    beta1: float
    beta2: float
    eps: float
    def __init__(self, beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., eps: _Optional[float] = ...) -> None: ...

class OptimizerConfig(_message.Message):
    __slots__ = ("lr", "sgd", "adagrad", "rowwise_adagrad", "adam", "weight_decay")
    LR_FIELD_NUMBER: _ClassVar[int]
    SGD_FIELD_NUMBER: _ClassVar[int]
    ADAGRAD_FIELD_NUMBER: _ClassVar[int]
    ROWWISE_ADAGRAD_FIELD_NUMBER: _ClassVar[int]
    ADAM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    lr: float
    sgd: SgdConfig
    adagrad: AdagradConfig
    rowwise_adagrad: RowWiseAdagradConfig
    adam: AdamConfig
    weight_decay: float
    def __init__(self, lr: _Optional[float] = ..., sgd: _Optional[_Union[SgdConfig, _Mapping]] = ..., adagrad: _Optional[_Union[AdagradConfig, _Mapping]] = ..., rowwise_adagrad: _Optional[_Union[RowWiseAdagradConfig, _Mapping]] = ..., adam: _Optional[_Union[AdamConfig, _Mapping]] = ..., weight_decay: _Optional[float] = ...) -> None: ...

class TuneTableRequest(_message.Message):
    __slots__ = ("name", "lr", "weight_decay")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    name: str
    lr: float
    weight_decay: float
    def __init__(self, name: _Optional[str] = ..., lr: _Optional[float] = ..., weight_decay: _Optional[float] = ...) -> None: ...

class HashConfig(_message.Message):
    __slots__ = ("max_ngram_size", "n_head_per_ngram", "pad_id", "layer_id", "multipliers", "table_sizes", "lookup_table", "tokenizer_sha256")
    MAX_NGRAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    N_HEAD_PER_NGRAM_FIELD_NUMBER: _ClassVar[int]
    PAD_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_ID_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIERS_FIELD_NUMBER: _ClassVar[int]
    TABLE_SIZES_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_TABLE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SHA256_FIELD_NUMBER: _ClassVar[int]
    max_ngram_size: int
    n_head_per_ngram: int
    pad_id: int
    layer_id: int
    multipliers: _containers.RepeatedScalarFieldContainer[int]
    table_sizes: _containers.RepeatedScalarFieldContainer[int]
    lookup_table: Array
    tokenizer_sha256: str
    def __init__(self, max_ngram_size: _Optional[int] = ..., n_head_per_ngram: _Optional[int] = ..., pad_id: _Optional[int] = ..., layer_id: _Optional[int] = ..., multipliers: _Optional[_Iterable[int]] = ..., table_sizes: _Optional[_Iterable[int]] = ..., lookup_table: _Optional[_Union[Array, _Mapping]] = ..., tokenizer_sha256: _Optional[str] = ...) -> None: ...

class TableSpec(_message.Message):
    __slots__ = ("name", "num_rows", "dim", "dtype", "init", "init_std", "seed", "optimizer", "hash_config", "allow_non_finite", "first_row", "skip_row_checksums", "read_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    INIT_STD_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    HASH_CONFIG_FIELD_NUMBER: _ClassVar[int]
    ALLOW_NON_FINITE_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROW_FIELD_NUMBER: _ClassVar[int]
    SKIP_ROW_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_rows: int
    dim: int
    dtype: str
    init: str
    init_std: float
    seed: int
    optimizer: OptimizerConfig
    hash_config: HashConfig
    allow_non_finite: bool
    first_row: int
    skip_row_checksums: bool
    read_only: bool
    def __init__(self, name: _Optional[str] = ..., num_rows: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[str] = ..., init: _Optional[str] = ..., init_std: _Optional[float] = ..., seed: _Optional[int] = ..., optimizer: _Optional[_Union[OptimizerConfig, _Mapping]] = ..., hash_config: _Optional[_Union[HashConfig, _Mapping]] = ..., allow_non_finite: _Optional[bool] = ..., first_row: _Optional[int] = ..., skip_row_checksums: _Optional[bool] = ..., read_only: _Optional[bool] = ...) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("spec", "step", "written_rows", "hash_fingerprint", "state_dim", "incarnation")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_ROWS_FIELD_NUMBER: _ClassVar[int]
    HASH_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STATE_DIM_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    spec: TableSpec
    step: int
    written_rows: int
    hash_fingerprint: int
    state_dim: int
    incarnation: str
    def __init__(self, spec: _Optional[_Union[TableSpec, _Mapping]] = ..., step: _Optional[int] = ..., written_rows: _Optional[int] = ..., hash_fingerprint: _Optional[int] = ..., state_dim: _Optional[int] = ..., incarnation: _Optional[str] = ...) -> None: ...

class CreateTableRequest(_message.Message):
    __slots__ = ("spec", "importing", "replace_existing")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    IMPORTING_FIELD_NUMBER: _ClassVar[int]
    REPLACE_EXISTING_FIELD_NUMBER: _ClassVar[int]
    spec: TableSpec
    importing: bool
    replace_existing: bool
    def __init__(self, spec: _Optional[_Union[TableSpec, _Mapping]] = ..., importing: _Optional[bool] = ..., replace_existing: _Optional[bool] = ...) -> None: ...

class WriteRowsRequest(_message.Message):
    __slots__ = ("table", "first_row", "rows", "rows_buffer")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROW_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_BUFFER_FIELD_NUMBER: _ClassVar[int]
    table: str
    first_row: int
    rows: Array
    rows_buffer: SharedBuffer
    def __init__(self, table: _Optional[str] = ..., first_row: _Optional[int] = ..., rows: _Optional[_Union[Array, _Mapping]] = ..., rows_buffer: _Optional[_Union[SharedBuffer, _Mapping]] = ...) -> None: ...

class WriteRowsResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    def __init__(self, rows: _Optional[int] = ...) -> None: ...

class FinishImportRequest(_message.Message):
    __slots__ = ("table",)
    TABLE_FIELD_NUMBER: _ClassVar[int]
    table: str
    def __init__(self, table: _Optional[str] = ...) -> None: ...

class DropTableRequest(_message.Message):
    __slots__ = ("name", "unfinished_import_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_IMPORT_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    unfinished_import_only: bool
    def __init__(self, name: _Optional[str] = ..., unfinished_import_only: _Optional[bool] = ...) -> None: ...

class DropTableResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTablesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTablesResponse(_message.Message):
    __slots__ = ("tables", "unfinished_imports")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_IMPORTS_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    unfinished_imports: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ..., unfinished_imports: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeTableRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("table", "keys", "dtype", "rows_per_chunk", "out", "keys_buffer", "incarnation")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    OUT_FIELD_NUMBER: _ClassVar[int]
    KEYS_BUFFER_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: Array
    dtype: str
    rows_per_chunk: int
    out: SharedBuffer
    keys_buffer: SharedBuffer
    incarnation: str
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[_Union[Array, _Mapping]] = ..., dtype: _Optional[str] = ..., rows_per_chunk: _Optional[int] = ..., out: _Optional[_Union[SharedBuffer, _Mapping]] = ..., keys_buffer: _Optional[_Union[SharedBuffer, _Mapping]] = ..., incarnation: _Optional[str] = ...) -> None: ...

class LookupTokensRequest(_message.Message):
    __slots__ = ("table", "token_ids", "hash_fingerprint", "dtype", "rows_per_chunk", "out", "last_position_only", "token_mask")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    HASH_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    OUT_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_ONLY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_MASK_FIELD_NUMBER: _ClassVar[int]
    table: str
    token_ids: Array
    hash_fingerprint: int
    dtype: str
    rows_per_chunk: int
    out: SharedBuffer
    last_position_only: bool
    token_mask: Array
    def __init__(self, table: _Optional[str] = ..., token_ids: _Optional[_Union[Array, _Mapping]] = ..., hash_fingerprint: _Optional[int] = ..., dtype: _Optional[str] = ..., rows_per_chunk: _Optional[int] = ..., out: _Optional[_Union[SharedBuffer, _Mapping]] = ..., last_position_only: _Optional[bool] = ..., token_mask: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("offset", "total_rows", "rows", "result_shape", "in_shared_buffer")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    RESULT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    IN_SHARED_BUFFER_FIELD_NUMBER: _ClassVar[int]
    offset: int
    total_rows: int
    rows: Array
    result_shape: _containers.RepeatedScalarFieldContainer[int]
    in_shared_buffer: bool
    def __init__(self, offset: _Optional[int] = ..., total_rows: _Optional[int] = ..., rows: _Optional[_Union[Array, _Mapping]] = ..., result_shape: _Optional[_Iterable[int]] = ..., in_shared_buffer: _Optional[bool] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("table", "keys", "grads", "step", "client_id", "sequence", "grads_buffer", "keys_buffer", "return_rows", "sync", "incarnation")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    GRADS_BUFFER_FIELD_NUMBER: _ClassVar[int]
    KEYS_BUFFER_FIELD_NUMBER: _ClassVar[int]
    RETURN_ROWS_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: Array
    grads: Array
    step: int
    client_id: str
    sequence: int
    grads_buffer: SharedBuffer
    keys_buffer: SharedBuffer
    return_rows: bool
    sync: SyncStep
    incarnation: str
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[_Union[Array, _Mapping]] = ..., grads: _Optional[_Union[Array, _Mapping]] = ..., step: _Optional[int] = ..., client_id: _Optional[str] = ..., sequence: _Optional[int] = ..., grads_buffer: _Optional[_Union[SharedBuffer, _Mapping]] = ..., keys_buffer: _Optional[_Union[SharedBuffer, _Mapping]] = ..., return_rows: _Optional[bool] = ..., sync: _Optional[_Union[SyncStep, _Mapping]] = ..., incarnation: _Optional[str] = ...) -> None: ...

class SyncStep(_message.Message):
    __slots__ = ("step", "rank", "world_size", "reduction", "timeout_s")
    class Reduction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MEAN: _ClassVar[SyncStep.Reduction]
        SUM: _ClassVar[SyncStep.Reduction]
    MEAN: SyncStep.Reduction
    SUM: SyncStep.Reduction
    STEP_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    step: int
    rank: int
    world_size: int
    reduction: SyncStep.Reduction
    timeout_s: float
    def __init__(self, step: _Optional[int] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., reduction: _Optional[_Union[SyncStep.Reduction, str]] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("rows", "step", "duplicate", "updated_rows")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    step: int
    duplicate: bool
    updated_rows: Array
    def __init__(self, rows: _Optional[int] = ..., step: _Optional[int] = ..., duplicate: _Optional[bool] = ..., updated_rows: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("pushes", "lookups")
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    pushes: _containers.RepeatedCompositeFieldContainer[PushRequest]
    lookups: _containers.RepeatedCompositeFieldContainer[LookupRequest]
    def __init__(self, pushes: _Optional[_Iterable[_Union[PushRequest, _Mapping]]] = ..., lookups: _Optional[_Iterable[_Union[LookupRequest, _Mapping]]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("pushes", "lookups")
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    pushes: _containers.RepeatedCompositeFieldContainer[PushResponse]
    lookups: _containers.RepeatedCompositeFieldContainer[LookupResponse]
    def __init__(self, pushes: _Optional[_Iterable[_Union[PushResponse, _Mapping]]] = ..., lookups: _Optional[_Iterable[_Union[LookupResponse, _Mapping]]] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("full",)
    FULL_FIELD_NUMBER: _ClassVar[int]
    full: bool
    def __init__(self, full: _Optional[bool] = ...) -> None: ...

class CheckpointTable(_message.Message):
    __slots__ = ("name", "file", "rows", "step", "bytes", "crc32")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    name: str
    file: str
    rows: int
    step: int
    bytes: int
    crc32: int
    def __init__(self, name: _Optional[str] = ..., file: _Optional[str] = ..., rows: _Optional[int] = ..., step: _Optional[int] = ..., bytes: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("id", "parent", "created_unix", "tables")
    ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    id: int
    parent: int
    created_unix: float
    tables: _containers.RepeatedCompositeFieldContainer[CheckpointTable]
    def __init__(self, id: _Optional[int] = ..., parent: _Optional[int] = ..., created_unix: _Optional[float] = ..., tables: _Optional[_Iterable[_Union[CheckpointTable, _Mapping]]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointInfo]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[CheckpointInfo, _Mapping]]] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: CheckpointInfo
    def __init__(self, checkpoint: _Optional[_Union[CheckpointInfo, _Mapping]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("table",)
    TABLE_FIELD_NUMBER: _ClassVar[int]
    table: str
    def __init__(self, table: _Optional[str] = ...) -> None: ...

class DamagedBlock(_message.Message):
    __slots__ = ("table", "file", "first_row")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROW_FIELD_NUMBER: _ClassVar[int]
    table: str
    file: str
    first_row: int
    def __init__(self, table: _Optional[str] = ..., file: _Optional[str] = ..., first_row: _Optional[int] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("tables", "written_rows", "damaged", "unchecked")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_ROWS_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_FIELD_NUMBER: _ClassVar[int]
    UNCHECKED_FIELD_NUMBER: _ClassVar[int]
    tables: int
    written_rows: int
    damaged: _containers.RepeatedCompositeFieldContainer[DamagedBlock]
    unchecked: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tables: _Optional[int] = ..., written_rows: _Optional[int] = ..., damaged: _Optional[_Iterable[_Union[DamagedBlock, _Mapping]]] = ..., unchecked: _Optional[_Iterable[str]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TableStats(_message.Message):
    __slots__ = ("name", "lookups", "rows_looked_up", "pushes", "rows_pushed", "duplicate_pushes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    ROWS_LOOKED_UP_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_PUSHED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_PUSHES_FIELD_NUMBER: _ClassVar[int]
    name: str
    lookups: int
    rows_looked_up: int
    pushes: int
    rows_pushed: int
    duplicate_pushes: int
    def __init__(self, name: _Optional[str] = ..., lookups: _Optional[int] = ..., rows_looked_up: _Optional[int] = ..., pushes: _Optional[int] = ..., rows_pushed: _Optional[int] = ..., duplicate_pushes: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("uptime_s", "tables", "checkpoints", "store_id", "follows", "followed_checkpoint", "follow_error", "flushes", "checkpoints_taken")
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOWS_FIELD_NUMBER: _ClassVar[int]
    FOLLOWED_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_ERROR_FIELD_NUMBER: _ClassVar[int]
    FLUSHES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_TAKEN_FIELD_NUMBER: _ClassVar[int]
    uptime_s: float
    tables: _containers.RepeatedCompositeFieldContainer[TableStats]
    checkpoints: int
    store_id: str
    follows: str
    followed_checkpoint: int
    follow_error: str
    flushes: DurableStepStats
    checkpoints_taken: DurableStepStats
    def __init__(self, uptime_s: _Optional[float] = ..., tables: _Optional[_Iterable[_Union[TableStats, _Mapping]]] = ..., checkpoints: _Optional[int] = ..., store_id: _Optional[str] = ..., follows: _Optional[str] = ..., followed_checkpoint: _Optional[int] = ..., follow_error: _Optional[str] = ..., flushes: _Optional[_Union[DurableStepStats, _Mapping]] = ..., checkpoints_taken: _Optional[_Union[DurableStepStats, _Mapping]] = ...) -> None: ...

class DurableStepStats(_message.Message):
    __slots__ = ("count", "longest_hold_s", "longest_total_s", "last_hold_s", "last_total_s")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LONGEST_HOLD_S_FIELD_NUMBER: _ClassVar[int]
    LONGEST_TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    LAST_HOLD_S_FIELD_NUMBER: _ClassVar[int]
    LAST_TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    count: int
    longest_hold_s: float
    longest_total_s: float
    last_hold_s: float
    last_total_s: float
    def __init__(self, count: _Optional[int] = ..., longest_hold_s: _Optional[float] = ..., longest_total_s: _Optional[float] = ..., last_hold_s: _Optional[float] = ..., last_total_s: _Optional[float] = ...) -> None: ...

class ChangedRowsRequest(_message.Message):
    __slots__ = ("since_checkpoint", "store_id", "wait_ms")
    SINCE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    since_checkpoint: int
    store_id: str
    wait_ms: int
    def __init__(self, since_checkpoint: _Optional[int] = ..., store_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class ChangedPack(_message.Message):
    __slots__ = ("checkpoint", "rows", "step", "bytes", "crc32")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    checkpoint: int
    rows: int
    step: int
    bytes: int
    crc32: int
    def __init__(self, checkpoint: _Optional[int] = ..., rows: _Optional[int] = ..., step: _Optional[int] = ..., bytes: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class ChangedTable(_message.Message):
    __slots__ = ("name", "reset", "packs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    PACKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    reset: bool
    packs: _containers.RepeatedCompositeFieldContainer[ChangedPack]
    def __init__(self, name: _Optional[str] = ..., reset: _Optional[bool] = ..., packs: _Optional[_Iterable[_Union[ChangedPack, _Mapping]]] = ...) -> None: ...

class ChangedRowsHeader(_message.Message):
    __slots__ = ("store_id", "checkpoint", "manifest_json", "tables")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    checkpoint: int
    manifest_json: str
    tables: _containers.RepeatedCompositeFieldContainer[ChangedTable]
    def __init__(self, store_id: _Optional[str] = ..., checkpoint: _Optional[int] = ..., manifest_json: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[ChangedTable, _Mapping]]] = ...) -> None: ...

class PackChunk(_message.Message):
    __slots__ = ("table", "checkpoint", "data")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    table: str
    checkpoint: int
    data: bytes
    def __init__(self, table: _Optional[str] = ..., checkpoint: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ChangedRowsResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ChangedRowsHeader
    chunk: PackChunk
    def __init__(self, header: _Optional[_Union[ChangedRowsHeader, _Mapping]] = ..., chunk: _Optional[_Union[PackChunk, _Mapping]] = ...) -> None: ...
