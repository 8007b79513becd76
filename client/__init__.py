"""Engram Store client: Engram hashing and the store client."""

from client.client import EngramClient
from client.connection import RetryPolicy
from client.errors import (
    EngramClientError,
    InvalidRequestError,
    KeyOutOfRangeError,
    PreconditionFailedError,
    RequestTooLargeError,
    ShardUnavailableError,
    TableExistsError,
    TableNotFoundError,
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
from store.errors import StoreError

__all__ = [
    "BatchResult",
    "CheckpointInfo",
    "CompressedTokenizer",
    "DaemonStats",
    "EngramClient",
    "EngramClientError",
    "InvalidRequestError",
    "KeyOutOfRangeError",
    "NgramHashMapping",
    "PreconditionFailedError",
    "PushResult",
    "RequestTooLargeError",
    "RetryPolicy",
    "ShardUnavailableError",
    "StoreError",
    "TableExistsError",
    "TableInfo",
    "TableNotFoundError",
    "VerifyReport",
]
