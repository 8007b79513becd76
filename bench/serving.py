"""Serving a quantized model's Engram tables: what an inference engine pays per decode step.

Rows as DeepSeek-V4.1-Flash ships them (256 values, FP8 E4M3 with an E8M0 scale per 32:
264 bytes a row), scaled down in rows. Measured in one run:

1. Dequantizing gather: FP8 rows read as bfloat16, against the plain gather of the same
   rows from a bfloat16 table (rows/s and bytes read/s of both; target ratio >= 0.8).
2. Decode-shaped lookups (64 sequences, one new token each, 48 rows a token): p50 and p99
   latency in process (a `Table` opened read-only), through shared buffers (a daemon on
   this machine), and through the messages (the path of a remote daemon). Target:
   shared-buffer p50 within 5x of in process. For one layer (24 rows a token),
   `LookupTokens` (the engine sends each sequence's last 4 token ids, the daemon hashes)
   beside hashing in the engine and sending the keys, with the request bytes per token of
   each. Then 4 concurrent readers of one daemon. The transports compared take turns in
   blocks of steps, so that this machine's drift falls on all alike. With `--device`
   (`cuda` on a GPU machine), also the rows of a decode step put into a bfloat16 tensor on
   that device: by `RowWriter.lookup_into` (shared buffers into pinned memory, then copied
   over) against the in-process gather into pinned memory, then copied over; each step
   waits for its copy.
3. Import: a safetensors checkpoint of one such layer imported into the daemon, against
   writing (and syncing) the same bytes sequentially to the same disk (target >= 0.5x).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from _common import (
    best_interleaved,
    compared,
    layer_hashing,
    report,
    sequential_write,
    trained_fp8_rows,
)

from client import EngramClient
from client.imports import import_checkpoint, mapping_rules
from client.torch import RowWriter
from store import Table
from store._proto.engram.store.v1 import store_pb2 as pb
from store.conversions import hash_from_proto
from store.local import LocalDaemon
from store.spec import TableSpec

DIM, SEQUENCES, ROWS_PER_TOKEN = 256, 64, 48
DECODE_KEYS = SEQUENCES * ROWS_PER_TOKEN
BLOCK_STEPS, WARM_UP_STEPS = 25, 3


def fp8_layer(directory: str, rows: int) -> np.ndarray:
    """Packed FP8 rows of a trained-looking layer, made a slice at a time."""
    slice_rows = 1 << 18
    return np.concatenate(
        [
            trained_fp8_rows(directory, min(slice_rows, rows - start), DIM, seed=start)
            for start in range(0, rows, slice_rows)
        ]
    )


def latencies(calls: dict[str, Callable[[], Any]], steps: int) -> dict[str, tuple[float, float]]:
    """p50 and p99 of `steps` steps of each call, in microseconds. The calls take turns in
    blocks of `BLOCK_STEPS` steps, so that a drift of this machine falls on all alike, while
    each step follows steps of its own kind (one right after another transport's call
    would pay for what that left running, as its threads winding down)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for first in range(0, steps, BLOCK_STEPS):
        for name, call in calls.items():
            for _ in range(WARM_UP_STEPS):
                call()
            for _ in range(min(BLOCK_STEPS, steps - first)):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    percentiles = {}
    for name, taken in times.items():
        p50, p99 = np.percentile(taken, [50, 99]) * 1e6
        percentiles[name] = (float(p50), float(p99))
    return percentiles


def device_transports(
    device: torch.device, served: Table, client: EngramClient, keys_now: Callable[[], np.ndarray]
) -> dict[str, Callable[[], Any]]:
    """A decode step's rows put into a bfloat16 tensor on `device`, as an engine wants them:
    by `RowWriter` from the daemon, and from the table in process through the same kind of
    pinned buffer; each waits until the rows are there."""
    shape = (SEQUENCES, ROWS_PER_TOKEN, DIM)
    on_device = torch.empty(shape, dtype=torch.bfloat16, device=device)
    pinned = torch.empty(shape, dtype=torch.bfloat16, pin_memory=device.type == "cuda")
    pinned_bits = pinned.view(torch.int16).numpy().view(np.uint16)
    writer = RowWriter(client)

    def arrived() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def in_process() -> None:
        served.gather(keys_now(), out=pinned_bits, dtype="bfloat16")
        on_device.copy_(pinned, non_blocking=True)
        arrived()

    def row_writer() -> None:
        writer.lookup_into("L", keys_now(), on_device)
        arrived()

    return {"in_process_to_device": in_process, "row_writer_to_device": row_writer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the FP8 layer")
    parser.add_argument("--steps", type=int, default=500, help="decode steps per transport")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", help="also put decode steps' rows into a tensor on it (cuda)")
    args = parser.parse_args()
    rng = np.random.default_rng(2)
    result: dict[str, Any] = {
        "benchmark": "serving",
        "rows": args.rows,
        "row_bytes": 264,
        "device": args.device,
    }

    with tempfile.TemporaryDirectory(dir=os.environ.get("ENGRAM_BENCH_DIR")) as tmp:
        packed = fp8_layer(tmp, args.rows)
        checkpoint = os.path.join(tmp, "layer.safetensors")
        values = torch.from_numpy(packed[:, :DIM]).view(torch.float8_e4m3fn)
        scales = torch.from_numpy(packed[:, DIM:]).view(torch.float8_e8m0fnu)
        save_file(
            {"engram.weight": values.contiguous(), "engram.scale": scales.contiguous()}, checkpoint
        )
        del values, scales
        fp8 = Table.create(os.path.join(tmp, "fp8.engram"), args.rows, DIM, dtype="fp8_e4m3")
        bf16 = Table.create(os.path.join(tmp, "bf16.engram"), args.rows, DIM, dtype="bfloat16")
        chunk = 1 << 16
        for start in range(0, args.rows, chunk):
            stop = min(args.rows, start + chunk)
            fp8.write_packed(np.arange(start, stop), packed[start:stop])
            bf16.write_rows(np.arange(start, stop), np.zeros((stop - start, DIM), np.float32))
        del packed

        # 1. dequantizing gather against the plain bfloat16 gather of the same rows.
        keys = rng.integers(0, args.rows, 65_536, dtype=np.uint64)
        out = np.empty((len(keys), DIM), np.uint16)
        seconds = best_interleaved(
            {
                "fp8": lambda: fp8.gather(keys, out=out, dtype="bfloat16"),
                "bf16": lambda: bf16.gather(keys, out=out, dtype="bfloat16"),
            },
            args.repeats,
        )
        result |= {
            "fp8_to_bf16_rows_per_s": len(keys) / seconds["fp8"],
            "bf16_gather_rows_per_s": len(keys) / seconds["bf16"],
            "fp8_read_bytes_per_s": len(keys) * 264 / seconds["fp8"],
            "bf16_read_bytes_per_s": len(keys) * DIM * 2 / seconds["bf16"],
            "fp8_dequant_vs_bf16_gather": seconds["bf16"] / seconds["fp8"],
        }

        # 3. import against a sequential write of the same bytes (before the daemon's
        # page cache holds the rows, so both write to the disk alike).
        with LocalDaemon(os.path.join(tmp, "store"), log_level="WARNING") as daemon:
            rules = mapping_rules(
                {"tables": [{"tensor": "engram.weight", "scales": "engram.scale", "table": "L"}]}
            )
            nbytes = args.rows * 264
            with EngramClient(daemon.address) as client:
                began = time.perf_counter()
                import_checkpoint(client, checkpoint, rules)
                import_s = time.perf_counter() - began
                began = time.perf_counter()
                sequential_write(os.path.join(tmp, "sequential"), nbytes)
                write_s = time.perf_counter() - began
                result |= {
                    "import_bytes_per_s": nbytes / import_s,
                    "sequential_write_bytes_per_s": nbytes / write_s,
                    "import_vs_sequential_write": write_s / import_s,
                }

                # 2. decode-shaped lookups.
                step_keys = [
                    rng.integers(0, args.rows, (SEQUENCES, ROWS_PER_TOKEN), dtype=np.uint64)
                    for _ in range(64)
                ]
                step = iter(range(1 << 62))
                out16 = np.empty((SEQUENCES, ROWS_PER_TOKEN, DIM), np.uint16)
                served = Table.open(os.path.join(tmp, "store", "tables", "L", "params.engram"))

                def keys_now() -> np.ndarray:
                    return step_keys[next(step) % len(step_keys)]

                with EngramClient(daemon.address, shared_memory=False) as remote:
                    transports: dict[str, Callable[[], Any]] = {
                        "in_process": lambda: served.gather(
                            keys_now(), out=out16, dtype="bfloat16"
                        ),
                        "shared_buffers": lambda: client.lookup(
                            "L", keys_now(), "bfloat16", out=out16
                        ),
                        "messages": lambda: remote.lookup("L", keys_now(), "bfloat16", out=out16),
                        "messages_packed": lambda: remote.lookup("L", keys_now(), "fp8_e4m3"),
                    }
                    if args.device:
                        transports |= device_transports(
                            torch.device(args.device), served, client, keys_now
                        )
                    for name, (p50, p99) in latencies(transports, args.steps).items():
                        result[f"decode_{name}_p50_us"] = p50
                        result[f"decode_{name}_p99_us"] = p99
                    result |= token_lookups(client, remote, fp8, args.steps)
                result["shared_buffers_p50_vs_in_process"] = (
                    result["decode_shared_buffers_p50_us"] / result["decode_in_process_p50_us"]
                )
                result |= concurrent_readers(daemon.address, step_keys, args.steps)
    result["results"] = serving_results(result)
    report(result)


def serving_results(r: dict[str, Any]) -> list[dict[str, Any]]:
    """(name, value's field, unit, baseline, baseline's field, target) of each result; latencies
    (p50 us) are better lower."""
    table = (
        ("FP8 rows gathered as bfloat16", "fp8_to_bf16_rows_per_s", "rows/s",
         "bfloat16 rows gathered", "bf16_gather_rows_per_s", 0.8),
        ("decode step, shared buffers", "decode_shared_buffers_p50_us", "p50 us",
         "in process", "decode_in_process_p50_us", 5),
        ("decode step, messages", "decode_messages_p50_us", "p50 us",
         "in process", "decode_in_process_p50_us", None),
        ("decode step, messages, rows packed FP8", "decode_messages_packed_p50_us", "p50 us",
         "messages, bfloat16", "decode_messages_p50_us", None),
        ("one layer's decode step, LookupTokens", "decode_layer_lookup_tokens_p50_us", "p50 us",
         "hash here, then Lookup", "decode_layer_hash_here_then_lookup_p50_us", None),
        ("LookupTokens request, decode", "lookup_tokens_request_bytes_per_token", "bytes/token",
         "Lookup request", "lookup_request_bytes_per_token", None),
        ("4 concurrent readers", "decode_steps_per_s_4_readers", "steps/s",
         "1 reader", "decode_steps_per_s_1_reader", None),
        ("import of a safetensors layer", "import_bytes_per_s", "bytes/s",
         "sequential write", "sequential_write_bytes_per_s", 0.5),
        ("decode step into a device tensor, RowWriter", "decode_row_writer_to_device_p50_us",
         "p50 us", "in process, then copied", "decode_in_process_to_device_p50_us", None),
    )  # fmt: skip
    return [
        compared(
            name,
            r[field],
            unit,
            baseline,
            r[base_field],
            target=target,
            higher_is_better=unit not in ("p50 us", "bytes/token"),
        )
        for name, field, unit, baseline, base_field, target in table
        if field in r
    ]


def token_lookups(
    client: EngramClient, remote: EngramClient, fp8: Table, steps: int
) -> dict[str, Any]:
    """Decode steps of one layer (2/3/4-grams x 8 heads: 24 rows a token) over the messages:
    `LookupTokens` (each sequence's last 4 token ids sent, the daemon hashes) beside hashing
    here and sending the 24 keys a token (`Lookup`), with the bytes each request carries."""
    mapping = layer_hashing(fp8.num_rows)
    rows = mapping.layer_table_rows(1)
    client.create(
        TableSpec(
            "T", rows, DIM, dtype="fp8_e4m3", hash_config=hash_from_proto(mapping.hash_config(1))
        ),
        importing=True,
    )
    chunk = 1 << 16
    for start in range(0, rows, chunk):
        keys = np.arange(start, min(rows, start + chunk), dtype=np.uint64)
        client.write_rows("T", start, fp8.gather(keys, dtype="fp8_e4m3"), "fp8_e4m3")
    client.finish_import("T")
    vocab = mapping.compressed_tokenizer.vocab_size
    rng = np.random.default_rng(3)
    windows = [rng.integers(0, vocab, (SEQUENCES, 4)) for _ in range(64)]
    step = iter(range(1 << 62))

    def window_now() -> np.ndarray:
        return windows[next(step) % len(windows)]

    def hashed_here() -> Any:
        keys = mapping.row_keys(window_now())[1][:, -1:]
        return remote.lookup("T", keys.astype(np.uint64), "bfloat16")

    result: dict[str, Any] = {}
    calls: dict[str, Callable[[], Any]] = {
        "lookup_tokens": lambda: remote.lookup_tokens(
            "T", window_now(), "bfloat16", last_position_only=True
        ),
        "hash_here_then_lookup": hashed_here,
    }
    for name, (p50, p99) in latencies(calls, steps).items():
        result[f"decode_layer_{name}_p50_us"] = p50
        result[f"decode_layer_{name}_p99_us"] = p99
    window = windows[0]
    keys = mapping.row_keys(window)[1][:, -1:].astype(np.uint64)
    tokens_request = pb.LookupTokensRequest(
        table="T",
        token_ids=pb.Array(dtype="int64", shape=list(window.shape), data=window.tobytes()),
        hash_fingerprint=mapping.fingerprint(1),
        dtype="bfloat16",
        last_position_only=True,
    )
    keys_request = pb.LookupRequest(
        table="T",
        keys=pb.Array(dtype="uint64", shape=list(keys.shape), data=keys.tobytes()),
        dtype="bfloat16",
    )
    result["lookup_tokens_request_bytes_per_token"] = tokens_request.ByteSize() / SEQUENCES
    result["lookup_request_bytes_per_token"] = keys_request.ByteSize() / SEQUENCES
    return result


def concurrent_readers(address: str, step_keys: list[np.ndarray], steps: int) -> dict[str, Any]:
    """Decode steps/s of 4 threads, each with its own client, against one."""

    def run(readers: int) -> float:
        clients = [EngramClient(address) for _ in range(readers)]
        start = threading.Barrier(readers + 1)

        def reader(client: EngramClient) -> None:
            start.wait()
            for i in range(steps):
                client.lookup("L", step_keys[i % len(step_keys)], "bfloat16")

        threads = [threading.Thread(target=reader, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        for client in clients:
            client.close()
        return readers * steps / elapsed

    one, four = run(1), run(4)
    return {
        "decode_steps_per_s_1_reader": one,
        "decode_steps_per_s_4_readers": four,
        "four_readers_vs_one": four / one,
    }


if __name__ == "__main__":
    main()
