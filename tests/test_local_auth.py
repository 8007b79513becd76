"""A same-machine daemon keeps other local users out by default (store/local_token.py): on
loopback with no tokens it takes only a token that its own user's clients read from a file
no other user can, so another user is refused before any call runs, and nothing changes;
`--allow-unauthenticated` keeps the open loopback daemon of before."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest
from daemon import daemon_process
from google.protobuf.message import Message
from store_helpers import spec

from client import EngramClient
from client.errors import TokenRefusedError
from store import local_token
from store._proto.engram.store.v1 import store_pb2 as pb
from store._proto.engram.store.v1 import store_pb2_grpc as pb_grpc

NOBODY = 65534


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={**os.environ, "HOME": "/nonexistent"},
    )


def test_the_daemons_user_connects_with_no_token_given(tmp_path: Path) -> None:
    with daemon_process(tmp_path / "data") as (d, _):
        published = local_token.published_path(int(d.address.rsplit(":", 1)[1]))
        assert stat.S_IMODE(published.stat().st_mode) == 0o600
        assert stat.S_IMODE(published.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "data" / "local-token").stat().st_mode) == 0o600
        token = published.read_text().strip()
        with EngramClient(d.address) as client:
            client.create_table("t", 10, 4)
        listed = subprocess.run(
            [sys.executable, "-m", "engram_cli", "tables", "--address", d.address],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert listed.returncode == 0 and "t" in listed.stdout, listed.stderr
        bare = pb_grpc.EngramStoreStub(grpc.insecure_channel(d.address))
        with pytest.raises(grpc.RpcError) as refused:
            bare.ListTables(pb.ListTablesRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not published.exists(), "a clean stop withdraws the published token"
    with daemon_process(tmp_path / "data") as (d, _):
        port = int(d.address.rsplit(":", 1)[1])
        assert local_token.published_path(port).read_text().strip() == token, (
            "the token lives as long as the data directory"
        )


def grpc_call_as_nobody(address: str, method: str, request: Message, work: Path) -> str:
    """Calls `method` of the store's service as user nobody, with curl speaking gRPC over
    HTTP/2 (this checkout's Python may lie where only root can read it); the grpc-status the
    daemon answered."""
    body = request.SerializeToString()
    frame = work / f"{method}.bin"
    frame.write_bytes(b"\0" + struct.pack(">I", len(body)) + body)
    frame.chmod(0o644)
    answered = as_nobody(
        "curl", "-sS", "--http2-prior-knowledge", "-X", "POST",
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "--data-binary", f"@{frame}", "-D", "-", "-o", "/dev/null",
        f"http://{address}/engram.store.v1.EngramStore/{method}",
    )  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    status = [line for line in answered.stdout.splitlines() if line.startswith("grpc-status:")]
    return status[0].split(":", 1)[1].strip() if status else "none"


def test_another_local_user_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("acting as a second user needs root")
    if shutil.which("curl") is None:
        pytest.skip("the second user's gRPC client here is curl, which is not installed")
    work = Path(tempfile.mkdtemp(prefix="engram-nobody-"))
    work.chmod(0o755)
    try:
        with daemon_process(tmp_path / "data") as (d, _):
            d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=100, dim=4)))
            port = int(d.address.rsplit(":", 1)[1])
            read = as_nobody("cat", str(local_token.published_path(port)))
            assert read.returncode != 0, "another user read the published token"
            calls: dict[str, Message] = {
                "ListTables": pb.ListTablesRequest(),
                "DropTable": pb.DropTableRequest(name="t"),
                "Checkpoint": pb.CheckpointRequest(),
                "Push": pb.PushRequest(table="t"),
            }
            for method, request in calls.items():
                status = grpc_call_as_nobody(d.address, method, request, work)
                assert status == str(grpc.StatusCode.UNAUTHENTICATED.value[0]), method
            names = [t.spec.name for t in d.stub.ListTables(pb.ListTablesRequest()).tables]
            assert names == ["t"]
            assert not d.stub.ListCheckpoints(pb.ListCheckpointsRequest()).checkpoints
            assert d.stub.DescribeTable(pb.DescribeTableRequest(name="t")).step == 0
    finally:
        shutil.rmtree(work)


def test_allow_unauthenticated_keeps_a_loopback_daemon_open(tmp_path: Path) -> None:
    with daemon_process(tmp_path / "data", "--allow-unauthenticated") as (d, _):
        port = int(d.address.rsplit(":", 1)[1])
        assert not local_token.published_path(port).exists()
        bare = pb_grpc.EngramStoreStub(grpc.insecure_channel(d.address))
        bare.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=10, dim=4)))
    assert not (tmp_path / "data" / "local-token").exists()


def test_explicit_tokens_replace_the_local_one(tmp_path: Path) -> None:
    writer = "w" * 32
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read-write {writer}\n")
    with daemon_process(tmp_path / "data", "--auth-tokens", str(tokens)) as (d, _):
        port = int(d.address.rsplit(":", 1)[1])
        assert not local_token.published_path(port).exists()
        with EngramClient(d.address) as anonymous, pytest.raises(TokenRefusedError):
            anonymous.tables()
