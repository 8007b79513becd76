"""A follower daemon's link to its leader (`serve --follow ADDRESS`).

One thread asks the leader for the changes since the checkpoint the follower holds
(`ChangedRows`, which waits at the leader until a checkpoint is newer), receives the packs
into files beside the tables, and has the engine apply them; the follower's tables then
equal the leader's at that checkpoint. A lost connection or a leader that is down is
retried with backoff; the follower serves lookups from what it holds all the while, and
catches up with everything it missed when the leader is back.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from store import local_token
from store._proto.engram.store.v1 import store_pb2 as pb
from store._proto.engram.store.v1 import store_pb2_grpc as pb_grpc
from store.checkpoints import manifest_of_json
from store.conversions import packs_to_files
from store.engine import StoreEngine
from store.errors import InvalidArgumentError
from store.requests import ChangedPack, ChangedTable, Changes

log = logging.getLogger(__name__)

INCOMING = ".follow-incoming"


@dataclass(frozen=True)
class LeaderLink:
    """How to reach the leader: its address, a bearer token (a read-only one suffices) and
    TLS (the CA of its certificate; this daemon's certificate and key where the leader
    verifies clients)."""

    address: str
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_bytes: int = 64 << 20

    def channel(self) -> grpc.Channel:
        options = [("grpc.max_receive_message_length", self.max_message_bytes)]
        if not self.tls_ca:
            return grpc.insecure_channel(self.address, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(self.tls_ca).read_bytes(),
            private_key=Path(self.tls_key).read_bytes() if self.tls_key else None,
            certificate_chain=Path(self.tls_cert).read_bytes() if self.tls_cert else None,
        )
        return grpc.secure_channel(self.address, credentials, options=options)

    def metadata(self) -> list[tuple[str, str]]:
        # A leader on this machine given no token is read with its published local token.
        token = self.token or local_token.published_token(self.address)
        return [("authorization", f"Bearer {token}")] if token else []


class Follower:
    def __init__(
        self,
        engine: StoreEngine,
        leader: LeaderLink,
        wait_s: float = 30.0,
        max_retry_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.leader = leader
        self.wait_s = wait_s
        self.max_retry_s = max_retry_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self._channel = leader.channel()
        self._stub = pb_grpc.EngramStoreStub(self._channel)
        self._incoming = os.path.join(engine.data_dir, INCOMING)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._channel.close()  # ends a call waiting at the leader
        self._thread.join()

    def _run(self) -> None:
        retry_s = 0.1
        while not self._stop.is_set():
            try:
                self.catch_up()
                self.engine.follow_error = ""
                retry_s = 0.1
            except Exception as error:
                if self._stop.is_set():
                    return
                reason = _reason(error)
                if reason != self.engine.follow_error:
                    log.warning("catching up with %s failed: %s", self.leader.address, reason)
                self.engine.follow_error = reason
                self._stop.wait(retry_s)
                retry_s = min(retry_s * 2, self.max_retry_s)

    def catch_up(self) -> int:
        """Asks the leader once (waiting there up to `wait_s` for a newer checkpoint) and
        applies what it sends; returns the checkpoint held afterwards."""
        store_id, since = self.engine.follow_position()
        request = pb.ChangedRowsRequest(
            since_checkpoint=since, store_id=store_id, wait_ms=int(self.wait_s * 1000)
        )
        stream = self._stub.ChangedRows(
            request, timeout=self.wait_s + 600, metadata=self.leader.metadata()
        )
        shutil.rmtree(self._incoming, ignore_errors=True)
        os.makedirs(self._incoming)
        try:
            changes = receive_changes(stream, self._incoming)
            self.engine.apply_changes(changes)
        finally:
            shutil.rmtree(self._incoming, ignore_errors=True)
        return changes.checkpoint if changes.manifest is not None else since


def receive_changes(stream: Iterator[pb.ChangedRowsResponse], directory: str) -> Changes:
    """Reads a ChangedRows answer, writing each pack to a file of its own in `directory`."""
    first = next(stream, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgumentError("the leader's answer does not begin with a header")
    header = first.header
    manifest = (
        manifest_of_json(header.manifest_json, "the leader's manifest")
        if header.manifest_json
        else None
    )
    count = sum(len(t.packs) for t in header.tables)
    paths = [os.path.join(directory, f"{i}.pack") for i in range(count)]
    packs_to_files(header, stream, paths)
    packs = iter(paths)
    tables = [
        ChangedTable(
            t.name,
            t.reset,
            [
                ChangedPack(p.checkpoint, p.rows, p.step, p.bytes, p.crc32, next(packs))
                for p in t.packs
            ],
        )
        for t in header.tables
    ]
    return Changes(header.store_id, header.checkpoint, manifest, tables)


def _reason(error: Exception) -> str:
    if isinstance(error, grpc.RpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"
