"""Engram Store client: Engram hashing and the store client."""

from client.client import EngramClient
from client.connection import RetryPolicy
from client.daemon_layer_reader import DaemonLayerReader
from client.engram_reader import EngramLayerReader
from client.errors import (
    DataParallelStepError,
    EngramClientError,
    InvalidRequestError,
    KeyOutOfRangeError,
    NotPermittedError,
    PreconditionFailedError,
    RequestTooLargeError,
    ShardUnavailableError,
    TableExistsError,
    TableNotFoundError,
    TokenRefusedError,
)
from client.hashing import CompressedTokenizer, NgramHashMapping
from client.results import (
    BatchResult,
    CheckpointInfo,
    DaemonStats,
    PushResult,
    TableInfo,
    VerifyReport,
)
from client.security import Security
from store.errors import StoreError
from store.spec import SyncStep

__all__ = [
    "BatchResult",
    "CheckpointInfo",
    "CompressedTokenizer",
    "DaemonLayerReader",
    "DaemonStats",
    "DataParallelStepError",
    "EngramClient",
    "EngramClientError",
    "EngramLayerReader",
    "InvalidRequestError",
    "KeyOutOfRangeError",
    "NgramHashMapping",
    "NotPermittedError",
    "PreconditionFailedError",
    "PushResult",
    "RequestTooLargeError",
    "RetryPolicy",
    "Security",
    "ShardUnavailableError",
    "StoreError",
    "SyncStep",
    "TableExistsError",
    "TableInfo",
    "TableNotFoundError",
    "TokenRefusedError",
    "VerifyReport",
]
