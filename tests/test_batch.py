"""The Batch RPC: several pushes, then several lookups, in one call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon import Daemon, daemon_thread
from store_helpers import keys, push, raw_rows, rows_of, spec

from store._proto.engram.store.v1 import store_pb2 as pb

ROWS, DIM = 500, 4


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with daemon_thread(tmp_path / "data", max_message_bytes=1 << 17) as d:
        for name in ("a", "b", "twin-a", "twin-b"):
            optimizer = "adam" if name.endswith("a") else "sgd"
            d.stub.CreateTable(
                pb.CreateTableRequest(spec=spec(name, num_rows=ROWS, dim=DIM, optimizer=optimizer))
            )
        yield d


def step_requests(
    prefix: str, rng: np.random.Generator
) -> tuple[list[pb.PushRequest], list[pb.LookupRequest]]:
    pushes = [
        push(f"{prefix}{name}", k, rng.standard_normal((len(k), DIM)).astype(np.float32))
        for name in ("a", "b")
        for k in [rng.choice(ROWS, 40, replace=False)]
    ]
    lookups = [
        pb.LookupRequest(table=f"{prefix}{name}", keys=keys(rng.integers(0, ROWS, (3, 7))))
        for name in ("a", "b")
    ]
    return pushes, lookups


def test_a_batch_equals_its_pushes_then_its_lookups(daemon: Daemon) -> None:
    s = daemon.stub
    for step in range(3):
        batched = step_requests("", np.random.default_rng(step))
        separate = step_requests("twin-", np.random.default_rng(step))
        reply = s.Batch(pb.BatchRequest(pushes=batched[0], lookups=batched[1]))
        for push_request in separate[0]:
            s.Push(push_request)
        for answer, lookup_request in zip(reply.lookups, separate[1], strict=True):
            expected = rows_of(s.Lookup(lookup_request))
            assert list(answer.result_shape) == [3, 7, DIM]
            got = np.frombuffer(answer.rows.data, "<f4").reshape(expected.shape)
            # The lookups saw the batch's own pushes.
            np.testing.assert_array_equal(got, expected)
        assert [p.step for p in reply.pushes] == [step + 1, step + 1]
        assert [p.rows for p in reply.pushes] == [40, 40]
    everything = pb.LookupRequest(table="a", keys=keys(range(ROWS)))
    twin = pb.LookupRequest(table="twin-a", keys=keys(range(ROWS)))
    assert raw_rows(s.Lookup(everything)) == raw_rows(s.Lookup(twin))


def test_a_retried_batch_applies_its_pushes_once(daemon: Daemon) -> None:
    s = daemon.stub
    grads = np.ones((2, DIM), np.float32)
    request = pb.BatchRequest(
        pushes=[
            push("b", [1, 2], grads, client_id="c", sequence=1),
            push("b", [2, 3], grads, client_id="c", sequence=2, return_rows=True),
        ],
        lookups=[pb.LookupRequest(table="b", keys=keys([1, 2, 3]))],
    )
    first = s.Batch(request)
    retry = s.Batch(request)
    assert [p.duplicate for p in first.pushes] == [False, False]
    assert [p.duplicate for p in retry.pushes] == [True, True]
    assert first.lookups[0].rows.data == retry.lookups[0].rows.data
    rows = np.frombuffer(first.lookups[0].rows.data, "<f4").reshape(3, DIM)
    # The second push returned its rows, as a Push would.
    returned = np.frombuffer(first.pushes[1].updated_rows.data, "<f4").reshape(2, DIM)
    np.testing.assert_array_equal(returned, rows[1:])


def test_rows_too_large_for_the_reply_are_refused_before_any_push(daemon: Daemon) -> None:
    s = daemon.stub
    before = raw_rows(s.Lookup(pb.LookupRequest(table="a", keys=keys(range(ROWS)))))
    many = np.zeros(10_000, np.uint64)  # 10,000 x 4 float32 = 160 KB, over the 128 KiB limit
    with pytest.raises(grpc.RpcError) as error:
        s.Batch(
            pb.BatchRequest(
                pushes=[push("a", [0], np.ones((1, DIM), np.float32))],
                lookups=[pb.LookupRequest(table="a", keys=keys(many))],
            )
        )
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "give it shared buffers" in (error.value.details() or "")
    # Rows returned by pushes count too: two pushes of 5,000 x 4 float32 sent (80 KB each, in
    # the limit) would answer 160 KB.
    grads = np.ones((5000, DIM), np.float32)
    with pytest.raises(grpc.RpcError) as error:
        s.Batch(
            pb.BatchRequest(pushes=[push("a", np.arange(5000) % ROWS, grads, return_rows=True)] * 2)
        )
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raw_rows(s.Lookup(pb.LookupRequest(table="a", keys=keys(range(ROWS))))) == before
    assert s.DescribeTable(pb.DescribeTableRequest(name="a")).step == 0
