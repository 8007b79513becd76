"""EngramClient.batch: pushes then lookups, one call per daemon, the same results as the
separate calls, through shared memory and through messages, on one daemon or several."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from daemon import daemon_thread

from client import EngramClient
from store.errors import OutOfRangeError

ROWS, DIM = 2000, 8


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("shared_memory", [True, False])
def test_a_batch_gives_what_separate_pushes_and_lookups_give(
    tmp_path: Path, shm: Path, shards: int, shared_memory: bool
) -> None:
    with ExitStack() as stack:
        addresses = [
            stack.enter_context(
                daemon_thread(tmp_path / f"d{i}", shared_buffer_dir=str(shm))
            ).address
            for i in range(shards)
        ]
        client = stack.enter_context(
            EngramClient(addresses, shared_memory=shared_memory, shared_memory_dir=str(shm))
        )
        for table in ("a", "b", "twin-a", "twin-b"):
            optimizer = "adam" if table.endswith("a") else "sgd"
            client.create_table(table, ROWS, DIM, optimizer=optimizer, lr=0.05, seed=7)
        rng = np.random.default_rng(0)
        for step in range(3):
            pushes = []
            for table in ("a", "b"):
                keys = np.unique(rng.integers(0, ROWS, 300))
                pushes.append((table, keys, rng.standard_normal((len(keys), DIM), np.float32)))
            lookups = [("a", rng.integers(0, ROWS, (4, 50))), ("b", rng.integers(0, 10, 7))]
            result = client.batch(pushes, lookups, return_rows=True)
            expected_pushes = [
                client.push(f"twin-{t}", k, g, return_rows=True) for t, k, g in pushes
            ]
            for got, want in zip(result.pushes, expected_pushes, strict=True):
                assert (got.rows, got.step, got.duplicate) == (want.rows, step + 1, False)
                np.testing.assert_array_equal(got.updated_rows, want.updated_rows)
            for rows, (table, keys) in zip(result.lookups, lookups, strict=True):
                assert rows.shape == (*keys.shape, DIM)
                np.testing.assert_array_equal(rows, client.lookup(f"twin-{table}", keys))
        everything = np.arange(ROWS)
        np.testing.assert_array_equal(
            client.lookup("a", everything), client.lookup("twin-a", everything)
        )


def test_a_batch_checks_its_arguments(tmp_path: Path) -> None:
    with (
        daemon_thread(tmp_path / "d") as d,
        EngramClient(d.address) as client,
    ):
        client.create_table("t", ROWS, DIM)
        with pytest.raises(ValueError, match="a push to 't' has no keys"):
            client.batch([("t", [], np.zeros((0, DIM), np.float32))])
        with pytest.raises(ValueError, match="grads"):
            client.batch([("t", [1, 2], np.zeros((3, DIM), np.float32))])
        # Errors name the entry: the keys of the second push, the third lookup.
        with pytest.raises(TypeError, match=r"pushes\[1\]: keys must hold integers"):
            client.batch([("t", [1], np.ones((1, DIM))), ("t", [1.5], np.ones((1, DIM)))])
        with pytest.raises(OutOfRangeError, match=r"lookups\[2\]: keys\[1\] = -1 is negative"):
            client.batch(lookups=[("t", [1]), ("t", [2]), ("t", [3, -1])])
        with pytest.raises(ValueError, match=r"pushes\[0\] grads has shape \(1, 3\)"):
            client.batch([("t", [1], np.ones((1, 3)))])
        assert client.describe("t").step == 0
        result = client.batch(lookups=[("t", [])])
        assert result.pushes == [] and result.lookups[0].shape == (0, DIM)
