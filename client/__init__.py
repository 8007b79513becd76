"""Engram Store client: Engram hashing and the store client."""

from client.client import BatchResult, EngramClient, PushResult, TableInfo
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

__all__ = [
    "BatchResult",
    "CompressedTokenizer",
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
]
