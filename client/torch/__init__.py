"""PyTorch integration: the Engram layer and its embedding backends. The only part of the
client that imports torch."""

from client.torch.device_cache import device_row_cache
from client.torch.engram import Engram, ShortConv
from client.torch.prefetch import Prefetcher
from client.torch.push_group import PushGroup
from client.torch.push_log import PushLog
from client.torch.tables import LocalTable, StoreTable

__all__ = [
    "Engram",
    "LocalTable",
    "Prefetcher",
    "PushGroup",
    "PushLog",
    "ShortConv",
    "StoreTable",
    "device_row_cache",
]
