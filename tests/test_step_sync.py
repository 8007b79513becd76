"""Step-synchronous pushes: the ranks of a data-parallel job push their shares of a step and
the daemon applies it once, with DDP's reduction, when every rank has pushed; lookups never
see part of a step; a missing rank fails the step for every rank and nothing is applied."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon import daemon_process, daemon_thread

from client import (
    DataParallelStepError,
    EngramClient,
    InvalidRequestError,
    PreconditionFailedError,
    RequestTooLargeError,
    SyncStep,
)

# Timing-sensitive (bounds, timeouts): run alone, after the parallel run (scripts/test.sh).
pytestmark = pytest.mark.serial

DIM = 4


@pytest.fixture
def address(tmp_path: Path) -> Iterator[str]:
    with daemon_thread(tmp_path / "data") as daemon:
        yield daemon.address


def new_table(client: EngramClient, name: str, optimizer: str = "sgd", rows: int = 100) -> None:
    client.create_table(name, rows, DIM, init="zeros", optimizer=optimizer, lr=1.0)


def ranks_push(
    address: str | list[str],
    pushes: list[Callable[[EngramClient], Any]],
    shared_memory: bool = True,
) -> list[Any]:
    """Runs each rank's push on a thread and client of its own; the results in rank order
    (an exception where a rank's push raised)."""
    clients = [EngramClient(address, shared_memory=shared_memory) for _ in pushes]
    try:
        with ThreadPoolExecutor(len(pushes)) as pool:
            futures = [pool.submit(push, c) for push, c in zip(pushes, clients, strict=True)]
            return [f.exception() or f.result() for f in futures]
    finally:
        for client in clients:
            client.close()


def share(rank: int, world: int, step: int = 1, **options: Any) -> SyncStep:
    return SyncStep(step, rank, world, **options)


def pushing(
    rank: int,
    world: int,
    keys: np.ndarray | None = None,
    grads: np.ndarray | None = None,
    after_s: float = 0.0,
    **options: Any,
) -> Callable[[EngramClient], Any]:
    """Rank `rank`'s push of its share (by default `KEYS` and `GRADS` of rank % 2) to table
    "t", `after_s` seconds after it is started."""

    def push(client: EngramClient) -> Any:
        time.sleep(after_s)
        return client.push(
            "t",
            KEYS[rank % 2] if keys is None else keys,
            GRADS[rank % 2] if grads is None else grads,
            sync=share(rank, world, **options),
        )

    return push


KEYS = [np.array([1, 2, 2], np.uint64), np.array([2, 3], np.uint64)]
GRADS = [
    np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM) + 1,
    np.full((2, DIM), 0.5, np.float32),
]


def expected_rows(reduction: str) -> dict[int, np.ndarray]:
    """Rows 1, 2, 3 after one SGD step (lr 1) of the ranks' gradients, from zeros."""
    total = {1: GRADS[0][0], 2: GRADS[0][1] + GRADS[0][2] + GRADS[1][0], 3: GRADS[1][1]}
    scale = 0.5 if reduction == "mean" else 1.0
    return {k: -scale * v for k, v in total.items()}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared", "messages"])
def test_a_step_is_applied_once_with_its_ranks_reduced(
    address: str, reduction: str, shared_memory: bool
) -> None:
    with EngramClient(address) as client:
        new_table(client, "t")
        results = ranks_push(
            address, [pushing(r, 2, reduction=reduction) for r in range(2)], shared_memory
        )
        assert [r.step for r in results] == [1, 1]
        assert client.describe("t").step == 1
        rows = client.lookup("t", np.array([1, 2, 3], np.uint64))
        for i, key in enumerate((1, 2, 3)):
            np.testing.assert_allclose(rows[i], expected_rows(reduction)[key], rtol=1e-6)


def test_lookups_see_nothing_of_a_step_until_every_rank_pushed(address: str) -> None:
    with EngramClient(address) as client:
        new_table(client, "t")
        first = EngramClient(address)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(first.push, "t", KEYS[0], GRADS[0], sync=share(0, 2))
            threading.Event().wait(0.3)
            assert not waiting.done()
            assert not client.lookup("t", KEYS[0]).any()
            assert client.describe("t").step == 0
            client.push("t", KEYS[1], GRADS[1], sync=share(1, 2))
            assert waiting.result(timeout=30).step == 1
        first.close()
        assert client.lookup("t", KEYS[0]).any()


def test_a_rank_that_pushes_twice_counts_once(address: str) -> None:
    with EngramClient(address) as client:
        new_table(client, "t")
        ranks_push(address, [pushing(0, 2), pushing(0, 2), pushing(1, 2, after_s=0.3)])
        rows = client.lookup("t", np.array([1, 2, 3], np.uint64))
        np.testing.assert_allclose(rows[1], expected_rows("mean")[2], rtol=1e-6)
        # Pushed again once applied: a duplicate, nothing changes.
        again = client.push("t", KEYS[0], GRADS[0], sync=share(0, 2))
        assert again.duplicate and again.step == 1
        np.testing.assert_array_equal(client.lookup("t", np.array([1, 2, 3], np.uint64)), rows)


def test_a_missing_rank_fails_the_step_for_every_rank_and_nothing_is_applied(
    address: str,
) -> None:
    with EngramClient(address) as client:
        new_table(client, "t")
        results = ranks_push(address, [pushing(r, 3, timeout_s=1) for r in (0, 2)])
        for result in results:
            assert isinstance(result, DataParallelStepError)
            assert "rank(s) 1 of 3 did not push" in str(result)
        assert client.describe("t").step == 0
        assert not client.lookup("t", np.arange(5, dtype=np.uint64)).any()
        # The step can be pushed afresh.
        results = ranks_push(address, [pushing(r, 2) for r in range(2)])
        assert [r.step for r in results] == [1, 1]


def test_bad_shares_are_refused_with_a_clear_error(address: str) -> None:
    with EngramClient(address) as client:
        new_table(client, "t")
        with pytest.raises(ValueError, match=r"rank must be in 0\.\.1"):
            client.push("t", KEYS[0], GRADS[0], sync=share(2, 2))
        with pytest.raises(ValueError, match="reduction must be one of"):
            client.push("t", KEYS[0], GRADS[0], sync=share(0, 2, reduction="max"))
        with pytest.raises(PreconditionFailedError, match="step 3 cannot be pushed before step 1"):
            client.push("t", KEYS[0], GRADS[0], sync=share(0, 1, step=3))
        with pytest.raises(RequestTooLargeError, match="serve --workers"):
            client.push("t", KEYS[0], GRADS[0], sync=share(0, 15))
        first, second = ranks_push(
            address, [pushing(0, 2, timeout_s=2), pushing(1, 3, after_s=0.3)]
        )
        assert isinstance(second, InvalidRequestError)
        assert "started with world size 2" in str(second)
        assert isinstance(first, DataParallelStepError)
        assert client.describe("t").step == 0


def test_a_batch_of_steps_reads_rows_after_the_whole_step(address: str) -> None:
    with EngramClient(address) as client:
        new_table(client, "a")
        new_table(client, "b", optimizer="adam")

        def rank(r: int) -> Callable[[EngramClient], Any]:
            return lambda c: c.batch(
                [("a", KEYS[r], GRADS[r]), ("b", KEYS[r], GRADS[r])],
                [("a", np.array([1, 2, 3], np.uint64))],
                sync=[share(r, 2), share(r, 2)],
            )

        results = ranks_push(address, [rank(0), rank(1)])
        for result in results:
            assert [p.step for p in result.pushes] == [1, 1]
            np.testing.assert_allclose(
                result.lookups[0], np.stack([expected_rows("mean")[k] for k in (1, 2, 3)])
            )
        assert client.describe("b").step == 1


def test_every_shard_waits_for_every_rank_even_without_its_keys(tmp_path: Path) -> None:
    with (
        daemon_thread(tmp_path / "one") as one,
        daemon_thread(tmp_path / "two") as two,
        EngramClient([one.address, two.address]) as client,
    ):
        new_table(client, "t", rows=100)  # rows 0-49 on one daemon, 50-99 on the other
        keys = [np.array([1, 2], np.uint64), np.array([60, 61], np.uint64)]
        grads = np.ones((2, DIM), np.float32)
        results = ranks_push(
            [one.address, two.address], [pushing(r, 2, keys[r], grads) for r in range(2)]
        )
        assert [r.step for r in results] == [1, 1]
        rows = client.lookup("t", np.array([1, 60], np.uint64))
        np.testing.assert_allclose(rows, -0.5)
        assert client.describe("t").step == 1


def test_a_restarted_daemon_resumes_after_the_last_applied_step(tmp_path: Path) -> None:
    for attempt in range(2):
        with daemon_thread(tmp_path / "data") as daemon, EngramClient(daemon.address) as client:
            if attempt == 0:
                new_table(client, "t")
                ranks_push(daemon.address, [pushing(r, 2) for r in range(2)])
                continue
            assert client.describe("t").step == 1
            assert client.push("t", KEYS[0], GRADS[0], sync=share(0, 2)).duplicate
            results = ranks_push(daemon.address, [pushing(r, 2, step=2) for r in range(2)])
            assert [r.step for r in results] == [2, 2]


def test_a_step_with_no_rows_on_a_shard_survives_a_kill(tmp_path: Path) -> None:
    """Both ranks' keys fall on the first shard: the second one's step moves with no row.
    Killed (SIGKILL) right after, that daemon comes back at that step, and the ranks go on
    with the next."""
    dirs = [tmp_path / "one", tmp_path / "two"]
    with daemon_process(dirs[0]) as (one, _), daemon_process(dirs[1]) as (two, second):
        addresses = [one.address, two.address]
        with EngramClient(addresses) as client:
            new_table(client, "t", rows=100)
        results = ranks_push(addresses, [pushing(r, 2) for r in range(2)])
        assert [r.step for r in results] == [1, 1]
        second.kill()
        second.wait()
    with daemon_process(dirs[0]) as (one, _), daemon_process(dirs[1]) as (two, _):
        addresses = [one.address, two.address]
        results = ranks_push(addresses, [pushing(r, 2, step=2) for r in range(2)])
        assert [r.step for r in results] == [2, 2]
        with EngramClient(addresses) as client:
            assert client.describe("t").step == 2
