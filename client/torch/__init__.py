"""PyTorch integration: the Engram layer and its embedding backends. The only part of the
client that imports torch."""

from client.torch.data_parallel import StepSync
from client.torch.device_cache import device_row_cache
from client.torch.embeddings import LocalEmbedding, StoreEmbedding
from client.torch.engine_reads import EngramRowRead, EngramRowReader
from client.torch.engram import Engram, ShortConv
from client.torch.engram_v41 import EngramV41
from client.torch.inference import RowWriter
from client.torch.pipeline import TrainPipeline
from client.torch.prefetch import Prefetcher
from client.torch.push_log import PushLog

__all__ = [
    "Engram",
    "EngramRowRead",
    "EngramRowReader",
    "EngramV41",
    "LocalEmbedding",
    "Prefetcher",
    "PushLog",
    "RowWriter",
    "ShortConv",
    "StepSync",
    "StoreEmbedding",
    "TrainPipeline",
    "device_row_cache",
]
