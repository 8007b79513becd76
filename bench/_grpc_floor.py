"""The floor of the daemon's transport: a gRPC server in a process of its own (grpcio, the
daemon's server options) streaming prebuilt bytes in the daemon's chunk size, read by a
channel from the client's own factory, each chunk copied into a buffer as the client places
rows. No gather, no encoding, no checks: what any lookup through the messages pays, and so
the most it could reach.

    python bench/_grpc_floor.py PORT_FILE   # the server (started by GrpcFloor)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from types import TracebackType
from typing import Any

import grpc

from client.connection import open_channel
from store.config import DEFAULT_MAX_MESSAGE_BYTES
from store.lookup_answers import DEFAULT_CHUNK_BYTES

METHOD = "/engram.bench.Floor/Stream"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def serve(port_file: str) -> None:
    chunk = bytes(DEFAULT_CHUNK_BYTES)

    def stream(request: bytes, context: Any) -> Any:
        left = int.from_bytes(request, "little")
        while left > 0:
            yield chunk if left >= len(chunk) else chunk[:left]
            left -= len(chunk)

    handler = grpc.unary_stream_rpc_method_handler(stream)
    service = grpc.method_handlers_generic_handler(METHOD.split("/")[1], {"Stream": handler})
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[
            ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
        ],
    )
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    server.wait_for_termination()


class GrpcFloor:
    """The floor server in a subprocess, and a channel to it."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory()
        port_file = os.path.join(self._directory.name, "port")
        self.process = subprocess.Popen(
            [sys.executable, __file__, port_file], env={**os.environ, "PYTHONPATH": ROOT}
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the gRPC floor server did not start")
            time.sleep(0.02)
        with open(port_file) as f:
            self.channel = open_channel(f"127.0.0.1:{f.read()}")
        self.stream = self.channel.unary_stream(METHOD)

    def read_into(self, buffer: memoryview) -> None:
        """Streams as many bytes as `buffer` (writable, bytes) holds into it."""
        at = 0
        for chunk in self.stream(len(buffer).to_bytes(8, "little")):
            buffer[at : at + len(chunk)] = chunk
            at += len(chunk)
        if at != len(buffer):
            raise RuntimeError(f"the floor server sent {at} bytes of {len(buffer)}")

    def close(self) -> None:
        if hasattr(self, "channel"):
            self.channel.close()
        self.process.kill()
        self.process.wait()
        self._directory.cleanup()

    def __enter__(self) -> GrpcFloor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


if __name__ == "__main__":
    serve(sys.argv[1])
