"""Resharding: a checkpoint taken on one daemon laid out over three and back, its rows and
optimizer state identical bit for bit, and training going on from it as it would have."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon import daemon_thread

from client import EngramClient
from engram_cli import main
from store import Table
from store.engine import StoreEngine
from store.errors import FailedPreconditionError, InvalidArgumentError
from store.reshard import reshard

ROWS, DIM = 1000, 4
TABLES = {"adam": "adam", "rowwise": "rowwise_adagrad"}


def stored(data_dirs: list[Path], table: str, file: str) -> np.ndarray:
    """The raw stored rows (or optimizer state rows) of a table, its shards concatenated."""
    parts = []
    for data in data_dirs:
        stored_table = Table.open(data / "tables" / table / file)
        keys = np.arange(stored_table.num_rows, dtype=np.uint64)
        parts.append(stored_table.gather(keys))
    return np.concatenate(parts)


def train(addresses: list[str], steps: int, seed: int) -> None:
    """Pushes that touch every shard of three, so each shard counts every step."""
    rng = np.random.default_rng(seed)
    with EngramClient(addresses) as client:
        for _ in range(steps):
            keys = np.concatenate([rng.integers(0, ROWS, 40), [1, 500, 999]]).astype(np.uint64)
            grads = rng.standard_normal((len(keys), DIM)).astype(np.float32)
            for table in TABLES:
                client.push(table, keys, grads)


def test_a_checkpoint_on_one_daemon_restores_onto_three_and_back(tmp_path: Path) -> None:
    one = tmp_path / "one"
    with daemon_thread(one) as daemon, EngramClient(daemon.address) as client:
        for table, optimizer in TABLES.items():
            client.create_table(table, ROWS, DIM, optimizer=optimizer, lr=0.01)
        train([daemon.address], 5, seed=1)
        client.checkpoint()
    three = [tmp_path / f"three-{i}" for i in range(3)]
    assert main(["reshard", "--from", str(one), "--to", ",".join(map(str, three))]) == 0
    back = tmp_path / "back"
    assert main(["reshard", "--from", ",".join(map(str, three)), "--to", str(back)]) == 0
    for table in TABLES:
        for file in ("params.engram", "state.engram"):
            original = stored([one], table, file)
            np.testing.assert_array_equal(stored(three, table, file), original)
            np.testing.assert_array_equal(stored([back], table, file), original)

    # Training goes on from the resharded checkpoint exactly as from the original.
    with (
        daemon_thread(three[0]) as a,
        daemon_thread(three[1]) as b,
        daemon_thread(three[2]) as c,
        daemon_thread(one) as unsplit,
    ):
        shards = [a.address, b.address, c.address]
        with EngramClient(shards) as client:
            assert [client.describe(t).step for t in TABLES] == [5, 5]
            assert client.describe("adam").shards == 3
        train(shards, 3, seed=2)
        train([unsplit.address], 3, seed=2)
        keys = np.arange(ROWS, dtype=np.uint64)
        with EngramClient(shards) as spread, EngramClient(unsplit.address) as whole:
            for table in TABLES:
                np.testing.assert_array_equal(spread.lookup(table, keys), whole.lookup(table, keys))
                assert spread.describe(table).step == whole.describe(table).step == 8


def test_shards_that_stepped_apart_or_a_missing_shard_are_refused(tmp_path: Path) -> None:
    dirs = [tmp_path / f"s{i}" for i in range(2)]
    with (
        daemon_thread(dirs[0]) as a,
        daemon_thread(dirs[1]) as b,
        EngramClient([a.address, b.address]) as client,
    ):
        client.create_table("adam", ROWS, DIM, optimizer="adam")
        client.push("adam", np.array([1], np.uint64), np.ones((1, DIM), np.float32))
        client.checkpoint()
    with pytest.raises(FailedPreconditionError, match=r"steps \[0, 1\]"):
        reshard([str(d) for d in dirs], [str(tmp_path / "t")])
    with pytest.raises(FailedPreconditionError, match="starts at row 500, not 0"):
        reshard([str(dirs[1])], [str(tmp_path / "u")])
    with pytest.raises(FailedPreconditionError, match="is not empty"):
        reshard([str(dirs[0])], [str(dirs[1])])
    # The command line says so and exits 3.
    assert main(["reshard", "--from", str(dirs[1]), "--to", str(tmp_path / "v")]) == 3


def test_a_failed_reshard_leaves_its_targets_as_it_found_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "s"
    with daemon_thread(source) as daemon, EngramClient(daemon.address) as client:
        client.create_table("adam", ROWS, DIM, optimizer="adam")
        client.push("adam", np.array([1, 999], np.uint64), np.ones((2, DIM), np.float32))
        client.checkpoint()
    targets = [tmp_path / "out" / "a", tmp_path / "out" / "b"]
    targets[1].mkdir(parents=True)  # an empty directory given as a target
    # Duplicates were opened twice: "another daemon (this one) is using data directory".
    with pytest.raises(InvalidArgumentError, match="targets name one directory twice"):
        reshard([str(source)], [str(targets[0]), str(tmp_path / "out" / "." / "a")])

    real_checkpoint = StoreEngine.checkpoint
    calls = []

    def full_disk_on_the_second(engine: StoreEngine, full: bool = False) -> Any:
        calls.append(engine.data_dir)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_checkpoint(engine, full)

    monkeypatch.setattr(StoreEngine, "checkpoint", full_disk_on_the_second)
    with pytest.raises(OSError, match="No space left"):
        reshard([str(source)], [str(t) for t in targets])
    # The first target was complete, the second not: neither was left half made, so the
    # same command can run again (a non-empty target is refused).
    assert not targets[0].exists() and list(targets[1].iterdir()) == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b"]  # no hidden stage left
    monkeypatch.setattr(StoreEngine, "checkpoint", real_checkpoint)
    reshard([str(source)], [str(t) for t in targets])
    with daemon_thread(targets[1]) as daemon, EngramClient(daemon.address) as client:
        assert client.describe("adam").step == 1
        assert client.describe("adam").num_rows == ROWS - ROWS // 2
