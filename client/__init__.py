"""Engram Store client: Engram hashing and the store client."""

from client.client import EngramClient
from client.connection import RetryPolicy
from client.errors import (
    EngramClientError,
    InvalidRequestError,
    KeyOutOfRangeError,
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
    "PushResult",
    "RequestTooLargeError",
    "RetryPolicy",
    "ShardUnavailableError",
    "TableExistsError",
    "TableInfo",
    "TableNotFoundError",
    "VerifyReport",
]
