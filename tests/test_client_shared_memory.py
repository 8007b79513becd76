"""EngramClient moves rows through shared memory with daemons on this machine, and through
messages with daemons that cannot share it."""

from __future__ import annotations

import errno
import logging
import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from daemon import daemon_thread

from client import EngramClient
from client.shared_memory import SharedBufferPool, is_local

ROWS, DIM = 3000, 16


def client_files(shm: Path) -> list[str]:
    return sorted(p.name for p in shm.iterdir() if p.name.startswith(f"engram-{os.getpid()}-"))


def train(client: EngramClient, table: str, seed: int) -> np.ndarray:
    """A few pushes with repeated keys; returns every row afterwards."""
    rng = np.random.default_rng(seed)
    client.create_table(table, ROWS, DIM, optimizer="adam", lr=0.05)
    for _ in range(4):
        keys = rng.integers(0, ROWS, 500)
        client.push(table, keys, rng.standard_normal((500, DIM)).astype(np.float32))
    return client.lookup(table, np.arange(ROWS))


@pytest.mark.parametrize("shards", [1, 3])
def test_shared_memory_gives_the_same_rows_as_messages(
    tmp_path: Path, shm: Path, shards: int
) -> None:
    with ExitStack() as stack:
        daemons = [
            stack.enter_context(daemon_thread(tmp_path / f"d{i}", shared_buffer_dir=str(shm)))
            for i in range(shards)
        ]
        addresses = [d.address for d in daemons]
        shared = stack.enter_context(
            EngramClient(addresses, shared_memory=True, shared_memory_dir=str(shm))
        )
        messages = stack.enter_context(EngramClient(addresses, shared_memory=False))
        through_shared = train(shared, "a", seed=1)
        assert client_files(shm), "the shared-memory client made no buffer"
        through_messages = train(messages, "b", seed=1)
        np.testing.assert_array_equal(through_shared, through_messages)
        keys = np.array([[5, ROWS - 1], [0, 5]])
        np.testing.assert_array_equal(shared.lookup("a", keys), messages.lookup("a", keys))
        assert shared.lookup("a", []).shape == messages.lookup("a", []).shape == (0, DIM)
        assert shared.describe("a").step == 4
        shared.close()
        assert client_files(shm) == [], "close() leaves no buffer behind"


@pytest.mark.parametrize("daemon_dir", ["", "elsewhere"])
def test_a_daemon_that_cannot_share_memory_gets_messages(
    tmp_path: Path, shm: Path, daemon_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Shared buffers off, or the daemon looks in another directory than the client writes.
    if daemon_dir:
        (tmp_path / daemon_dir).mkdir()
        daemon_dir = str(tmp_path / daemon_dir)
    with (
        daemon_thread(tmp_path / "data", shared_buffer_dir=daemon_dir) as d,
        EngramClient(d.address, shared_memory=True, shared_memory_dir=str(shm)) as client,
        caplog.at_level(logging.INFO, logger="client.transfer"),
    ):
        client.create_table("t", ROWS, DIM, optimizer="sgd", lr=1.0)
        before = client.lookup("t", [7])
        # The first push is refused as a shared buffer, then sent once as a message.
        result = client.push("t", [7], np.ones((1, DIM), np.float32))
        assert (result.step, result.duplicate) == (1, False)
        np.testing.assert_allclose(client.lookup("t", [7]), before - 1.0, rtol=1e-6)
        assert "sending rows in messages" in caplog.text
        assert client.describe("t").step == 1


def test_loopback_addresses_are_local() -> None:
    for address in ("127.0.0.1:5", "127.9.9.9:5", "localhost:50051", "[::1]:5", "unix:/s"):
        assert is_local(address), address
    for address in ("10.0.0.2:5", "store.example.com:5", "[2001:db8::1]:5"):
        assert not is_local(address), address


def test_buffers_are_lent_to_one_caller_at_a_time_and_grow(shm: Path) -> None:
    pool = SharedBufferPool(str(shm))
    with pool.lease(100) as first, pool.lease(100) as second:
        assert first.path != second.path
        first.view(np.dtype(np.uint8), (100,))[:] = 1
        assert not second.view(np.dtype(np.uint8), (100,)).any()
    with pool.lease(100) as again:
        assert again.path in (first.path, second.path), "a free buffer is reused"
    with pool.lease(1 << 20) as large:
        assert large.capacity >= 1 << 20
    assert len(client_files(shm)) == 2
    pool.keep_bytes = 1 << 20
    with pool.lease(2 << 20):
        assert len(client_files(shm)) == 2
    assert len(client_files(shm)) == 1, "a buffer over keep_bytes is removed after use"
    pool.close()
    assert client_files(shm) == []


@pytest.mark.parametrize("shared_memory", [True, False])
def test_a_push_can_return_the_rows_it_left(tmp_path: Path, shm: Path, shared_memory: bool) -> None:
    with ExitStack() as stack:
        daemons = [
            stack.enter_context(daemon_thread(tmp_path / f"d{i}", shared_buffer_dir=str(shm)))
            for i in range(3)
        ]
        client = stack.enter_context(
            EngramClient(
                [d.address for d in daemons],
                shared_memory=shared_memory,
                shared_memory_dir=str(shm),
            )
        )
        client.create_table("t", ROWS, DIM, optimizer="adagrad", lr=0.1)
        keys = np.array([5, ROWS - 1, 5, 1500])  # every shard, one key twice
        grads = np.random.default_rng(3).standard_normal((4, DIM)).astype(np.float32)
        result = client.push("t", keys, grads, return_rows=True)
        assert result.updated_rows is not None
        np.testing.assert_array_equal(result.updated_rows, client.lookup("t", keys))
        assert client.push("t", keys, grads).updated_rows is None
        assert client.push_async("t", keys, grads, return_rows=True).result().step == 3


def test_no_room_for_a_buffer_means_messages(
    tmp_path: Path, shm: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # A full /dev/shm: the buffer cannot be reserved, so nothing is ever written into it.
    monkeypatch.setattr("client.shared_memory.os.posix_fallocate", full)
    with (
        daemon_thread(tmp_path / "data", shared_buffer_dir=str(shm)) as d,
        EngramClient(d.address, shared_memory=True, shared_memory_dir=str(shm)) as client,
        caplog.at_level(logging.INFO, logger="client.transfer"),
    ):
        client.create_table("t", ROWS, DIM, optimizer="sgd", lr=1.0)
        before = client.lookup("t", [1, 2])
        client.push("t", [1], np.ones((1, DIM), np.float32))
        np.testing.assert_allclose(client.lookup("t", [1]), before[:1] - 1.0, rtol=1e-6)
        assert "No space left on device" in caplog.text
        assert client_files(shm) == []
