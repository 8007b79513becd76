"""Every kind of bad request gets a status naming the problem, changes nothing, and the
daemon keeps serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from daemon import Daemon, daemon_thread
from store_helpers import keys, push, raw_rows, spec

from client import NgramHashMapping
from store._proto.engram.store.v1 import store_pb2 as pb
from store.wire import numpy_array

ROWS, DIM = 100, 4
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    data = tmp_path_factory.mktemp("bad") / "data"
    with daemon_thread(data, max_message_bytes=1 << 20, max_lookup_rows=10_000) as d:
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM)))
        yield d


def grads(n: int, value: float = 1.0) -> np.ndarray:
    return np.full((n, DIM), value, np.float32)


def lookup(**fields: Any) -> Callable[[Any], Any]:
    return lambda s: list(s.Lookup(pb.LookupRequest(**fields)))


BAD_REQUESTS: list[tuple[str, Callable[[Any], Any], grpc.StatusCode, str]] = [
    (
        "unknown table",
        lookup(table="nope", keys=keys([1])),
        Code.NOT_FOUND,
        "table 'nope' does not exist",
    ),
    ("unknown table push", lambda s: s.Push(push("nope", [1], grads(1))), Code.NOT_FOUND, "'nope'"),
    (
        "key out of range",
        lookup(table="t", keys=keys([1, ROWS])),
        Code.OUT_OF_RANGE,
        "keys[1] = 100",
    ),
    (
        "push key out of range",
        lambda s: s.Push(push("t", [0, 5, 1000], grads(3))),
        Code.OUT_OF_RANGE,
        "keys[2] = 1000",
    ),
    (
        "negative int64 key",
        lookup(table="t", keys=numpy_array(np.array([3, -2]))),
        Code.INVALID_ARGUMENT,
        "keys[1] = -2 is negative",
    ),
    (
        "wrong key dtype",
        lookup(table="t", keys=pb.Array(dtype="float32", shape=[1], data=b"\0" * 4)),
        Code.INVALID_ARGUMENT,
        "keys must have dtype uint64 or int64",
    ),
    (
        "wrong grads dtype",
        lambda s: s.Push(
            pb.PushRequest(
                table="t",
                keys=keys([1]),
                grads=pb.Array(dtype="int64", shape=[1, DIM], data=b"\0" * 32),
            )
        ),
        Code.INVALID_ARGUMENT,
        "grads must have dtype",
    ),
    (
        "shape/bytes mismatch",
        lookup(table="t", keys=pb.Array(dtype="uint64", shape=[3], data=b"\0" * 16)),
        Code.INVALID_ARGUMENT,
        "needs 24 bytes, got 16",
    ),
    (
        "grads shape mismatch",
        lambda s: s.Push(push("t", [1, 2], grads(3))),
        Code.INVALID_ARGUMENT,
        "grads must have shape [2, 4]",
    ),
    (
        "NaN gradient",
        lambda s: s.Push(
            push("t", [1, 2], np.array([[0, 0, 0, 0], [0, np.nan, 0, 0]], np.float32))
        ),
        Code.INVALID_ARGUMENT,
        "gradient of keys[1] is NaN",
    ),
    (
        "Inf gradient",
        lambda s: s.Push(push("t", [1], grads(1, np.inf))),
        Code.INVALID_ARGUMENT,
        "is inf",
    ),
    (
        "empty push",
        lambda s: s.Push(push("t", np.zeros(0, np.uint64), grads(0))),
        Code.INVALID_ARGUMENT,
        "push has no keys",
    ),
    (
        "bad row dtype",
        lookup(table="t", keys=keys([1]), dtype="float64"),
        Code.INVALID_ARGUMENT,
        "dtype must be one of",
    ),
    (
        "oversized message",
        lambda s: s.Push(push("t", np.zeros(70_000, np.uint64), grads(70_000))),
        Code.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
    (
        "oversized lookup",
        lookup(table="t", keys=keys(np.zeros(20_000, np.uint64))),
        Code.RESOURCE_EXHAUSTED,
        "exceeds the server's limit of 10000",
    ),
    (
        "token lookup without hash config",
        lambda s: list(
            s.LookupTokens(
                pb.LookupTokensRequest(table="t", token_ids=numpy_array(np.zeros((1, 2), np.int64)))
            )
        ),
        Code.INVALID_ARGUMENT,
        "has no hash config",
    ),
    (
        "bad table name",
        lambda s: s.CreateTable(pb.CreateTableRequest(spec=spec("../escape"))),
        Code.INVALID_ARGUMENT,
        "table name must be",
    ),
    (
        "existing table",
        lambda s: s.CreateTable(pb.CreateTableRequest(spec=spec("t"))),
        Code.ALREADY_EXISTS,
        "already exists",
    ),
    (
        "bad optimizer",
        lambda s: s.CreateTable(pb.CreateTableRequest(spec=spec("u", lr=-1.0))),
        Code.INVALID_ARGUMENT,
        "lr must be positive",
    ),
    (
        # Before, created; a lookup then gathered the row whole, however large (dim 2^32 - 1:
        # 16 GiB), before gRPC refused to send it.
        "a row larger than one message",
        lambda s: s.CreateTable(pb.CreateTableRequest(spec=spec("u", num_rows=2, dim=2**18))),
        Code.RESOURCE_EXHAUSTED,
        "a row of dim 262144 takes 1048576 bytes as float32, more than one message carries",
    ),
    (
        "zero-size table",
        lambda s: s.CreateTable(pb.CreateTableRequest(spec=spec("u", num_rows=0))),
        Code.INVALID_ARGUMENT,
        "num_rows and dim must be positive",
    ),
    (
        "batch: a later push's key out of range",
        lambda s: s.Batch(
            pb.BatchRequest(pushes=[push("t", [0], grads(1)), push("t", [2, ROWS], grads(2))])
        ),
        Code.OUT_OF_RANGE,
        "keys[1] = 100",
    ),
    (
        "batch: a lookup's key out of range after a push",
        lambda s: s.Batch(
            pb.BatchRequest(
                pushes=[push("t", [0], grads(1))],
                lookups=[pb.LookupRequest(table="t", keys=keys([ROWS + 1]))],
            )
        ),
        Code.OUT_OF_RANGE,
        "keys[0] = 101",
    ),
    (
        "batch: a lookup of an unknown table after a push",
        lambda s: s.Batch(
            pb.BatchRequest(
                pushes=[push("t", [0], grads(1))],
                lookups=[pb.LookupRequest(table="nope", keys=keys([1]))],
            )
        ),
        Code.NOT_FOUND,
        "'nope'",
    ),
    (
        "batch: a later push's gradients of the wrong shape",
        lambda s: s.Batch(
            pb.BatchRequest(pushes=[push("t", [0], grads(1)), push("t", [1, 2], grads(1))])
        ),
        Code.INVALID_ARGUMENT,
        "grads must have shape [2, 4]",
    ),
    (
        "client id too long for the catalog",
        lambda s: s.Push(push("t", [1], grads(1), client_id="c" * 600, sequence=1)),
        Code.INVALID_ARGUMENT,
        "client_id must be at most 128 bytes",
    ),
    (
        "client id with control characters",
        lambda s: s.Push(push("t", [1], grads(1), client_id="a\nb", sequence=1)),
        Code.INVALID_ARGUMENT,
        "client_id must be",
    ),
    (
        "batch: a push's client id too long",
        lambda s: s.Batch(pb.BatchRequest(pushes=[push("t", [1], grads(1), client_id="c" * 600)])),
        Code.INVALID_ARGUMENT,
        "client_id must be at most 128 bytes",
    ),
    (
        "negative hash config fields",
        lambda s: s.CreateTable(
            pb.CreateTableRequest(
                spec=spec(
                    "u",
                    hash_config=pb.HashConfig(max_ngram_size=-3, n_head_per_ngram=-1),
                )
            )
        ),
        Code.INVALID_ARGUMENT,
        "hash_config.max_ngram_size must be 2..16, got -3",
    ),
    (
        "negative heads per n-gram",
        lambda s: s.CreateTable(
            pb.CreateTableRequest(
                spec=spec("u", hash_config=pb.HashConfig(max_ngram_size=3, n_head_per_ngram=-1))
            )
        ),
        Code.INVALID_ARGUMENT,
        "hash_config.n_head_per_ngram must be 1..256, got -1",
    ),
    (
        "a table of 2^63 bytes, past the kernel's signed file offsets",
        lambda s: s.CreateTable(pb.CreateTableRequest(spec=spec("u", num_rows=1 << 53, dim=256))),
        Code.INVALID_ARGUMENT,
        "does not fit",
    ),
    (
        "a table too large to map",
        lambda s: s.CreateTable(
            pb.CreateTableRequest(spec=spec("u", num_rows=1 << 46, dim=1 << 16))
        ),
        Code.INVALID_ARGUMENT,
        "does not fit",
    ),
    (
        "a table larger than the machine can map",
        lambda s: s.CreateTable(pb.CreateTableRequest(spec=spec("u", num_rows=1 << 40, dim=64))),
        Code.RESOURCE_EXHAUSTED,
        "",
    ),
    (
        "unknown checkpoint",
        lambda s: s.Restore(pb.RestoreRequest(id=99)),
        Code.FAILED_PRECONDITION,
        "no checkpoint",
    ),
]


def test_undecodable_requests_get_invalid_argument_and_one_log_line(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    for method in ("Push", "Lookup", "CreateTable"):
        call = (daemon.channel.unary_stream if method == "Lookup" else daemon.channel.unary_unary)(
            f"/engram.store.v1.EngramStore/{method}"
        )
        with pytest.raises(grpc.RpcError) as error:
            reply = call(b"\xff\xff\xff")
            if method == "Lookup":
                list(reply)
        assert error.value.code() == Code.INVALID_ARGUMENT
        assert "request is not a valid" in (error.value.details() or "")
    undecodable = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(undecodable) == 3
    assert all(r.exc_info is None for r in caplog.records), "no traceback for a bad request"


def test_a_huge_rows_per_chunk_is_capped_at_one_message(daemon: Daemon) -> None:
    answer = list(
        daemon.stub.Lookup(
            pb.LookupRequest(table="t", keys=keys([1] * 5000), rows_per_chunk=2**32 - 1)
        )
    )
    # The daemon's messages hold at most 1 MiB here; 5000 rows of 16 bytes fit in one.
    assert len(answer) == 1 and answer[0].total_rows == 5000


def test_rows_larger_than_a_message_are_refused_before_they_are_gathered(tmp_path: Path) -> None:
    wide = 2**15  # 128 KiB float32 rows: made under the default limit, not under 128 KiB
    with daemon_thread(tmp_path / "data") as d:
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("wide", num_rows=4, dim=wide)))
    with daemon_thread(tmp_path / "data", max_message_bytes=1 << 17) as d:
        with pytest.raises(grpc.RpcError) as refused:
            list(d.stub.Lookup(pb.LookupRequest(table="wide", keys=keys([1]))))
        assert refused.value.code() == Code.RESOURCE_EXHAUSTED
        assert "more than one message carries: read it through a shared buffer" in str(
            refused.value.details()
        )
        packed = pb.LookupRequest(table="wide", keys=keys([1]), dtype="fp8_e4m3")
        assert len(raw_rows(d.stub.Lookup(packed))) == wide + wide // 32  # still serving


def test_token_lookups_are_bounded_before_hashing(tmp_path: Path, tokenizer_path: Path) -> None:
    mapping = NgramHashMapping([997, 1009], 3, 32, 2, [1], tokenizer_path, 0, 0)
    with daemon_thread(tmp_path / "d", max_lookup_rows=1000) as d:
        table_spec = spec(
            "h", num_rows=mapping.layer_table_rows(1), dim=4, hash_config=mapping.hash_config(1)
        )
        d.stub.CreateTable(pb.CreateTableRequest(spec=table_spec))
        fingerprint = d.stub.DescribeTable(pb.DescribeTableRequest(name="h")).hash_fingerprint
        # 1 x 300 tokens x 4 heads = 1200 rows > 1000: refused before anything is hashed.
        with pytest.raises(grpc.RpcError) as error:
            list(
                d.stub.LookupTokens(
                    pb.LookupTokensRequest(
                        table="h",
                        token_ids=numpy_array(np.zeros((1, 300), np.int64)),
                        hash_fingerprint=fingerprint,
                    )
                )
            )
        assert error.value.code() == Code.RESOURCE_EXHAUSTED
        assert "would look up 1200 rows" in (error.value.details() or "")


def snapshot(daemon: Daemon) -> tuple[bytes, int]:
    rows = raw_rows(daemon.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(ROWS)))))
    return rows, daemon.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step


@pytest.mark.parametrize(
    ("send", "code", "message"), [r[1:] for r in BAD_REQUESTS], ids=[r[0] for r in BAD_REQUESTS]
)
def test_bad_request(
    daemon: Daemon, send: Callable[[Any], Any], code: grpc.StatusCode, message: str
) -> None:
    before = snapshot(daemon)
    with pytest.raises(grpc.RpcError) as error:
        send(daemon.stub)
    assert error.value.code() == code, error.value.details()
    assert message in (error.value.details() or ""), error.value.details()
    assert snapshot(daemon) == before, "a rejected request changed the table"
    tables = [t.spec.name for t in daemon.stub.ListTables(pb.ListTablesRequest()).tables]
    assert tables == ["t"], "the daemon keeps serving with its tables intact"


def test_a_refused_client_id_leaves_checkpoints_flushes_and_restores_working(
    tmp_path: Path,
) -> None:
    with daemon_thread(tmp_path / "data") as d:
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=ROWS, dim=DIM)))
        with pytest.raises(grpc.RpcError):
            d.stub.Push(push("t", [1], grads(1), client_id="x" * 600, sequence=1))
        d.stub.Push(push("t", [1], grads(1), client_id="x" * 128, sequence=1))
        first = d.stub.Checkpoint(pb.CheckpointRequest())
        d.stub.Push(push("t", [2], grads(1), client_id="x" * 128, sequence=2))
        d.stub.Checkpoint(pb.CheckpointRequest())
        d.stub.Restore(pb.RestoreRequest(id=first.id))
        assert d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step == 1
        again = d.stub.Push(push("t", [2], grads(1), client_id="x" * 128, sequence=2))
        assert not again.duplicate
    # The daemon stopped cleanly (a flush at shutdown) and starts again.
    with daemon_thread(tmp_path / "data") as d:
        assert d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step == 2
