"""Fuzzing through a real gRPC connection: thousands of malformed and extreme requests to
every method of a daemon in its own process, built from the protocol's own descriptors
(every field of every message, nested, with values at and beyond their limits) and as raw
bytes. Every answer is OK or a proper status (never INTERNAL or UNKNOWN, which mean a bug),
the daemon never dies, and a rejected request leaves every table, row, step and checkpoint
as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from daemon import Daemon, daemon_process
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_helpers import keys, push, raw_rows, spec

from store._proto.engram.store.v1 import store_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["EngramStore"]
METHODS = {m.name: m for m in SERVICE.methods}
PROPER = set(grpc.StatusCode) - {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
FUZZ_SETTINGS = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,  # the same requests on every run: CI never flakes on a new draw
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

WORDS = [
    "", "t", "u", "nope", "x" * 300, "\x00", "../t", "t/../t",
    "float32", "bfloat16", "float16", "uint64", "int64", "fp8_e4m3", "int8", "complex64",
    "zeros", "normal", "mean", "sum",
    "/dev/zero", "/etc/passwd", "/proc/self/mem", "/dev/shm/engram-fuzz", "/dev/shm",
]  # fmt: skip
EDGES = [0, 1, 2, 3, 4, 7, 8, 31, 32, 100, 255, 256, 4096, 1 << 20, (1 << 31) - 1, 1 << 31]
EDGES += [(1 << 32) - 1, 1 << 32, (1 << 53) + 1, (1 << 63) - 1]
LIMITS = {
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
}


def integers(kind: int) -> st.SearchStrategy[int]:
    low, high = LIMITS[kind]
    edges = [e for e in [*EDGES, -1, -(1 << 63), high] if low <= e <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def packed_bytes() -> st.SearchStrategy[bytes]:
    """Bytes that often look like what a field expects: keys, rows, or nearly so."""
    values = st.lists(st.sampled_from([0, 1, 5, 99, 100, 1 << 40, (1 << 64) - 1]), max_size=8)
    as_keys = values.map(lambda v: np.array(v, np.uint64).tobytes())
    as_rows = st.lists(
        st.sampled_from([0.0, 1.0, -1e30, float("nan"), float("inf")]), max_size=16
    ).map(lambda v: np.array(v, np.float32).tobytes())
    return st.one_of(st.binary(max_size=72), as_keys, as_rows)


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if field.name in ("table", "name") and kind == FieldDescriptor.TYPE_STRING:
        # Mostly the table that exists, so that requests get past the first check.
        return st.one_of(st.just("t"), st.sampled_from(WORDS), st.text(max_size=12))
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
    if kind == FieldDescriptor.TYPE_BYTES:
        return packed_bytes()
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.one_of(st.sampled_from([0.0, 1e-3, 1.0, -1.0, 1e300]), st.floats(width=32))
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values] + [7])
    return integers(kind)


@st.composite
def array(draw: st.DrawFn, field: str) -> pb.Array:
    """An array as the table "t" (100 rows of 4) would take it in `field` (keys, or rows
    and gradients), or nearly: another dtype, shape or length now and then."""
    usual = ("uint64", [1]) if "keys" in field or "ids" in field else ("float32", [1, 4])
    dtype = draw(st.sampled_from([usual[0]] * 4 + ["bfloat16", "float16", "int64", "int8"]))
    count = draw(st.sampled_from([1, 3, 8, 0]))
    shape = [count, *usual[1][1:]]
    shape = draw(st.sampled_from([shape] * 4 + [[count, 3], [count, 4, 1], [], [-1]]))
    itemsize = {"uint64": 8, "int64": 8, "float32": 4, "int8": 1}.get(dtype, 2)
    size = max(int(np.prod(shape)) * itemsize if shape else 0, 0)
    size = max(size + draw(st.sampled_from([0, 0, 0, 0, 1, -1])), 0)
    if dtype in ("uint64", "int64"):
        values = draw(st.lists(st.sampled_from([0, 1, 5, 99, 100, (1 << 64) - 1]), min_size=8))
        data = np.array(values, np.uint64).tobytes()[:size]
    else:
        special = st.sampled_from([0.0, 0.5, -1.0, 1e30, float("nan"), float("inf")])
        floats = draw(st.lists(special, min_size=size, max_size=size))
        data = np.array(floats, np.float32).tobytes()[:size]
    return pb.Array(dtype=dtype, shape=shape, data=data)


@st.composite
def message(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Any:
    """A message of `descriptor` with a random subset of its fields set."""
    out = getattr(pb, descriptor.name)() if descriptor.file is pb.DESCRIPTOR else None
    assert out is not None, descriptor.full_name
    for field in descriptor.fields:
        always = field.name in ("table", "name", "keys", "grads", "spec", "rows")
        if not always and not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.name == "Array":
            count = draw(st.integers(0, 3)) if field.is_repeated else 1
            for _ in range(count):
                value = draw(array(field.name))
                target = getattr(out, field.name)
                (target.add() if field.is_repeated else target).CopyFrom(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            count = draw(st.integers(0, 3)) if field.is_repeated else 1
            for _ in range(count):
                assert field.message_type is not None
                value = draw(message(field.message_type, depth + 1))
                target = getattr(out, field.name)
                (target.add() if field.is_repeated else target).CopyFrom(value)
        elif field.is_repeated:
            getattr(out, field.name).extend(draw(st.lists(scalar(field), max_size=4)))
        else:
            setattr(out, field.name, draw(scalar(field)))
    return bounded_waits(out)


def bounded_waits(request: Any) -> Any:
    """Calls that wait (for a data-parallel step's ranks, for a checkpoint) wait briefly,
    so that thousands of them run in seconds."""
    if isinstance(request, pb.SyncStep):
        request.timeout_s = 0.05
    if isinstance(request, pb.ChangedRowsRequest):
        request.wait_ms = min(request.wait_ms, 50)
    return request


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("fuzz")
    options = ("--max-message-bytes", str(1 << 20), "--shared-buffer-dir", str(root))
    with daemon_process(root / "data", *options) as (d, process):
        yield d
        assert process.poll() is None, "the daemon died"


def state(d: Daemon) -> Any:
    """Every visible table (spec, step, written rows, its first rows as stored) and every
    checkpoint."""
    tables = []
    for info in d.stub.ListTables(pb.ListTablesRequest(), timeout=30).tables:
        count = min(info.spec.num_rows, 64)
        request = pb.LookupRequest(
            table=info.spec.name, keys=keys(range(count)), dtype=info.spec.dtype or "float32"
        )
        rows = raw_rows(d.stub.Lookup(request, timeout=30)) if count else b""
        tables.append((info.SerializeToString(), rows))
    checkpoints = d.stub.ListCheckpoints(pb.ListCheckpointsRequest(), timeout=30).checkpoints
    return tables, [c.id for c in checkpoints]


def ensure_table(d: Daemon) -> None:
    """A small trained table for requests to find (a fuzzed drop may have removed it)."""
    names = {t.spec.name for t in d.stub.ListTables(pb.ListTablesRequest()).tables}
    if "t" not in names:
        d.stub.CreateTable(pb.CreateTableRequest(spec=spec("t", num_rows=100, dim=4)))
        d.stub.Push(push("t", [1, 5, 99], np.ones((3, 4), np.float32)))


def call(d: Daemon, method: str, request: bytes) -> grpc.StatusCode:
    """Sends serialized `request` to `method`; its status code."""
    descriptor = METHODS[method]
    path = f"/{SERVICE.full_name}/{method}"
    try:
        if descriptor.server_streaming:
            stream = d.channel.unary_stream(path)(request, timeout=30)
            for _ in stream:
                pass
        else:
            d.channel.unary_unary(path)(request, timeout=30)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def check_answer(d: Daemon, method: str, request: bytes) -> None:
    ensure_table(d)
    before = state(d)
    code = call(d, method, request)
    assert code in PROPER, f"{method} answered {code} to {request!r}"
    if code != grpc.StatusCode.OK:
        assert state(d) == before, f"a rejected {method} ({code}) changed the store"


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(METHODS)))
    request = draw(message(METHODS[method].input_type))
    return method, request.SerializeToString()


@FUZZ_SETTINGS
@given(requests())
def test_fuzzed_requests_get_proper_answers_and_rejections_change_nothing(
    daemon: Daemon, sent: tuple[str, bytes]
) -> None:
    check_answer(daemon, *sent)


@settings(FUZZ_SETTINGS, max_examples=600)
@given(st.sampled_from(sorted(METHODS)), st.binary(max_size=96))
def test_raw_bytes_get_proper_answers(daemon: Daemon, method: str, data: bytes) -> None:
    check_answer(daemon, method, with_bounded_waits(method, data))


def with_bounded_waits(method: str, data: bytes) -> bytes:
    """`data`, or, where it decodes to a request that would wait, that request waiting
    briefly (random bytes easily ask for a minute's wait)."""
    try:
        request = getattr(pb, METHODS[method].input_type.name).FromString(data)
    except DecodeError:
        return data
    for part in [request, *(getattr(request, "pushes", []))]:
        if part.HasField("sync") if hasattr(part, "sync") else False:
            bounded_waits(part.sync)
    bounded_waits(request)
    return bytes(request.SerializeToString())


def test_the_fuzzed_daemon_still_serves_and_trains(daemon: Daemon, tmp_path: Path) -> None:
    ensure_table(daemon)
    # A fuzzed TuneTable may have left "t" a learning rate (any positive float32, 1e-45
    # say) too small to move a row: set one that must.
    daemon.stub.TuneTable(pb.TuneTableRequest(name="t", lr=0.1, weight_decay=0.0))
    before = raw_rows(daemon.stub.Lookup(pb.LookupRequest(table="t", keys=keys([1]))))
    daemon.stub.Push(push("t", [1], np.ones((1, 4), np.float32)))
    after = raw_rows(daemon.stub.Lookup(pb.LookupRequest(table="t", keys=keys([1]))))
    assert before != after
    daemon.stub.Checkpoint(pb.CheckpointRequest())
