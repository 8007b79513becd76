"""The daemon's RPCs over loopback gRPC: tables, lookups, token lookups, pushes, stats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon import Daemon, daemon_thread
from grpc_health.v1 import health_pb2, health_pb2_grpc
from store_helpers import keys, push, raw_rows, rows_of, spec

from client import EngramClient, NgramHashMapping
from store import Table
from store._proto.engram.store.v1 import store_pb2 as pb
from store.wire import numpy_array


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with daemon_thread(tmp_path / "data") as d:
        yield d


def test_table_lifecycle(daemon: Daemon) -> None:
    s = daemon.stub
    info = s.CreateTable(pb.CreateTableRequest(spec=spec("a", dtype="bfloat16", optimizer="adam")))
    assert info.spec.name == "a" and info.step == 0 and info.state_dim == 16
    s.CreateTable(pb.CreateTableRequest(spec=spec("b")))
    assert [t.spec.name for t in s.ListTables(pb.ListTablesRequest()).tables] == ["a", "b"]
    assert s.DescribeTable(pb.DescribeTableRequest(name="a")).spec.dtype == "bfloat16"
    s.DropTable(pb.DropTableRequest(name="a"))
    assert [t.spec.name for t in s.ListTables(pb.ListTablesRequest()).tables] == ["b"]
    assert not (daemon.data_dir / "tables" / "a").exists()
    health = health_pb2_grpc.HealthStub(daemon.channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="engram.store.v1.EngramStore"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_lookup_matches_the_table_file_in_every_dtype(daemon: Daemon) -> None:
    daemon.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=500, dim=6)))
    query = np.array([[3, 499], [0, 3]], np.uint64)
    got = rows_of(daemon.stub.Lookup(pb.LookupRequest(table="t", keys=keys(query))))
    assert got.shape == (2, 2, 6)
    expected = Table.open(daemon.data_dir / "tables" / "t" / "params.engram").gather(query)
    np.testing.assert_array_equal(got, expected)
    for dtype in ("float16", "bfloat16"):
        data = raw_rows(
            daemon.stub.Lookup(pb.LookupRequest(table="t", keys=keys(query), dtype=dtype))
        )
        reference = Table.open(daemon.data_dir / "tables" / "t" / "params.engram")
        assert data == reference.gather(query, dtype=dtype).view(np.uint16).tobytes()


def test_lookup_streams_in_chunks(daemon: Daemon) -> None:
    daemon.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=100, dim=4)))
    query = np.arange(100, dtype=np.uint64)[::-1]
    chunks = list(
        daemon.stub.Lookup(pb.LookupRequest(table="t", keys=keys(query), rows_per_chunk=30))
    )
    assert [c.offset for c in chunks] == [0, 30, 60, 90]
    whole = rows_of(daemon.stub.Lookup(pb.LookupRequest(table="t", keys=keys(query))))
    np.testing.assert_array_equal(rows_of(chunks), whole)


def test_million_row_lookup(daemon: Daemon) -> None:
    """1M rows x 64 float32 (256 MB) arrive whole, in streamed chunks."""
    daemon.stub.CreateTable(
        pb.CreateTableRequest(spec=spec("big", num_rows=2_000_000, dim=64, init="zeros"))
    )
    query = np.random.default_rng(0).integers(0, 2_000_000, 1_000_000, dtype=np.uint64)
    daemon.stub.Push(push("big", query[:5], np.ones((5, 64), np.float32)))
    rows = rows_of(daemon.stub.Lookup(pb.LookupRequest(table="big", keys=keys(query))))
    assert rows.shape == (1_000_000, 64)
    touched = np.isin(query, query[:5])
    assert (rows[touched] == -0.1).all() and (rows[~touched] == 0).all()


def test_lookup_tokens_hashes_like_the_client(daemon: Daemon, tokenizer_path: Path) -> None:
    mapping = NgramHashMapping([997, 1009], 3, 32, 4, [1, 7], tokenizer_path, 0, 0)
    layer = 7
    table_spec = spec(
        "L7",
        num_rows=mapping.layer_table_rows(layer),
        dim=4,
        hash_config=mapping.hash_config(layer),
    )
    info = daemon.stub.CreateTable(pb.CreateTableRequest(spec=table_spec))
    assert info.hash_fingerprint == mapping.fingerprint(layer)
    ids = np.random.default_rng(1).integers(0, 8192, (2, 9))
    by_tokens = rows_of(
        daemon.stub.LookupTokens(
            pb.LookupTokensRequest(
                table="L7", token_ids=numpy_array(ids), hash_fingerprint=info.hash_fingerprint
            )
        )
    )
    assert by_tokens.shape == (2, 9, 8, 4)
    by_keys = rows_of(
        daemon.stub.Lookup(pb.LookupRequest(table="L7", keys=keys(mapping.row_keys(ids)[layer])))
    )
    np.testing.assert_array_equal(by_tokens, by_keys)
    # A decode step: each sequence's last max_ngram_size (3) tokens, the last position's rows.
    last = rows_of(
        daemon.stub.LookupTokens(
            pb.LookupTokensRequest(
                table="L7",
                token_ids=numpy_array(np.ascontiguousarray(ids[:, -3:])),
                hash_fingerprint=info.hash_fingerprint,
                last_position_only=True,
            )
        )
    )
    assert last.shape == (2, 1, 8, 4)
    np.testing.assert_array_equal(last, by_tokens[:, -1:])
    with pytest.raises(grpc.RpcError) as wrong:
        list(
            daemon.stub.LookupTokens(
                pb.LookupTokensRequest(
                    table="L7", token_ids=numpy_array(ids), hash_fingerprint=mapping.fingerprint(1)
                )
            )
        )
    assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hash config mismatch" in wrong.value.details()


def test_lookup_tokens_takes_a_token_mask_and_a_masked_decode_step(
    daemon: Daemon, tokenizer_path: Path
) -> None:
    mapping = NgramHashMapping([997, 1009, 1013], 4, 32, 2, [1], tokenizer_path, 2, 0)
    info = daemon.stub.CreateTable(
        pb.CreateTableRequest(
            spec=spec(
                "L1",
                num_rows=mapping.layer_table_rows(1),
                dim=4,
                hash_config=mapping.hash_config(1),
                init="normal",
                init_std=1.0,
            )
        )
    )
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 8192, (3, 12))
    mask = rng.random(ids.shape) > 0.3
    mask[:, -1] = True

    def lookup(
        token_ids: np.ndarray, token_mask: np.ndarray | None, last: bool = False
    ) -> np.ndarray:
        return rows_of(
            daemon.stub.LookupTokens(
                pb.LookupTokensRequest(
                    table="L1",
                    token_ids=numpy_array(np.ascontiguousarray(token_ids)),
                    hash_fingerprint=info.hash_fingerprint,
                    last_position_only=last,
                    token_mask=None
                    if token_mask is None
                    else pb.Array(
                        dtype="bool",
                        shape=list(token_mask.shape),
                        data=np.ascontiguousarray(token_mask).tobytes(),
                    ),
                )
            )
        )

    by_keys = rows_of(
        daemon.stub.Lookup(
            pb.LookupRequest(table="L1", keys=keys(mapping.row_keys(ids, token_mask=mask)[1]))
        )
    )
    np.testing.assert_array_equal(lookup(ids, mask), by_keys)
    assert not np.array_equal(lookup(ids, None), by_keys), "the mask changed the rows"
    # A decode step: each sequence's last max_ngram_size (4) tokens and their mask.
    step = lookup(ids[:, -4:], mask[:, -4:], last=True)
    np.testing.assert_array_equal(step, by_keys[:, -1:])
    with EngramClient(daemon.address) as client:
        np.testing.assert_array_equal(client.lookup_tokens("L1", ids, token_mask=mask), by_keys)
        with pytest.raises(ValueError, match="token_mask must have the shape"):
            client.lookup_tokens("L1", ids, token_mask=mask[:, 1:])
    for bad, message in (
        (pb.Array(dtype="bool", shape=[3, 11], data=bytes(33)), "token_mask must have the shape"),
        (pb.Array(dtype="bool", shape=[3, 12], data=bytes([2]) * 36), "bytes 0 or 1"),
        (
            pb.Array(dtype="int64", shape=[3, 12], data=bytes(288)),
            "token_mask must have dtype bool",
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            list(
                daemon.stub.LookupTokens(
                    pb.LookupTokensRequest(
                        table="L1",
                        token_ids=numpy_array(ids),
                        hash_fingerprint=info.hash_fingerprint,
                        token_mask=bad,
                    )
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in refused.value.details()


def test_push_applies_the_optimizer_and_is_idempotent(daemon: Daemon) -> None:
    s = daemon.stub
    s.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=50, dim=3, lr=0.5)))
    before = rows_of(s.Lookup(pb.LookupRequest(table="t", keys=keys([4, 9]))))
    grads = np.ones((3, 3), np.float32)
    first = s.Push(push("t", [4, 9, 4], grads, client_id="w0", sequence=1))
    assert (first.rows, first.step, first.duplicate) == (2, 1, False)
    retry = s.Push(push("t", [4, 9, 4], grads, client_id="w0", sequence=1))
    assert retry.duplicate and retry.rows == 0
    after = rows_of(s.Lookup(pb.LookupRequest(table="t", keys=keys([4, 9]))))
    np.testing.assert_allclose(after, before - 0.5 * np.array([[2.0] * 3, [1.0] * 3]), rtol=1e-6)
    half = s.Push(
        pb.PushRequest(
            table="t",
            keys=keys([1]),
            grads=numpy_array(np.full((1, 3), 2.0, np.float16)),
            client_id="w0",
            sequence=2,
            step=10,
        )
    )
    assert half.step == 10
    stats = s.Stats(pb.StatsRequest())
    assert stats.tables[0].pushes == 2 and stats.tables[0].duplicate_pushes == 1


def test_tables_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with daemon_thread(data) as d:
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", optimizer="adagrad")))
        d.stub.Push(push("t", [1, 2, 3], np.ones((3, 8), np.float32), client_id="c", sequence=7))
        before = raw_rows(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(1000)))))
    with daemon_thread(data) as d:
        info = d.stub.DescribeTable(pb.DescribeTableRequest(name="t"))
        assert info.step == 1 and info.written_rows == 3
        after = raw_rows(d.stub.Lookup(pb.LookupRequest(table="t", keys=keys(range(1000)))))
        assert after == before
        again = d.stub.Push(push("t", [1], np.ones((1, 8), np.float32), client_id="c", sequence=7))
        assert again.duplicate
