"""EngramClient against real daemons: one, or three sharding a table."""

from __future__ import annotations

import pickle
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import REPO_ROOT
from daemon import Daemon, daemon_thread

from client import (
    EngramClient,
    InvalidRequestError,
    KeyOutOfRangeError,
    PreconditionFailedError,
    RetryPolicy,
    ShardUnavailableError,
    TableExistsError,
    TableNotFoundError,
)
from client.changes import read_changes
from client.config import EngramConfig
from client.engram_tables import hash_mapping
from store import Table
from store._proto.engram.store.v1 import store_pb2 as pb
from store.errors import InvalidArgumentError, OutOfRangeError, StoreError
from store.spec import SyncStep

# A number's text, where the signature asks for the number.
TEXT: Any = "1"
NO_GRADS = np.zeros((0, 2), np.float32)


@pytest.fixture
def one(tmp_path: Path) -> Iterator[Daemon]:
    with daemon_thread(tmp_path / "one") as d:
        yield d


@pytest.fixture
def three(tmp_path: Path) -> Iterator[list[Daemon]]:
    with ExitStack() as stack:
        yield [stack.enter_context(daemon_thread(tmp_path / f"shard{i}")) for i in range(3)]


def test_single_daemon_round_trip(one: Daemon) -> None:
    with EngramClient(one.address) as client:
        info = client.create_table("t", 1000, 8, optimizer="adagrad", lr=0.5)
        assert (info.num_rows, info.dim, info.optimizer) == (1000, 8, "adagrad")
        assert client.tables() == ["t"]
        keys = np.array([[3, 999], [3, 0]])
        rows = client.lookup("t", keys)
        assert rows.shape == (2, 2, 8)
        expected = Table.open(one.data_dir / "tables" / "t" / "params.engram").gather(keys)
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_array_equal(client.lookup_async("t", keys).result(), rows)
        result = client.push("t", [3, 5, 3], np.ones((3, 8), np.float32))
        assert (result.rows, result.step, result.duplicate) == (2, 1, False)
        assert client.push_async("t", [7], np.ones((1, 8))).result().step == 2
        assert not np.array_equal(client.lookup("t", [3]), rows[0, :1])
        assert client.describe("t").written_rows == 3
        assert [c.id for c in client.checkpoint()] == [1]
        client.drop_table("t")
        assert client.tables() == []


def test_errors_become_the_clients_exceptions(one: Daemon) -> None:
    with EngramClient(one.address) as client:
        client.create_table("t", 10, 2)
        with pytest.raises(TableNotFoundError, match="table 'nope' does not exist"):
            client.lookup("nope", [1])
        with pytest.raises(KeyOutOfRangeError, match=r"keys\[1\] = 10") as error:
            client.lookup("t", [1, 10])
        assert error.value.address == one.address
        with pytest.raises(TableExistsError):
            client.create_table("t", 10, 2)
        with pytest.raises(InvalidRequestError, match="NaN"):
            client.push("t", [1], np.full((1, 2), np.nan))
        with pytest.raises(ValueError, match="grads has shape"):
            client.push("t", [1, 2], np.ones((3, 2)))


def test_three_shards_behave_like_one_daemon(one: Daemon, three: list[Daemon]) -> None:
    rng = np.random.default_rng(0)
    with EngramClient(one.address) as single, EngramClient([d.address for d in three]) as sharded:
        for client in (single, sharded):
            client.create_table("emb", 1000, 4, optimizer="adam", lr=0.01, seed=3)
        everything = np.arange(1000)
        np.testing.assert_array_equal(
            sharded.lookup("emb", everything), single.lookup("emb", everything)
        )
        for _ in range(20):
            keys = rng.integers(0, 1000, 300)
            grads = rng.standard_normal((300, 4)).astype(np.float32)
            single.push("emb", keys, grads)
            sharded.push("emb", keys, grads)
        np.testing.assert_allclose(
            sharded.lookup("emb", everything), single.lookup("emb", everything), rtol=1e-6
        )
        info = sharded.describe("emb")
        assert info.num_rows == 1000 and info.step == 20
        ranges = [
            (i.spec.first_row, i.spec.num_rows)
            for i in (d.stub.DescribeTable(pb.DescribeTableRequest(name="emb")) for d in three)
        ]
        assert ranges == [(0, 333), (333, 333), (666, 334)]
    # Another client routes the same way, from what the shards record.
    with EngramClient([d.address for d in three]) as other:
        np.testing.assert_array_equal(other.lookup("emb", [0, 333, 334, 999]).shape, (4, 4))
    shuffled = [three[1].address, three[0].address, three[2].address]
    with (
        EngramClient(shuffled) as client,
        pytest.raises(InvalidRequestError, match="list the daemons in the order"),
    ):
        client.lookup("emb", [1])


class DropFirstPushReply(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Lets the first push reach the daemon, then reports it lost, as a dropped connection
    would: the client must retry, and the daemon must not apply it twice."""

    def __init__(self) -> None:
        self.dropped = 0

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        if details.method.endswith("/Push") and not self.dropped:
            outcome.result()
            self.dropped += 1
            raise _Unavailable()
        return outcome


class _Unavailable(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset (simulated)"


def test_retried_pushes_apply_once(one: Daemon) -> None:
    interceptor = DropFirstPushReply()
    with EngramClient(one.address, interceptors=[interceptor]) as client:
        client.create_table("t", 10, 2, init="zeros", lr=1.0)
        result = client.push("t", [4], np.ones((1, 2)))
        assert interceptor.dropped == 1 and result.duplicate
        np.testing.assert_array_equal(client.lookup("t", [4]), [[-1.0, -1.0]])
        assert client.describe("t").step == 1


def test_a_dead_shard_is_named_not_waited_on(one: Daemon) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with (
        EngramClient(
            [one.address, dead], timeout_s=2.0, retry=RetryPolicy(max_attempts=3)
        ) as client,
        pytest.raises(ShardUnavailableError, match=dead),
    ):
        client.create_table("t", 10, 2)
    assert time.monotonic() - start < 10


def test_a_negative_key_is_refused_as_out_of_range_before_it_is_sent(one: Daemon) -> None:
    with EngramClient(one.address) as client:
        client.create_table("t", 10, 2)
        for call in (lambda: client.lookup("t", [3, -1]), lambda: client.push("t", [-2], [[1, 1]])):
            with pytest.raises(OutOfRangeError, match=r"keys\[\d\] = -\d is negative"):
                call()
        assert isinstance(OutOfRangeError("x"), (StoreError, IndexError))
        # Python integers numpy cannot give one integer type: before, "keys must hold
        # integers, got dtype float64" (or object) for a list of integers.
        with pytest.raises(OutOfRangeError, match=r"keys\[0\] = -1 is negative"):
            client.lookup("t", [-1, 2**63])
        with pytest.raises(
            OutOfRangeError, match=r"keys\[1\] = 1180591620717411303424 is beyond .* 2\^64 - 1"
        ):
            client.lookup("t", [3, 2**70])
        with pytest.raises(TypeError, match="keys must hold integers"):
            client.lookup("t", [1.5, 2**70])


def test_a_bad_step_or_checkpoint_id_is_refused_naming_it(one: Daemon) -> None:
    with EngramClient(one.address) as client:
        client.create_table("t", 10, 2)
        # Each failed inside protobuf or int(): "Value out of range: -1", "invalid literal".
        with pytest.raises(ValueError, match="step must be None or an integer >= 0, got -1"):
            client.push("t", [1], [[1.0, 1.0]], step=-1)
        with pytest.raises(TypeError, match=r"ids must be a checkpoint id, .* got 'abc'"):
            client.restore("abc")  # type: ignore[arg-type]
        assert client.describe("t").step == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        # Each failed inside protobuf without naming the argument: "bad argument type for
        # built-in operation", "Value out of range: -1", "must be real number, not str".
        (lambda c: c.create_table(5, 10, 2), "table name must be a string, got 5"),
        (lambda c: c.create_table("u", 10.5, 2), r"num_rows must be an integer in 0\.\."),
        (
            lambda c: c.create_table("u", 10, -1),
            r"dim must be an integer in 0\.\.4294967295, got -1",
        ),
        (
            lambda c: c.create_table("u", 2**70, 2),
            r"num_rows must be an integer in 0\.\.\d+, got \d+",
        ),
        (lambda c: c.create_table("u", 10, 2**33), r"dim must be an integer in 0\.\.4294967295"),
        (lambda c: c.create_table("u", 10, 2, seed=-1), r"seed must be an integer in 0\.\."),
        (lambda c: c.create_table("u", 10, 2, init_std="1"), "init_std must be a number"),
        (lambda c: c.create_table("u", 10, 2, lr="0.1"), "lr must be a number, got '0.1'"),
        (lambda c: c.create_table("u", 10, 2, read_only="no"), "read_only must be a boolean"),
        (lambda c: c.tune_table("t", "0.1"), "lr must be a number, got '0.1'"),
        (lambda c: c.tune_table("t", 0.1, None), "weight_decay must be a number, got None"),
        (lambda c: c.restore(-1), r"ids must be an integer in 0\.\.\d+, got -1"),
        (lambda c: c.restore([2**70]), r"ids must be an integer in 0\.\.\d+, got \d+"),
        (lambda c: c.changed_rows(-5), r"since_checkpoint must be an integer in 0\.\."),
        # A table name that is not a string failed inside protobuf ("bad argument type for
        # built-in operation"), or was sent as "" (None), or hashed (a list).
        (lambda c: c.lookup(5, [1]), "table must be a string, got 5"),
        (lambda c: c.lookup(b"t", [1]), "table must be a string, got b't'"),
        (lambda c: c.push(None, [1], [[1.0, 1.0]]), "table must be a string, got None"),
        (lambda c: c.describe(["t"]), r"name must be a string, got \['t'\]"),
        (lambda c: c.spec(5), "name must be a string, got 5"),
        (lambda c: c.drop_table(5), "name must be a string, got 5"),
        (lambda c: c.tune_table(5, 0.1), "name must be a string, got 5"),
        (lambda c: c.verify(5), "table must be a string, got 5"),
        (lambda c: c.lookup_tokens(5, [[1]]), "table must be a string, got 5"),
        (lambda c: c.finish_import(5), "table must be a string, got 5"),
        (lambda c: c.write_rows(5, 0, np.zeros((1, 2), np.float32), "float32"), "table must"),
        (lambda c: c.batch([(5, [1], [[1.0, 1.0]])]), r"pushes\[0\]: table must be a string"),
        (lambda c: c.batch([], [("t", [1]), (None, [1])]), r"lookups\[1\]: table must be"),
        # Each failed inside protobuf or a comparison, or took a string's truth for a flag.
        (lambda c: c.push("t", [1], [[1.0, 1.0]], return_rows="no"), "return_rows must be a"),
        (lambda c: c.batch([("t", [1], [[1.0, 1.0]])], return_rows="no"), "return_rows must"),
        (lambda c: c.push("t", [1], [[1.0, 1.0]], sync=1), "sync must be a SyncStep, got 1"),
        (lambda c: c.push("t", [], NO_GRADS, sync=SyncStep(TEXT, 0, 1)), "step must be an integer"),
        (lambda c: c.push("t", [], NO_GRADS, sync=SyncStep(1, TEXT, 2)), "rank must be an integer"),
        (
            lambda c: c.push("t", [], NO_GRADS, sync=SyncStep(1, 0, 2, timeout_s=TEXT)),
            "timeout_s must",
        ),
        (lambda c: c.checkpoint(full="no"), "full must be a boolean, got 'no'"),
        (lambda c: c.lookup_tokens("t", [[1]], last_position_only="no"), "last_position_only"),
        (lambda c: c.create_table("u", 10, 2, hash_config=5), "hash_config must be a HashSpec"),
        (lambda c: c.write_rows("t", "0", np.zeros((1, 2), np.float32), "float32"), "first_row"),
        (lambda c: c.replace_rows("t", np.zeros((10, 2), np.float32), 0), "chunk_rows must be"),
    ],
)
def test_a_bad_argument_is_refused_naming_it_before_it_is_sent(
    one: Daemon, call: Any, message: str
) -> None:
    with EngramClient(one.address) as client:
        client.create_table("t", 10, 2)
        with pytest.raises(InvalidArgumentError, match=message):
            call(client)
        assert client.tables() == ["t"]
        assert client.describe("t").lr == 0.01


def test_arguments_that_are_not_of_their_kind_are_refused_naming_them(one: Daemon) -> None:
    # Each failed later, or inside protobuf or a comparison, without naming the argument.
    with pytest.raises(ValueError, match=r"addresses must be .* strings, got \[5\]"):
        EngramClient(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="client_id must be a string or None, got 5"):
        EngramClient(one.address, client_id=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="shared_memory must be a boolean"):
        EngramClient(one.address, shared_memory="no")  # type: ignore[arg-type]
    with EngramClient(one.address) as client:
        client.create_table("t", 10, 2)
        with pytest.raises(ValueError, match=r"out must be .*, got int"):
            client.lookup("t", [1], out=5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"shard must be in \[0, 1\), got '0'"):
            client.list_checkpoints("0")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="store_id must be a string, got 5"):
            client.changed_rows(store_id=5)  # type: ignore[arg-type]
        # A bad chunk size used to fail after the table was dropped for its replacement.
        assert client.describe("t").num_rows == 10
        assert client.describe("t").step == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # Each was accepted and then failed every call as if the daemon did not answer.
        ({"timeout_s": -1}, r"timeout_s must be a finite number of seconds > 0, got -1"),
        ({"timeout_s": 0}, r"timeout_s must be .* > 0, got 0"),
        ({"timeout_s": float("nan")}, r"timeout_s must be .*, got nan"),
    ],
)
def test_a_client_refuses_a_timeout_that_could_not_work(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EngramClient("127.0.0.1:1", **options)


def test_a_retry_policy_refuses_settings_that_could_not_work() -> None:
    # No attempt at all failed every call with AssertionError("unreachable").
    with pytest.raises(ValueError, match="max_attempts must be at least 1, got 0"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match=r"initial_backoff_s must be .* >= 0, got -1"):
        RetryPolicy(initial_backoff_s=-1)
    with pytest.raises(ValueError, match=r"max_backoff_s must be .*, got inf"):
        RetryPolicy(max_backoff_s=float("inf"))
    assert RetryPolicy(max_attempts=1, initial_backoff_s=0, max_backoff_s=0)


def test_many_background_requests_on_shards_do_not_starve(three: list[Daemon]) -> None:
    with EngramClient([d.address for d in three]) as client:
        client.create_table("t", 300, 2)
        lookups = [client.lookup_async("t", np.arange(300)) for _ in range(16)]
        pushes = [client.push_async("t", np.arange(300), np.ones((300, 2))) for _ in range(8)]
        for lookup in lookups:
            assert lookup.result(timeout=60).shape == (300, 2)
        for push in pushes:
            push.result(timeout=60)
        assert client.describe("t").step == 8


def test_checkpoints_restores_stats_and_token_lookups(three: list[Daemon], one: Daemon) -> None:
    with EngramClient([d.address for d in three]) as client:
        client.create_table("t", 3000, 4, lr=1.0)
        keys = np.array([1, 1500, 2999])
        client.push("t", keys, np.ones((3, 4), np.float32))
        saved = client.checkpoint()
        at_checkpoint = client.lookup("t", keys)
        client.push("t", keys, np.ones((3, 4), np.float32))
        assert [s.tables[0].pushes for s in client.stats()] == [2, 2, 2]
        assert [s.address for s in client.stats()] == [d.address for d in three]
        assert [c.id for c in client.restore(saved)] == [1, 1, 1]
        # Counters are the daemon's since it started, restores included (they used to
        # start again at 0): 2 pushes and a lookup on each shard.
        assert [(s.tables[0].pushes, s.tables[0].lookups) for s in client.stats()] == [(2, 1)] * 3
        np.testing.assert_array_equal(client.lookup("t", keys), at_checkpoint)
        assert [len(c) for c in client.list_checkpoints_by_shard()] == [1, 1, 1]
        assert client.list_checkpoints(2)[0].tables[0].rows == 1
        with pytest.raises(ValueError, match="shard must be in"):
            client.list_checkpoints(3)
        assert client.verify().ok and client.verify("t").written_rows == 3
        with pytest.raises(InvalidRequestError, match="one daemon"):
            client.lookup_tokens("t", [[1, 2]])
    with EngramClient(one.address) as client:
        client.create_table("plain", 10, 2)
        with pytest.raises(InvalidRequestError, match="without a hash config"):
            client.lookup_tokens("plain", [[1, 2]])
        with pytest.raises(ValueError, match="token_ids"):
            client.lookup_tokens("plain", [1, 2])


def test_changed_rows_refuse_a_table_name_that_would_name_a_path(tmp_path: Path) -> None:
    # The names in the daemon's answer become file names under save_to.
    header = pb.ChangedRowsHeader(
        checkpoint=1,
        tables=[pb.ChangedTable(name="../outside", packs=[pb.ChangedPack(checkpoint=1)])],
    )
    stream = iter([pb.ChangedRowsResponse(header=header)])
    with pytest.raises(InvalidArgumentError, match="table name must be"):
        read_changes(0, stream, tmp_path / "copy")
    assert list(tmp_path.iterdir()) == []


def test_a_closed_client_says_so(three: list[Daemon]) -> None:
    client = EngramClient([d.address for d in three])
    client.create_table("t", 30, 2)
    client.lookup("t", [1])  # the table's layout is known: no describe before the call
    client.close()
    # Each said "Cannot invoke RPC on closed channel!" or "cannot schedule new futures
    # after shutdown", depending on the call.
    calls: list[Callable[[], Any]] = [
        lambda: client.lookup("t", [1, 20]),
        lambda: client.describe("t"),
        lambda: client.tables(),
        lambda: client.list_checkpoints(1),
        lambda: client.lookup_async("t", [1]),
        lambda: client.push("t", [1], [[1.0, 1.0]]),
    ]
    for call in calls:
        with pytest.raises(PreconditionFailedError, match="client is closed"):
            call()
    client.close()  # again: nothing to do


def test_a_client_cannot_be_pickled_into_a_twin(one: Daemon) -> None:
    # It failed with "no default __reduce__ due to non-trivial __cinit__" from grpc; a twin
    # with the same client id would have had its pushes dropped as retries of this one's.
    with (
        EngramClient(one.address) as client,
        pytest.raises(TypeError, match="open one in each process"),
    ):
        pickle.dumps(client)


@pytest.mark.parametrize("shared_memory", [True, False])
def test_a_client_id_in_use_by_another_client_is_refused_not_dropped(
    one: Daemon, shared_memory: bool
) -> None:
    options: dict[str, Any] = {"client_id": "trainer", "shared_memory": shared_memory}
    with EngramClient(one.address, **options) as first:
        first.create_table("t", 10, 2, lr=1.0)
        first.push("t", [1], [[1.0, 1.0]])
        first.push("t", [1], [[1.0, 1.0]])
    with EngramClient(one.address) as reader:
        before = reader.lookup("t", [1, 2])
    # A restarted trainer with the same id numbered its pushes 1, 2, ... again: the daemon
    # answered them as retries (duplicate=True) and they were silently never applied.
    with EngramClient(one.address, **options) as second:
        with pytest.raises(PreconditionFailedError, match="another client uses the same id"):
            second.push("t", [1], [[1.0, 1.0]])
        with pytest.raises(PreconditionFailedError, match="push 2 of client id 'trainer'"):
            second.batch([("t", [2], [[1.0, 1.0]])])
        np.testing.assert_array_equal(second.lookup("t", [1, 2]), before)
        assert second.describe("t").step == 2


@pytest.mark.parametrize("shared_memory", [True, False])
def test_a_table_created_anew_by_another_client_is_read_as_it_is_now(
    three: list[Daemon], shared_memory: bool
) -> None:
    addresses = [d.address for d in three]
    with (
        EngramClient(addresses, shared_memory=shared_memory) as reader,
        EngramClient(addresses) as writer,
    ):
        writer.create_table("t", 30, 4, init="zeros")
        assert reader.lookup("t", [15]).shape == (1, 4)  # its layout is now cached
        writer.drop_table("t")
        writer.create_table("t", 60, 2, init="zeros", lr=1.0)
        writer.push("t", [15, 25], [[1.0, 2.0], [3.0, 4.0]])
        # The stale layout sent key 15 to the second shard, row 5 there: global row 25 of
        # the new table, and read its two values as four; nothing said so.
        rows = reader.lookup("t", [15, 25])
        np.testing.assert_array_equal(rows, writer.lookup("t", [15, 25]))
        assert rows.tolist() == [[-1.0, -2.0], [-3.0, -4.0]]
        writer.drop_table("t")
        writer.create_table("t", 60, 2, init="zeros")
        # A push is not sent again on its own: gradients meant for the old table.
        with pytest.raises(TableNotFoundError, match="not the one the client described"):
            reader.push("t", [15], [[1.0, 1.0]])
        assert writer.describe("t").step == 0
        assert reader.push("t", [15], [[1.0, 1.0]]).step == 1  # described afresh


def test_token_lookups_follow_a_table_created_anew_with_another_hash_config(one: Daemon) -> None:
    config = EngramConfig.from_json(str(REPO_ROOT / "examples" / "tiny_engram_lm.engram.json"))
    mapping = hash_mapping(config)
    first, second = mapping.layer_ids[:2]
    rows = max(mapping.layer_table_rows(first), mapping.layer_table_rows(second))
    ids = [[5, 17, 300, 9]]
    with EngramClient(one.address) as reader, EngramClient(one.address) as writer:
        writer.create_table("h", rows, 4, hash_config=mapping.hash_config(first))
        before = reader.lookup_tokens("h", ids)
        writer.drop_table("h")
        writer.create_table("h", rows, 4, hash_config=mapping.hash_config(second))
        # The fingerprint the reader kept was refused, and kept, on every later call.
        with pytest.raises(InvalidRequestError, match="hash config mismatch"):
            reader.lookup_tokens("h", ids)
        after = reader.lookup_tokens("h", ids)
        np.testing.assert_array_equal(after, writer.lookup_tokens("h", ids))
        assert after.shape == before.shape
