"""Prometheus metrics of a daemon (`serve --metrics-port PORT`), served over HTTP at
`/metrics` by prometheus-client.

Per RPC (a server interceptor): calls by method and status code, calls in progress (a push
waiting for a checkpoint or for the other ranks of its step is one), latency, request and
response bytes. Per table, read from the engine at each scrape: lookups, rows looked up,
pushes, rows pushed, duplicate pushes (counters), rows, written rows, step, stored row bytes
(gauges). And: gradient bytes held by data-parallel steps waiting for ranks, checkpoints
kept, the last checkpoint's bytes, uptime. Checkpoint durations are the `Checkpoint` RPC's
latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from store.engine import StoreEngine
from store.spec import row_bytes

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class RequestMetrics(grpc.ServerInterceptor):  # type: ignore[misc]
    """Counts every call by method and status code, with its latency and sizes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "engram_requests", "Calls answered", ["method", "code"], registry=registry
        )
        self.seconds = Histogram(
            "engram_request_seconds",
            "Time to answer a call",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "engram_requests_in_progress",
            "Calls received and not yet answered",
            ["method"],
            registry=registry,
        )
        self.bytes_in = Counter(
            "engram_request_bytes", "Request bytes received", ["method"], registry=registry
        )
        self.bytes_out = Counter(
            "engram_response_bytes", "Response bytes sent", ["method"], registry=registry
        )

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming calls (reflection): not counted

    def _unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def measured(request: Any, context: grpc.ServicerContext) -> Any:
            with self._call(method, request, context) as sent:
                response = behavior(request, context)
                sent(response)
                return response

        return measured

    def _streaming(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def measured(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._call(method, request, context) as sent:
                for response in behavior(request, context):
                    sent(response)
                    yield response

        return measured

    @contextmanager
    def _call(
        self, method: str, request: Any, context: grpc.ServicerContext
    ) -> Iterator[Callable[[Any], None]]:
        """Counts one call of `method`: its request, each response passed to the function
        it yields, its status code and its time."""
        began, code = time.perf_counter(), "OK"
        self.bytes_in.labels(method).inc(_size(request))
        bytes_out = self.bytes_out.labels(method)
        in_progress = self.in_progress.labels(method)
        in_progress.inc()
        try:
            yield lambda response: bytes_out.inc(_size(response))
        except BaseException:
            code = _code(context)
            raise
        finally:
            in_progress.dec()
            self.calls.labels(method, code).inc()
            self.seconds.labels(method).observe(time.perf_counter() - began)


def _size(message: Any) -> int:
    if isinstance(message, bytes):
        return len(message)
    byte_size = getattr(message, "ByteSize", None)
    return int(byte_size()) if byte_size is not None else 0


def _code(context: grpc.ServicerContext) -> str:
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class EngineCollector(Collector):
    """The engine's tables and state, read at each scrape (nothing scans a table)."""

    def __init__(self, engine: StoreEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        stats = self.engine.stats()
        counters: dict[str, CounterMetricFamily] = {
            name: CounterMetricFamily(f"engram_table_{name}", help_text, labels=["table"])
            for name, help_text in (
                ("lookups", "Lookups of the table (a lookup may read many rows)"),
                ("rows_looked_up", "Rows read by lookups"),
                ("pushes", "Pushes applied"),
                ("rows_pushed", "Distinct rows changed by pushes"),
                ("duplicate_pushes", "Pushes acknowledged again, not reapplied"),
            )
        }
        for table in stats.tables:
            for name, family in counters.items():
                family.add_metric([table.name], getattr(table, name))
        yield from counters.values()
        gauges: dict[str, GaugeMetricFamily] = {
            name: GaugeMetricFamily(f"engram_table_{name}", help_text, labels=["table"])
            for name, help_text in (
                ("rows", "Rows of the table (of this daemon's shard)"),
                ("written_rows", "Rows stored (never-written rows take no disk)"),
                ("step", "Optimizer steps applied"),
                ("row_bytes", "Bytes of a stored row"),
                (
                    "page_cache_bytes",
                    "Bytes of the table's files in the page cache (exact up to 4096 pages a "
                    "file, estimated from 4096 spread over larger ones)",
                ),
            )
        }
        cached = self.engine.page_cache_bytes()
        for status in self.engine.list_tables():
            spec = status.spec
            values = {
                "rows": spec.num_rows,
                "written_rows": status.written_rows,
                "step": status.step,
                "row_bytes": row_bytes(spec.dtype, spec.dim),
                "page_cache_bytes": cached.get(spec.name, 0),
            }
            for name, gauge in gauges.items():
                gauge.add_metric([spec.name], values[name])
        yield from gauges.values()
        yield _gauge("engram_checkpoints", "Checkpoints kept", stats.checkpoints)
        latest = self.engine.catalog.latest_checkpoint()
        last = sum(t["bytes"] for t in latest["tables"]) if latest else 0
        yield _gauge("engram_last_checkpoint_bytes", "Bytes of the latest checkpoint's packs", last)
        yield _gauge(
            "engram_pending_step_bytes",
            "Gradient bytes held by data-parallel steps waiting for ranks",
            self.engine.pending_step_bytes(),
        )
        yield _gauge("engram_uptime_seconds", "Seconds since the daemon started", stats.uptime_s)
        for kind, pause in stats.pauses.items():
            name = {"flushes": "flushes", "checkpoints": "checkpoints_taken"}[kind]
            yield _gauge(
                f"engram_{name}", f"{kind.capitalize()} since the daemon started", pause.count
            )
            yield _gauge(
                f"engram_{name}_longest_hold_seconds",
                f"The longest that one of the {kind} held pushes off (lookups wait for none)",
                pause.longest_hold_s,
            )
            yield _gauge(
                f"engram_{name}_longest_seconds",
                f"The longest that one of the {kind} took in all",
                pause.longest_total_s,
            )
        if stats.follow.leader:
            yield _gauge(
                "engram_followed_checkpoint",
                "The leader's checkpoint a follower's tables equal",
                stats.follow.checkpoint,
            )
            yield _gauge(
                "engram_follow_failing",
                "1 while the follower cannot catch up with its leader",
                1 if stats.follow.error else 0,
            )


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text)
    family.add_metric([], value)
    return family
