"""Followers (`serve --follow`): a read-only copy of a training store, equal to the leader's
tables at each of its checkpoints, through disconnects, restarts, crashes mid catch-up,
restores, and tables re-created or replaced on the leader."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon import Daemon, daemon_process
from prometheus_client.parser import text_string_to_metric_families
from store_helpers import keys, push, raw_rows, spec

from client import EngramClient, PreconditionFailedError, Security
from store._proto.engram.store.v1 import store_pb2 as pb
from store.crash_points import ENV, POINTS
from store.wire import numpy_array

ROWS = 3000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def leader_at(data: Path, port: int) -> Iterator[tuple[Daemon, subprocess.Popen[bytes]]]:
    """A leader on a fixed port, so that a follower finds it again after a restart."""
    with daemon_process(data, "--port", str(port)) as running:
        yield running


@contextmanager
def follower_of(
    data: Path, leader_port: int, env: dict[str, str] | None = None, *extra: str
) -> Iterator[tuple[Daemon, subprocess.Popen[bytes]]]:
    follow = ("--follow", f"127.0.0.1:{leader_port}", "--follow-wait", "1", *extra)
    with daemon_process(data, *follow, env=env) as running:
        yield running


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def create_tables(d: Daemon) -> None:
    d.stub.CreateTable(pb.CreateTableRequest(spec=spec("adam", ROWS, 8, "adam", lr=0.01)))
    bf16 = spec("adagrad", ROWS, 16, "rowwise_adagrad", lr=0.1, dtype="bfloat16")
    d.stub.CreateTable(pb.CreateTableRequest(spec=bf16))


def train(d: Daemon, seed: int, pushes: int = 4) -> None:
    rng = np.random.default_rng(seed)
    for info in d.stub.ListTables(pb.ListTablesRequest()).tables:
        for _ in range(pushes):
            k = rng.integers(0, info.spec.num_rows, 200)
            grads = rng.standard_normal((200, info.spec.dim)).astype(np.float32)
            d.stub.Push(push(info.spec.name, k, grads))


def snapshot(d: Daemon) -> dict[str, tuple[int, bytes]]:
    """Every table's step and every row exactly as stored."""
    out = {}
    for info in d.stub.ListTables(pb.ListTablesRequest()).tables:
        request = pb.LookupRequest(
            table=info.spec.name, keys=keys(range(info.spec.num_rows)), dtype=info.spec.dtype
        )
        out[info.spec.name] = (info.step, raw_rows(d.stub.Lookup(request)))
    return out


def wait_for_checkpoint(follower: Daemon, checkpoint: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = follower.stub.Stats(pb.StatsRequest())
        if stats.followed_checkpoint == checkpoint:
            return
        time.sleep(0.05)
    raise AssertionError(f"the follower never reached checkpoint {checkpoint}: {stats}")


def checkpoint(leader: Daemon, full: bool = False) -> tuple[int, dict[str, tuple[int, bytes]]]:
    """A checkpoint and the leader's tables as it holds them (no push runs meanwhile)."""
    info = leader.stub.Checkpoint(pb.CheckpointRequest(full=full))
    return info.id, snapshot(leader)


def test_a_follower_equals_its_leader_at_every_checkpoint(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    with (
        leader_at(tmp_path / "leader", port) as (leader, _),
        follower_of(tmp_path / "follower", port, None, "--metrics-port", str(metrics_port)) as (
            follower,
            _,
        ),
    ):
        assert follower.stub.Stats(pb.StatsRequest()).follows == f"127.0.0.1:{port}"
        create_tables(leader)
        for round_ in range(5):
            train(leader, round_)
            if round_ == 2:  # a table dropped and one re-created under the same name
                leader.stub.DropTable(pb.DropTableRequest(name="adagrad"))
                leader.stub.CreateTable(pb.CreateTableRequest(spec=spec("adagrad", ROWS, 4)))
                leader.stub.CreateTable(pb.CreateTableRequest(spec=spec("new", 500, 4)))
                train(leader, 100)
            if round_ == 4:  # a table replaced by an import, swapped in whole
                replacement = spec("new", 500, 4)
                leader.stub.CreateTable(
                    pb.CreateTableRequest(spec=replacement, importing=True, replace_existing=True)
                )
                rows = numpy_array(np.full((500, 4), 3, np.float32))
                leader.stub.WriteRows(pb.WriteRowsRequest(table="new", rows=rows))
                leader.stub.FinishImport(pb.FinishImportRequest(table="new"))
            checkpoint_id, expected = checkpoint(leader, full=round_ == 3)
            train(leader, 1000 + round_)  # the leader goes on; the follower holds the checkpoint
            wait_for_checkpoint(follower, checkpoint_id)
            assert snapshot(follower) == expected, f"round {round_}"
        metrics = scrape(metrics_port)
        assert metrics["engram_followed_checkpoint", ()] == checkpoint_id
        assert metrics["engram_follow_failing", ()] == 0

        with pytest.raises(grpc.RpcError) as refused:
            follower.stub.Push(push("adam", [1], np.ones((1, 8), np.float32)))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"follows 127.0.0.1:{port}" in (refused.value.details() or "")
        for call, request in [
            (follower.stub.Checkpoint, pb.CheckpointRequest()),
            (follower.stub.DropTable, pb.DropTableRequest(name="adam")),
            (follower.stub.CreateTable, pb.CreateTableRequest(spec=spec("x"))),
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                call(request)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_follower_catches_up_after_disconnects_restarts_and_a_restore(tmp_path: Path) -> None:
    port = free_port()
    leader_dir, follower_dir = tmp_path / "leader", tmp_path / "follower"
    with leader_at(leader_dir, port) as (leader, _):
        create_tables(leader)
        train(leader, 0)
        first, at_first = checkpoint(leader)
    with follower_of(follower_dir, port) as (follower, _):
        # The leader is down: the follower says why it is behind and serves what it holds.
        deadline = time.monotonic() + 30
        while not follower.stub.Stats(pb.StatsRequest()).follow_error:
            assert time.monotonic() < deadline, "no error reported"
            time.sleep(0.05)
        assert "UNAVAILABLE" in follower.stub.Stats(pb.StatsRequest()).follow_error
        with leader_at(leader_dir, port) as (leader, process):
            wait_for_checkpoint(follower, first)
            assert snapshot(follower) == at_first
            train(leader, 1)
            second, at_second = checkpoint(leader)
            wait_for_checkpoint(follower, second)
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert snapshot(follower) == at_second, "a dead leader changes nothing"
    with leader_at(leader_dir, port) as (leader, _):
        train(leader, 2)
        third, _ = checkpoint(leader)
        # A restore branches off: the next checkpoint's chain skips the follower's.
        leader.stub.Restore(pb.RestoreRequest(id=first))
        train(leader, 3)
        fourth, at_fourth = checkpoint(leader)
        with follower_of(follower_dir, port) as (follower, _):
            assert follower.stub.Stats(pb.StatsRequest()).followed_checkpoint >= second
            wait_for_checkpoint(follower, fourth)
            assert snapshot(follower) == at_fourth
            assert third < fourth


@pytest.mark.parametrize("point", [p for p in POINTS if p.startswith("follow:")])
def test_a_follower_killed_while_catching_up_starts_again_and_catches_up(
    tmp_path: Path, point: str
) -> None:
    port = free_port()
    with leader_at(tmp_path / "leader", port) as (leader, _):
        create_tables(leader)
        train(leader, 0)
        first, _ = checkpoint(leader)
        with follower_of(tmp_path / "follower", port) as (follower, _):
            wait_for_checkpoint(follower, first)
        train(leader, 1)
        second, at_second = checkpoint(leader)
        with follower_of(tmp_path / "follower", port, {ENV: point}) as (_, process):
            process.wait(timeout=60)
            assert process.returncode == -signal.SIGKILL, f"the follower did not die at {point}"
        with follower_of(tmp_path / "follower", port) as (follower, _):
            wait_for_checkpoint(follower, second)
            assert snapshot(follower) == at_second


def test_a_promoted_follower_holds_the_optimizer_state_too(tmp_path: Path) -> None:
    """Restarted without --follow, a follower trains on: the same push on it and on the
    leader (back at the same checkpoint) gives the same rows, so Adam's moments and step
    came along with the rows."""
    port = free_port()
    with leader_at(tmp_path / "leader", port) as (leader, _):
        create_tables(leader)
        train(leader, 0)
        last, _ = checkpoint(leader)
        with follower_of(tmp_path / "follower", port) as (follower, _):
            wait_for_checkpoint(follower, last)
        train(leader, 1)
        leader.stub.Restore(pb.RestoreRequest(id=last))
        train(leader, 2)
        on_leader = snapshot(leader)
    with daemon_process(tmp_path / "follower") as (promoted, _):
        train(promoted, 2)
        assert snapshot(promoted) == on_leader


def test_the_changes_cli_verb_saves_an_incremental_copy(tmp_path: Path) -> None:
    port = free_port()
    with leader_at(tmp_path / "leader", port) as (leader, _):
        create_tables(leader)
        train(leader, 0)
        first, _ = checkpoint(leader)
        train(leader, 1)
        second, _ = checkpoint(leader)
        out = tmp_path / "changes"
        done = subprocess.run(
            [
                "engram-store",
                "changed-rows",
                "--address",
                f"127.0.0.1:{port}",
                "--since",
                str(first),
                "--save",
                str(out),
            ],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert f"checkpoint {second} since {first}" in done.stdout
        saved = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert saved == [f"{second}/adagrad.pack", f"{second}/adam.pack", "changes.json"]


def test_a_follower_reaches_a_leader_with_tokens_using_a_read_only_one(tmp_path: Path) -> None:
    port = free_port()
    writer, reader = "w" * 32, "r" * 32
    tokens = {"ENGRAM_STORE_SERVE_TOKENS": f"read-write {writer}\nread-only {reader}\n"}
    with daemon_process(tmp_path / "leader", "--port", str(port), env=tokens):
        with EngramClient(f"127.0.0.1:{port}", security=Security(token=writer)) as client:
            client.create_table("emb", 100, 4, optimizer="adam")
            client.push("emb", [1, 2], np.ones((2, 4), np.float32))
            latest = client.checkpoint()[0].id
            rows = client.lookup("emb", np.arange(100))
        with follower_of(tmp_path / "refused", port) as (follower, _):
            deadline = time.monotonic() + 30
            while "UNAUTHENTICATED" not in follower.stub.Stats(pb.StatsRequest()).follow_error:
                assert time.monotonic() < deadline, "no token, yet no refusal reported"
                time.sleep(0.05)
        with follower_of(tmp_path / "follower", port, None, "--follow-token", reader) as (
            follower,
            _,
        ):
            wait_for_checkpoint(follower, latest)
            with EngramClient(follower.address) as client:
                np.testing.assert_array_equal(client.lookup("emb", np.arange(100)), rows)


def test_a_leader_stops_at_once_while_a_follower_waits_for_its_next_checkpoint(
    tmp_path: Path,
) -> None:
    """A call waiting for a checkpoint is answered when the daemon stops: the stop neither
    waits out the call's minute nor answers it with an error of a closed catalog."""
    with daemon_process(tmp_path / "leader") as (leader, process):
        create_tables(leader)
        train(leader, seed=1, pushes=1)
        latest = leader.stub.Checkpoint(pb.CheckpointRequest()).id
        waiting = leader.stub.ChangedRows(
            pb.ChangedRowsRequest(since_checkpoint=latest, wait_ms=60_000), timeout=120
        )
        time.sleep(1)  # the call is waiting at the leader
        assert not waiting.done()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        answered = list(waiting)
    assert answered[0].WhichOneof("part") == "header"
    assert answered[0].header.checkpoint == latest and not answered[0].header.tables
    assert "unexpected error" not in (tmp_path / "leader.log").read_text()


def test_followers_of_every_shard_serve_a_sharded_table_to_a_client_listing_them(
    tmp_path: Path,
) -> None:
    """One follower per shard (as deploy/kubernetes/followers.yaml runs them): a client
    listing the followers in shard order reads what a client of the shards reads."""
    ports = [free_port(), free_port()]
    with (
        leader_at(tmp_path / "shard0", ports[0]) as (shard0, _),
        leader_at(tmp_path / "shard1", ports[1]) as (shard1, _),
        follower_of(tmp_path / "follower0", ports[0]) as (follower0, _),
        follower_of(tmp_path / "follower1", ports[1]) as (follower1, _),
        EngramClient([shard0.address, shard1.address]) as trainer,
        EngramClient([follower0.address, follower1.address]) as server,
    ):
        trainer.create_table("t", 5000, 8, optimizer="adam")
        everything = np.arange(5000, dtype=np.uint64)
        trainer.push("t", everything[::7], np.ones((len(everything[::7]), 8), np.float32))
        ids = [c.id for c in trainer.checkpoint()]
        for follower, checkpoint_id in zip([follower0, follower1], ids, strict=True):
            wait_for_checkpoint(follower, checkpoint_id)
        np.testing.assert_array_equal(
            server.lookup("t", everything), trainer.lookup("t", everything)
        )
        with pytest.raises(PreconditionFailedError, match="follows"):
            server.push("t", everything[:2], np.ones((2, 8), np.float32))
