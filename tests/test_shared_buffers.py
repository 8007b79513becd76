"""Same-machine clients keep bulk rows off the wire through shared buffers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from daemon import Daemon, daemon_thread
from store_helpers import keys, push, raw_rows, rows_of, spec

from store import _native
from store._proto.engram.store.v1 import store_pb2 as pb

ROWS, DIM = 1000, 8


@pytest.fixture
def daemon(tmp_path: Path, shm: Path) -> Iterator[Daemon]:
    with daemon_thread(tmp_path / "data", shared_buffer_dir=str(shm)) as d:
        for name in ("a", "b"):
            d.stub.CreateTable(pb.CreateTableRequest(spec=spec(name, num_rows=ROWS, dim=DIM)))
        yield d


HEADER = _native.BUFFER_HEADER_BYTES
TOKENS: dict[str, bytes] = {}


def buffer(path: Path, size: int) -> np.memmap:
    """A buffer as clients make them: a header with a fresh token, then `size` bytes (the
    array returned)."""
    token = os.urandom(_native.BUFFER_TOKEN_BYTES)
    TOKENS[str(path)] = token
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, HEADER + size)
        f.write(_native.BUFFER_MAGIC + token)
    return np.memmap(path, dtype=np.uint8, mode="r+", offset=HEADER)


def at(path: str | Path, offset: int = 0) -> pb.SharedBuffer:
    """Bytes at `offset` of the data of buffer `path`, with its token."""
    token = TOKENS.get(str(path), b"")
    return pb.SharedBuffer(path=str(path), offset=HEADER + offset, token=token)


def test_lookup_into_a_buffer_matches_the_streamed_rows(daemon: Daemon, shm: Path) -> None:
    query = np.array([[5, 999, 5], [0, 1, 2]], np.uint64)
    memory = buffer(shm / "engram-rows", 64 + query.size * DIM * 4)
    reply = list(
        daemon.stub.Lookup(
            pb.LookupRequest(
                table="a",
                keys=keys(query),
                out=at(str(shm / "engram-rows"), 64),
            )
        )
    )
    assert len(reply) == 1 and reply[0].in_shared_buffer and not reply[0].rows.data
    assert list(reply[0].result_shape) == [2, 3, DIM]
    got = np.frombuffer(memory, np.float32, query.size * DIM, 64).reshape(2, 3, DIM)
    np.testing.assert_array_equal(
        got, rows_of(daemon.stub.Lookup(pb.LookupRequest(table="a", keys=keys(query))))
    )


def test_push_from_a_buffer_matches_a_push_of_bytes(daemon: Daemon, shm: Path) -> None:
    grads = np.random.default_rng(0).standard_normal((4, DIM)).astype(np.float32)
    memory = buffer(shm / "engram-grads", 16 + grads.nbytes)
    memory[16:] = grads.view(np.uint8).reshape(-1)
    memory.flush()
    request = pb.PushRequest(
        table="a",
        keys=keys([3, 7, 3, 9]),
        grads=pb.Array(dtype="float32", shape=[4, DIM]),
        grads_buffer=at(str(shm / "engram-grads"), 16),
    )
    assert daemon.stub.Push(request).rows == 3
    daemon.stub.Push(push("b", [3, 7, 3, 9], grads))
    everything = keys(range(ROWS))
    assert raw_rows(daemon.stub.Lookup(pb.LookupRequest(table="a", keys=everything))) == raw_rows(
        daemon.stub.Lookup(pb.LookupRequest(table="b", keys=everything))
    )


def lookup_into(daemon: Daemon, path: str, offset: int = 0) -> None:
    list(daemon.stub.Lookup(pb.LookupRequest(table="a", keys=keys([1, 2]), out=at(path, offset))))


def test_buffers_the_daemon_must_not_open_are_refused(
    daemon: Daemon, shm: Path, tmp_path: Path
) -> None:
    buffer(shm / "engram-small", 10)
    buffer(shm / "other", 1000)
    buffer(tmp_path / "engram-outside", 1000)
    os.symlink(tmp_path / "engram-outside", shm / "engram-link")
    with open(shm / "engram-sparse", "wb") as f:
        f.truncate(1 << 20)
    cases = {
        str(shm / "engram-small"): "holds 74 bytes, too few for 64 bytes at offset 64",
        str(shm / "engram-sparse"): "is sparse; allocate it whole",
        str(shm / "other"): "must be a file named engram-*",
        str(tmp_path / "engram-outside"): "must be a file named engram-*",
        str(shm / "engram-link"): "cannot open shared buffer",
        str(shm / "engram-missing"): "cannot open shared buffer",
        str(shm / ".." / "shm" / "engram-small"): "must be a file named engram-*",
    }
    if os.getuid() == 0:
        buffer(shm / "engram-foreign", 1000)
        os.chown(shm / "engram-foreign", 65534, 65534)
        cases[str(shm / "engram-foreign")] = "not owned by the daemon's user"
    for path, message in cases.items():
        with pytest.raises(grpc.RpcError) as error:
            lookup_into(daemon, path)
        # Too small is the client's mistake; the rest, buffers this daemon cannot share.
        expected = (
            grpc.StatusCode.INVALID_ARGUMENT
            if "too few" in message
            else grpc.StatusCode.FAILED_PRECONDITION
        )
        assert error.value.code() == expected, path
        assert message in error.value.details(), (path, error.value.details())
    assert (tmp_path / "engram-outside").read_bytes()[HEADER:] == b"\0" * 1000


def test_only_the_creator_of_a_buffer_can_name_it(daemon: Daemon, shm: Path) -> None:
    """The daemon reads and writes buffers with its own rights: a request must show it could
    read the file (its token), and no buffer may be another file under a second name."""
    memory = buffer(shm / "engram-victim", 4096)
    memory[:] = 7
    memory.flush()
    path = str(shm / "engram-victim")
    guesses = {
        "no token": pb.SharedBuffer(path=path, offset=HEADER),
        "a wrong token": pb.SharedBuffer(path=path, offset=HEADER, token=bytes(16)),
        "a short token": pb.SharedBuffer(path=path, offset=HEADER, token=TOKENS[path][:8]),
    }
    for what, guess in guesses.items():
        with pytest.raises(grpc.RpcError) as error:
            list(daemon.stub.Lookup(pb.LookupRequest(table="a", keys=keys([1, 2]), out=guess)))
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION, what
        assert "does not hold the request's token" in error.value.details(), what
        with pytest.raises(grpc.RpcError):
            daemon.stub.Push(
                pb.PushRequest(
                    table="a",
                    keys=keys([1]),
                    grads=pb.Array(dtype="float32", shape=[1, DIM]),
                    grads_buffer=guess,
                )
            )
    assert (memory == 7).all(), "the buffer was not written"
    assert daemon.stub.DescribeTable(pb.DescribeTableRequest(name="a")).step == 0

    # Named twice in one request, each naming needs the token.
    rows_at = pb.SharedBuffer(path=path, offset=HEADER + 64, token=bytes(16))
    with pytest.raises(grpc.RpcError) as error:
        list(
            daemon.stub.Lookup(
                pb.LookupRequest(
                    table="a",
                    keys=pb.Array(dtype="uint64", shape=[1]),
                    keys_buffer=at(path),
                    out=rows_at,
                )
            )
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # The header itself is not a range a request may name (it would read the token back).
    inside = pb.SharedBuffer(path=path, offset=8, token=TOKENS[path])
    with pytest.raises(grpc.RpcError) as error:
        list(daemon.stub.Lookup(pb.LookupRequest(table="a", keys=keys([1]), out=inside)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start after its 64-byte header" in error.value.details()

    # A hard link makes a buffer another file's second name: refused, token or not.
    os.link(path, shm / "engram-second-name")
    with pytest.raises(grpc.RpcError) as error:
        lookup_into(daemon, path)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has 2 links" in error.value.details()
    assert (memory == 7).all()


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    nobody = 65534
    return subprocess.run(
        command, user=nobody, group=nobody, extra_groups=[], capture_output=True, text=True
    )


def test_a_second_user_cannot_have_the_daemon_touch_a_buffer_it_cannot_open(
    daemon: Daemon, shm: Path
) -> None:
    """Another local user can name the daemon user's private buffer but not read it, so it
    cannot know the token, and every request it could send is refused untouched."""
    if os.getuid() != 0:
        pytest.skip("acting as a second user needs root")
    memory = buffer(shm / "engram-private", 4096)
    memory[:] = 7
    memory.flush()
    path = str(shm / "engram-private")
    os.chmod(path, 0o600)
    for directory in (shm, *shm.parents):  # the other user reaches the file, cannot open it
        os.chmod(directory, os.stat(directory).st_mode | 0o005)
    read = as_nobody("cat", path)
    assert read.returncode != 0 and "Permission denied" in read.stderr
    listed = as_nobody("ls", str(shm))
    assert "engram-private" in listed.stdout, "the name alone is no secret"
    # What that user can send: the path, with any token but the file's.
    for token in (b"", bytes(16), os.urandom(16)):
        out = pb.SharedBuffer(path=path, offset=HEADER, token=token)
        with pytest.raises(grpc.RpcError) as error:
            list(daemon.stub.Lookup(pb.LookupRequest(table="a", keys=keys([1, 2]), out=out)))
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        grads = pb.Array(dtype="float32", shape=[1, DIM])
        with pytest.raises(grpc.RpcError) as error:
            daemon.stub.Push(
                pb.PushRequest(table="a", keys=keys([1]), grads=grads, grads_buffer=out)
            )
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (memory == 7).all(), "the daemon wrote the buffer for a user who cannot"
    assert daemon.stub.DescribeTable(pb.DescribeTableRequest(name="a")).step == 0


def test_a_daemon_can_refuse_shared_buffers(tmp_path: Path, shm: Path) -> None:
    buffer(shm / "engram-rows", 1000)
    with daemon_thread(tmp_path / "data", shared_buffer_dir="") as d:
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("a", num_rows=ROWS, dim=DIM)))
        with pytest.raises(grpc.RpcError) as error:
            lookup_into(d, str(shm / "engram-rows"))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_shared_buffer_directory_that_is_missing_is_reported_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-dir"
    with (
        caplog.at_level("WARNING", logger="store.server"),
        daemon_thread(tmp_path / "data", shared_buffer_dir=str(missing)),
    ):
        pass
    assert f"--shared-buffer-dir {missing} is not a directory" in caplog.text


def test_keys_can_share_a_buffer_with_the_rows(daemon: Daemon, shm: Path) -> None:
    query = np.array([[5, 999, 5], [0, 1, 2]], np.int64)
    memory = buffer(shm / "engram-both", 64 + query.size * DIM * 4)
    memory[: query.nbytes] = query.view(np.uint8).reshape(-1)
    path = str(shm / "engram-both")
    reply = list(
        daemon.stub.Lookup(
            pb.LookupRequest(
                table="a",
                keys=pb.Array(dtype="int64", shape=[2, 3]),
                keys_buffer=at(path),
                out=at(path, 64),
            )
        )
    )
    assert list(reply[0].result_shape) == [2, 3, DIM]
    got = np.frombuffer(memory, np.float32, query.size * DIM, 64).reshape(2, 3, DIM)
    streamed = daemon.stub.Lookup(pb.LookupRequest(table="a", keys=keys(query)))
    np.testing.assert_array_equal(got, rows_of(streamed))

    grads = np.random.default_rng(1).standard_normal((4, DIM)).astype(np.float32)
    pushed = np.array([3, 7, 3, 9], np.uint64)
    memory[:32] = pushed.view(np.uint8)
    memory[64 : 64 + grads.nbytes] = grads.view(np.uint8).reshape(-1)
    memory.flush()
    request = pb.PushRequest(
        table="a",
        keys=pb.Array(dtype="uint64", shape=[4]),
        keys_buffer=at(path),
        grads=pb.Array(dtype="float32", shape=[4, DIM]),
        grads_buffer=at(path, 64),
    )
    assert daemon.stub.Push(request).rows == 3
    daemon.stub.Push(push("b", pushed, grads))
    everything = keys(range(ROWS))
    assert raw_rows(daemon.stub.Lookup(pb.LookupRequest(table="a", keys=everything))) == raw_rows(
        daemon.stub.Lookup(pb.LookupRequest(table="b", keys=everything))
    )


def test_bad_key_buffers_are_refused_and_change_nothing(daemon: Daemon, shm: Path) -> None:
    memory = buffer(shm / "engram-keys", 4096)
    memory[:8] = np.array([-3], np.int64).view(np.uint8)
    memory.flush()
    keys_at = at(str(shm / "engram-keys"), 0)
    cases = [
        (
            pb.Array(dtype="uint64", shape=[1], data=bytes(8)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "keys carry data and a keys_buffer",
        ),
        (pb.Array(dtype="int64", shape=[1]), grpc.StatusCode.INVALID_ARGUMENT, "is negative"),
        (pb.Array(dtype="float32", shape=[1]), grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
        (
            pb.Array(dtype="uint64", shape=[1 << 27]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "exceeds the server's limit",
        ),
    ]
    for key_array, code, message in cases:
        lookup = pb.LookupRequest(table="a", keys=key_array, keys_buffer=keys_at)
        push_request = pb.PushRequest(
            table="a",
            keys=key_array,
            keys_buffer=keys_at,
            grads=pb.Array(dtype="float32", shape=[key_array.shape[0], DIM]),
            grads_buffer=at(keys_at.path, 64),
        )
        for request in (lookup, push_request):
            with pytest.raises(grpc.RpcError) as error:
                if isinstance(request, pb.LookupRequest):
                    list(daemon.stub.Lookup(request))
                else:
                    daemon.stub.Push(request)
            assert error.value.code() == code, message
            assert message in error.value.details(), error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        list(
            daemon.stub.Lookup(
                pb.LookupRequest(
                    table="a", keys=pb.Array(dtype="uint64", shape=[1000]), keys_buffer=keys_at
                )
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "too few" in error.value.details()
    info = daemon.stub.DescribeTable(pb.DescribeTableRequest(name="a"))
    assert (info.step, info.written_rows) == (0, 0)


def test_a_push_can_answer_with_the_rows_it_left(daemon: Daemon, shm: Path) -> None:
    for name in ("adam_a", "adam_b"):
        daemon.stub.CreateTable(
            pb.CreateTableRequest(spec=spec(name, num_rows=ROWS, dim=DIM, optimizer="adam"))
        )
    pushed = [3, 7, 3, 9]
    grads = np.random.default_rng(2).standard_normal((4, DIM)).astype(np.float32)

    def rows_now(table: str) -> np.ndarray:
        return rows_of(daemon.stub.Lookup(pb.LookupRequest(table=table, keys=keys(pushed))))

    # In the message: float32 rows of every key, repeats included.
    reply = daemon.stub.Push(push("adam_a", pushed, grads, return_rows=True))
    assert (reply.rows, reply.step) == (3, 1)
    assert list(reply.updated_rows.shape) == [4, DIM]
    returned = np.frombuffer(reply.updated_rows.data, "<f4").reshape(4, DIM)
    np.testing.assert_array_equal(returned, rows_now("adam_a"))
    # Over the gradients in a shared buffer; the same push as a plain one.
    memory = buffer(shm / "engram-grads", grads.nbytes)
    memory[:] = grads.view(np.uint8).reshape(-1)
    memory.flush()
    in_buffer = pb.PushRequest(
        table="adam_b",
        keys=keys(pushed),
        grads=pb.Array(dtype="float32", shape=[4, DIM]),
        grads_buffer=at(str(shm / "engram-grads")),
        return_rows=True,
        client_id="c",
        sequence=1,
    )
    assert not daemon.stub.Push(in_buffer).HasField("updated_rows")
    after = np.frombuffer(memory, np.float32).reshape(4, DIM).copy()
    np.testing.assert_array_equal(after, rows_now("adam_b"))
    np.testing.assert_array_equal(after, returned)
    # A retried push changes nothing and answers with the rows as they are now.
    daemon.stub.Push(push("adam_b", [9], grads[:1]))
    memory[:] = grads.view(np.uint8).reshape(-1)
    memory.flush()
    again = daemon.stub.Push(in_buffer)
    assert again.duplicate and again.step == 2
    np.testing.assert_array_equal(
        np.frombuffer(memory, np.float32).reshape(4, DIM), rows_now("adam_b")
    )
