"""Store daemon over loopback gRPC against the in-process engine.

`Lookup` of 64k-row batches against an in-process gather of the same keys from the same
table file; `Push` of 64k rows with SGD against the same in-process gather rate, with Adam
and row-wise Adagrad beside it. Each is measured twice: keys and rows in the messages, and
keys and rows in a shared buffer (same-machine clients; the message carries the path). The
daemon runs as its own process. A bare TCP loopback copy of the rows' bytes shows the
ceiling of any transport that moves rows through a socket on this machine. Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import best_interleaved, report

from client.shared_memory import SharedBuffer

try:
    from client.connection import open_channel
except ImportError:  # an older tree, run by bench/compare_builds.py

    def open_channel(address: str) -> grpc.Channel:
        limit = 512 << 20
        options = [("grpc.max_receive_message_length", limit)]
        return grpc.insecure_channel(
            address, options=[*options, ("grpc.max_send_message_length", limit)]
        )


from store import Table
from store._proto.engram.store.v1 import store_pb2 as pb
from store._proto.engram.store.v1 import store_pb2_grpc as pb_grpc
from store.local import LocalDaemon

read_chunk: Callable[[bytes], Any]
try:
    from client.connection import read_lookup_chunk as read_chunk
except ImportError:  # an older tree, run by bench/compare_builds.py
    read_chunk = pb.LookupResponse.FromString


OPTIMIZERS = ("sgd", "adam", "rowwise_adagrad")


def loopback_transfer(nbytes: int) -> None:
    """Sends `nbytes` over a fresh TCP loopback connection into a preallocated buffer."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        payload = bytes(nbytes)

        def send() -> None:
            connection, _ = server.accept()
            with connection:
                connection.sendall(payload)

        sender = threading.Thread(target=send)
        sender.start()
        received = memoryview(bytearray(nbytes))
        with socket.create_connection(server.getsockname()) as client:
            got = 0
            while got < nbytes:
                got += client.recv_into(received[got:])
        sender.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--png")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        daemon = LocalDaemon(
            os.path.join(tmp, "store"), "--flush-interval", "0", log_level="WARNING"
        ).start()
        address = daemon.address
        try:
            with open_channel(address) as channel:
                stub = pb_grpc.EngramStoreStub(channel)
                for name in OPTIMIZERS:
                    config = pb.OptimizerConfig(lr=0.01)
                    getattr(config, name).SetInParent()
                    stub.CreateTable(
                        pb.CreateTableRequest(
                            spec=pb.TableSpec(
                                name=name, num_rows=args.rows, dim=args.dim, optimizer=config
                            )
                        )
                    )
                rng = np.random.default_rng(0)
                keys = rng.integers(0, args.rows, args.batch, dtype=np.uint64)
                key_array = pb.Array(dtype="uint64", shape=[args.batch], data=keys.tobytes())
                grads = rng.standard_normal((args.batch, args.dim)).astype(np.float32)
                grad_array = pb.Array(
                    dtype="float32", shape=list(grads.shape), data=grads.tobytes()
                )
                # Store the rows first, so both sides read stored rows.
                stub.Push(pb.PushRequest(table="sgd", keys=key_array, grads=grad_array))

                local = Table.open(os.path.join(tmp, "store", "tables", "sgd", "params.engram"))
                out = np.empty((args.batch, args.dim), np.float32)

                # As the client reads answers: rows in place where the build can.
                lookup_call = channel.unary_stream(
                    "/engram.store.v1.EngramStore/Lookup",
                    request_serializer=pb.LookupRequest.SerializeToString,
                    response_deserializer=read_chunk,
                )

                def remote_lookup() -> None:
                    for chunk in lookup_call(pb.LookupRequest(table="sgd", keys=key_array)):
                        n = chunk.rows.shape[0]
                        out[chunk.offset : chunk.offset + n] = np.frombuffer(
                            chunk.rows.data, np.float32
                        ).reshape(n, args.dim)

                runs: dict[str, Callable[[], object]] = {
                    "gather": partial(local.gather, keys, out=out),
                    "lookup": remote_lookup,
                    "socket": partial(loopback_transfer, out.nbytes),
                }
                for name in OPTIMIZERS:
                    request = pb.PushRequest(table=name, keys=key_array, grads=grad_array)
                    runs[f"push_{name}"] = partial(stub.Push, request)

                # Same-machine transport: one shared buffer holds the keys, then the rows a
                # lookup writes, then the gradients pushes read.
                rows_at = -(-keys.nbytes // 4096) * 4096
                grads_at = rows_at + out.nbytes
                shared = SharedBuffer("/dev/shm", grads_at + grads.nbytes)
                try:
                    shared.view(np.dtype("<u8"), keys.shape)[:] = keys
                    shared.view(np.dtype("<f4"), grads.shape, grads_at)[:] = grads
                    keys_in_buffer = pb.Array(dtype="uint64", shape=[args.batch])
                    keys_at = shared.message()
                    lookup_request = pb.LookupRequest(
                        table="sgd",
                        keys=keys_in_buffer,
                        keys_buffer=keys_at,
                        out=shared.message(rows_at),
                    )
                    runs["shm_lookup"] = lambda: list(stub.Lookup(lookup_request))
                    for name in OPTIMIZERS:
                        request = pb.PushRequest(
                            table=name,
                            keys=keys_in_buffer,
                            keys_buffer=keys_at,
                            grads=pb.Array(dtype="float32", shape=list(grads.shape)),
                            grads_buffer=shared.message(grads_at),
                        )
                        runs[f"shm_push_{name}"] = partial(stub.Push, request)
                    seconds = best_interleaved(runs, args.repeats)
                finally:
                    shared.close()
        finally:
            daemon.stop()

    local_s, lookup_s, socket_s = seconds["gather"], seconds["lookup"], seconds["socket"]
    push_s = {name: seconds[f"push_{name}"] for name in OPTIMIZERS}
    shm_lookup_s = seconds["shm_lookup"]
    shm_push_s = {name: seconds[f"shm_push_{name}"] for name in OPTIMIZERS}
    rate = args.batch / local_s
    report(
        {
            "benchmark": "store_rpc",
            "table": [args.rows, args.dim],
            "batch_rows": args.batch,
            "in_process_gather_rows_per_s": rate,
            "grpc_lookup_rows_per_s": args.batch / lookup_s,
            "grpc_push_sgd_rows_per_s": args.batch / push_s["sgd"],
            "grpc_push_adam_rows_per_s": args.batch / push_s["adam"],
            "grpc_push_rowwise_adagrad_rows_per_s": args.batch / push_s["rowwise_adagrad"],
            "lookup_vs_in_process": (args.batch / lookup_s) / rate,
            "push_sgd_vs_in_process_gather": (args.batch / push_s["sgd"]) / rate,
            "shm_lookup_rows_per_s": args.batch / shm_lookup_s,
            "shm_push_sgd_rows_per_s": args.batch / shm_push_s["sgd"],
            "shm_push_adam_rows_per_s": args.batch / shm_push_s["adam"],
            "shm_push_rowwise_adagrad_rows_per_s": args.batch / shm_push_s["rowwise_adagrad"],
            "shm_lookup_vs_in_process": (args.batch / shm_lookup_s) / rate,
            # The most any transport that moves the rows through a socket could reach here:
            # a bare TCP loopback copy of the rows' bytes, nothing else.
            "socket_copy_rows_per_s": args.batch / socket_s,
            "socket_copy_vs_in_process": (args.batch / socket_s) / rate,
            "shm_push_sgd_vs_in_process_gather": (args.batch / shm_push_s["sgd"]) / rate,
        },
        args.png,
    )


if __name__ == "__main__":
    main()
