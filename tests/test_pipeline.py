"""TrainPipeline's reads: one reader at a time, taken in the order queued."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from client import EngramClient
from client.torch.pipeline import TrainPipeline


@pytest.fixture
def pipeline() -> Iterator[TrainPipeline]:
    # No call reaches the address: these checks happen before anything is sent.
    client = EngramClient("127.0.0.1:1")
    pipeline = TrainPipeline(client)
    yield pipeline
    pipeline.close()
    client.close()


def test_reads_need_a_reader_and_only_one(pipeline: TrainPipeline) -> None:
    log = pipeline.push_log("t", 2, None)
    with pytest.raises(ValueError, match="before start_reads"):
        pipeline.queue_read([(log, np.zeros(3, np.uint64))])
    pipeline.start_reads()
    with pytest.raises(ValueError, match="another reader"):
        pipeline.start_reads()
    pipeline.stop_reads()
    pipeline.start_reads()


def test_reads_are_taken_in_the_order_queued(pipeline: TrainPipeline) -> None:
    log = pipeline.push_log("t", 2, None)
    pipeline.start_reads()
    pipeline.queue_read([(log, np.zeros(3, np.uint64))])
    second = pipeline.queue_read([(log, np.ones(3, np.uint64))])
    with pytest.raises(ValueError, match="order they were queued"):
        pipeline.take_read(second)
