"""Lookups from a store daemon on this machine, from 1k to 1M rows a call, against the
in-process gather of the same keys from the same table file, against Redis, and beside a bare
socket copy of the same bytes.

One table of `--rows` x `--dim` float32 rows, every row written, served by a daemon in its
own process. For each lookup size, taking turns round after round (so this machine's drift
falls on all alike), the best time of:
- `in process`: `Table.gather` of the daemon's table file, opened here (the baseline);
- `gRPC messages`: `EngramClient.lookup`, keys and rows in the messages (a remote client's
  path);
- `gRPC shared buffers`: `EngramClient.lookup` as a same-machine client makes it, keys and
  rows in a shared-memory buffer, only control data on the socket;
- `Redis MGET`: the same rows in a `redis-server` on loopback, read by pipelined `MGET`
  (what users would otherwise reach for; `--skip-redis` where it is not installed);
- `socket copy`: the rows' bytes through an open loopback TCP connection into a buffer
  allocated once, and nothing else: what moving them through a socket costs, with no protocol;
- `gRPC floor`: the same bytes streamed by a gRPC server of their own (grpcio, in a process
  of its own, the daemon's chunk size) from prebuilt chunks into the buffer: the transport
  alone, what any lookup through the messages pays (bench/_grpc_floor.py).
Then `LookupTokens` (raw token ids sent, the daemon hashes) against `Lookup` (hashed here,
the keys sent) for a batch of the corpus's tokens, over the messages: request bytes per
token and end-to-end time. Prints one JSON line.
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

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import best_interleaved, compared, corpus_ids, layer_hashing, report
from _grpc_floor import GrpcFloor

from client import EngramClient
from store import Table
from store._proto.engram.store.v1 import store_pb2 as pb
from store.conversions import hash_from_proto
from store.local import LocalDaemon
from store.spec import TableSpec

ROWS_PER_SECOND = "rows/s"


class LoopbackCopy:
    """The rows' bytes sent through one open loopback TCP connection into a buffer allocated
    once: what moving them through a socket costs here, with no protocol and no allocation."""

    def __init__(self, nbytes: int) -> None:
        with socket.create_server(("127.0.0.1", 0)) as server:
            self.receiver = socket.create_connection(server.getsockname())
            self.sender, _ = server.accept()
        self.payload = bytes(nbytes)
        self.received = memoryview(bytearray(nbytes))

    def __call__(self) -> None:
        sending = threading.Thread(target=self.sender.sendall, args=(self.payload,))
        sending.start()
        got = 0
        while got < len(self.received):
            got += self.receiver.recv_into(self.received[got:])
        sending.join()

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()


def write_rows(client: EngramClient, spec: TableSpec, rows_at: Callable[[int, int], Any]) -> None:
    client.create(spec, importing=True)
    chunk = 1 << 16
    for start in range(0, spec.num_rows, chunk):
        client.write_rows(
            spec.name, start, rows_at(start, min(spec.num_rows, start + chunk)), "float32"
        )
    client.finish_import(spec.name)


def size_sweep(
    args: argparse.Namespace,
    client: EngramClient,
    remote: EngramClient,
    table: Table,
    redis: Any,
    floor: GrpcFloor,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rng = np.random.default_rng(0)
    results: list[dict[str, Any]] = []
    raw: dict[str, float] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        keys = rng.integers(0, args.rows, size, dtype=np.uint64)
        out = np.empty((size, args.dim), np.float32)
        expected = table.gather(keys)
        copy = LoopbackCopy(out.nbytes)
        runs: dict[str, Callable[[], Any]] = {
            "in process": partial(table.gather, keys, out=out),
            "gRPC messages": partial(remote.lookup, "E", keys, out=out),
            "gRPC shared buffers": partial(client.lookup, "E", keys, out=out),
            "socket copy": copy,
            "gRPC floor": partial(floor.read_into, out.data.cast("B")),
        }
        if redis is not None:
            runs["Redis MGET"] = partial(redis.lookup, keys, out)
        for name, run in runs.items():
            if name not in ("socket copy", "gRPC floor"):
                out.fill(np.nan)
                run()
                if not np.array_equal(out, expected):
                    raise SystemExit(f"{name} answered other rows than the table holds")
        repeats = max(3, min(args.repeats, args.repeats * 10_000 // size))
        seconds = best_interleaved(runs, repeats)
        copy.close()
        base = size / seconds["in process"]
        for name, s in seconds.items():
            raw[f"{name.replace(' ', '_')}_{size}_rows_per_s"] = size / s
            if name != "in process":
                results.append(
                    compared(
                        f"{name}, {size} rows",
                        size / s,
                        ROWS_PER_SECOND,
                        "in process",
                        base,
                        x=size,
                        series=name,
                        x_unit="rows per lookup",
                    )
                )
        results += [
            compared(
                f"gRPC messages vs {floor_name}, {size} rows",
                size / seconds["gRPC messages"],
                ROWS_PER_SECOND,
                floor_name,
                size / seconds[floor_name],
            )
            for floor_name in ("socket copy", "gRPC floor")
        ]
        if redis is not None:
            results.append(
                compared(
                    f"gRPC messages vs Redis, {size} rows",
                    size / seconds["gRPC messages"],
                    ROWS_PER_SECOND,
                    "Redis MGET",
                    size / seconds["Redis MGET"],
                )
            )
    return results, raw


def token_lookups(
    args: argparse.Namespace, client: EngramClient, remote: EngramClient
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """A batch of the corpus's tokens, as a trainer reads it: by token ids or by keys."""
    mapping = layer_hashing(args.rows, max_ngram_size=3, heads=8, dim=args.dim)
    rows = mapping.layer_table_rows(1)
    spec = TableSpec("T", rows, args.dim, hash_config=hash_from_proto(mapping.hash_config(1)))
    write_rows(client, spec, lambda a, b: np.zeros((b - a, args.dim), np.float32))
    batch, seq = args.token_batch
    ids = corpus_ids(batch * seq).reshape(batch, seq)

    def by_keys() -> Any:
        return remote.lookup("T", mapping.row_keys(ids)[1].astype(np.uint64))

    seconds = best_interleaved(
        {"tokens": partial(remote.lookup_tokens, "T", ids), "keys": by_keys}, args.repeats
    )
    keys = mapping.row_keys(ids)[1].astype(np.uint64)
    tokens_request = pb.LookupTokensRequest(
        table="T",
        token_ids=pb.Array(dtype="int64", shape=list(ids.shape), data=ids.tobytes()),
        hash_fingerprint=mapping.fingerprint(1),
    )
    keys_request = pb.LookupRequest(
        table="T", keys=pb.Array(dtype="uint64", shape=list(keys.shape), data=keys.tobytes())
    )
    tokens = ids.size
    raw = {
        "lookup_tokens_s": seconds["tokens"],
        "lookup_keys_s": seconds["keys"],
        "lookup_tokens_request_bytes_per_token": tokens_request.ByteSize() / tokens,
        "lookup_request_bytes_per_token": keys_request.ByteSize() / tokens,
    }
    results = [
        compared(
            f"LookupTokens request, {batch}x{seq} tokens",
            raw["lookup_tokens_request_bytes_per_token"],
            "bytes/token",
            "Lookup request",
            raw["lookup_request_bytes_per_token"],
            higher_is_better=False,
        ),
        compared(
            f"LookupTokens end to end, {batch}x{seq} tokens",
            seconds["tokens"] * 1e3,
            "ms",
            "hash here, then Lookup",
            seconds["keys"] * 1e3,
            higher_is_better=False,
        ),
    ]
    return results, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the table")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument(
        "--sizes", default="1000,10000,65536,100000,1000000", help="rows per lookup"
    )
    parser.add_argument(
        "--token-batch", type=lambda s: tuple(int(x) for x in s.split("x")), default=(8, 512),
        help="BATCHxSEQ tokens of the LookupTokens comparison",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=20, help="rounds at 10k rows and below")
    parser.add_argument("--skip-redis", action="store_true", help="measure without Redis")
    parser.add_argument("--png")
    args = parser.parse_args()

    result: dict[str, Any] = {"benchmark": "lookups", "table": [args.rows, args.dim]}
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("ENGRAM_BENCH_DIR")) as tmp,
        LocalDaemon(os.path.join(tmp, "store"), log_level="WARNING") as daemon,
        EngramClient(daemon.address) as client,
        EngramClient(daemon.address, shared_memory=False) as remote,
        GrpcFloor() as floor,
    ):
        rng = np.random.default_rng(1)
        write_rows(
            client,
            TableSpec("E", args.rows, args.dim),
            lambda a, b: rng.standard_normal((b - a, args.dim), np.float32),
        )
        table = Table.open(os.path.join(tmp, "store", "tables", "E", "params.engram"))
        redis = None
        if not args.skip_redis:
            from _redis import RedisServer, redis_parser

            redis = RedisServer()
            redis.store_rows(table.gather(np.arange(args.rows, dtype=np.uint64)))
            result["redis"] = f"redis-server {redis.version()}, {redis_parser()} parser"
        try:
            sweep, raw = size_sweep(args, client, remote, table, redis, floor)
        finally:
            if redis is not None:
                redis.close()
        tokens, token_raw = token_lookups(args, client, remote)
    report({**result, **raw, **token_raw, "results": sweep + tokens}, args.png)


if __name__ == "__main__":
    main()
