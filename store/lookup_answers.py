"""How the engine answers a lookup whose keys it has decoded: rows written into the
caller's shared buffer, rows in one message (each lookup of a batch), or rows streamed in
chunks of at most a message each, every chunk gathered straight into its message's bytes
as it is sent (`store.conversions.chunk_bytes`). Every key is checked before any row is
written or sent."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from store import _native
from store.answer_budget import AnswerBudget
from store.errors import InvalidArgumentError, ResourceExhaustedError
from store.requests import Lookup, Packed, PendingRows, Push, RowChunk, SharedRange, TokenLookup
from store.served_table import ServedTable
from store.shared_buffers import RequestBuffers
from store.spec import (
    FLOAT_DTYPES,
    QUANTIZED_DTYPES,
    TABLE_DTYPES,
    TableSpec,
    row_bytes,
    row_width,
)

# A streamed chunk's rows when the client names no size, and the most the server sends in
# one chunk whatever the client asks: a few MiB, so that a stream holds that much at a time.
DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_MAX_CHUNK_BYTES = 4 << 20
# Room a reply keeps beside its rows for its framing and its other fields.
REPLY_HEADROOM_BYTES = 1 << 16


@dataclass(frozen=True)
class LookupAnswers:
    """Answers within the daemon's limits: rows a lookup may ask for, bytes a message may
    carry."""

    max_lookup_rows: int
    max_message_bytes: int
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
    budget: AnswerBudget = field(default_factory=AnswerBudget)

    @property
    def rows_room(self) -> int:
        """Bytes of rows one answer message may carry beside its framing."""
        return self.max_message_bytes - REPLY_HEADROOM_BYTES

    def answer(
        self,
        table: ServedTable,
        keys: _native.Keys,
        shape: list[int],
        request: Lookup | TokenLookup,
        buffers: RequestBuffers,
    ) -> Iterator[RowChunk]:
        if request.out is not None:
            answer = self.into_buffer(table, keys, shape, request.dtype, request.out, buffers)
            return iter([answer])
        return self.stream(table, keys, shape, request.dtype, request.rows_per_chunk)

    def check_row_fits(self, spec: TableSpec) -> None:
        """Refuses a table whose rows as float32 (how lookups answer and pushes send by
        default, and no stored dtype is wider) are larger than one message carries: no
        remote client could read or push one, and answering would gather a row larger than
        any message before failing."""
        row = row_bytes("float32", spec.dim)
        if row > self.rows_room:
            raise ResourceExhaustedError(
                f"a row of dim {spec.dim} takes {row} bytes as float32, more than one "
                f"message carries ({self.rows_room} bytes; the daemon's --max-message-bytes less "
                f"{REPLY_HEADROOM_BYTES} for framing)"
            )

    def check(self, table: ServedTable, keys: _native.Keys, dtype: str) -> str:
        """The row dtype, after checking it and the size."""
        dtype = dtype or "float32"
        if dtype not in TABLE_DTYPES:
            raise InvalidArgumentError(f"dtype must be one of {TABLE_DTYPES}, got {dtype!r}")
        stored = table.spec.dtype
        if dtype in QUANTIZED_DTYPES and stored in QUANTIZED_DTYPES and dtype != stored:
            raise InvalidArgumentError(
                f"table {table.name!r} stores {stored} rows: read them as {stored} (packed) or "
                f"as one of {FLOAT_DTYPES}, not as {dtype}"
            )
        total = len(keys)
        if total > self.max_lookup_rows:
            raise ResourceExhaustedError(
                f"lookup of {total} rows exceeds the server's limit of {self.max_lookup_rows}"
            )
        return dtype

    def into_buffer(
        self,
        table: ServedTable,
        keys: _native.Keys,
        shape: list[int],
        dtype: str,
        out: SharedRange,
        buffers: RequestBuffers,
    ) -> RowChunk:
        dtype = self.check(table, keys, dtype)
        # Checks every key before writing any row.
        table.native.lookup(keys, dtype, into=buffers.region(out))
        total = len(keys)
        table.counters.add(lookups=1, rows_looked_up=total)
        return RowChunk(
            offset=0,
            total_rows=total,
            rows=Packed(dtype, (total, row_width(dtype, table.spec.dim))),
            result_shape=(*shape, row_width(dtype, table.spec.dim)),
            in_shared_buffer=True,
        )

    def check_reply_size(
        self,
        pushes: Sequence[Push],
        lookups: Sequence[Lookup],
        lookup_tables: list[ServedTable],
        lookup_keys: list[_native.Keys],
        dtypes: list[str],
    ) -> None:
        """Refuses a batch whose in-message rows could not be sent back."""
        in_message = sum(
            len(k) * row_bytes(dtype, table.spec.dim)
            for table, k, lookup, dtype in zip(
                lookup_tables, lookup_keys, lookups, dtypes, strict=True
            )
            if lookup.out is None
        )
        # Pushes that return their rows in the message return as many bytes as they sent.
        in_message += sum(
            len(push.grads.data)
            for push in pushes
            if push.return_rows and push.grads.buffer is None
        )
        if in_message > self.rows_room:
            raise ResourceExhaustedError(
                f"a batch answering {in_message} bytes of rows in its message exceeds the "
                f"limit of {self.rows_room}: give it shared buffers (`out`, `grads_buffer`), "
                "or split it (Lookup streams)"
            )

    @staticmethod
    def in_message(
        table: ServedTable, keys: _native.Keys, shape: list[int], dtype: str
    ) -> RowChunk:
        total = len(keys)
        table.counters.add(lookups=1, rows_looked_up=total)
        width = row_width(dtype, table.spec.dim)
        return RowChunk(
            offset=0,
            total_rows=total,
            rows=Packed(dtype, (total, width), table.native.lookup(keys, dtype)),
            result_shape=(*shape, width),
        )

    def stream(
        self,
        table: ServedTable,
        keys: _native.Keys,
        shape: list[int],
        dtype: str,
        rows_per_chunk: int,
    ) -> Iterator[RowChunk]:
        dtype = self.check(table, keys, dtype)
        # Every key is checked before the first chunk leaves: nothing is sent partially.
        table.native.check_keys(keys)
        table.counters.add(lookups=1, rows_looked_up=len(keys))
        size = row_bytes(dtype, table.spec.dim)
        # A chunk is one message: never more than a message may carry, whatever was asked.
        fits = self.rows_room // size
        if fits == 0:  # a table made by a daemon that allowed larger messages
            raise ResourceExhaustedError(
                f"a row of table {table.name!r} takes {size} bytes as {dtype}, more than one "
                "message carries: read it through a shared buffer"
            )
        # The client may ask for smaller chunks, never for larger ones than the server's.
        largest = max(1, self.max_chunk_bytes // size)
        chunk = min(rows_per_chunk or max(1, DEFAULT_CHUNK_BYTES // size), largest, fits)
        return self._chunks(table, keys, shape, dtype, chunk, len(keys))

    def _chunks(
        self,
        table: ServedTable,
        keys: _native.Keys,
        shape: list[int],
        dtype: str,
        chunk: int,
        total: int,
    ) -> Iterator[RowChunk]:
        """The chunks, each holding its bytes of the budget from before its rows are gathered
        (by the consumer, as it makes the message) until the next is asked for, or the
        stream ends or is dropped."""
        width = row_width(dtype, table.spec.dim)
        result_shape = (*shape, width)
        size = row_bytes(dtype, table.spec.dim)
        for offset in range(0, max(total, 1), chunk):
            count = min(chunk, total - offset)
            with self.budget.holding(count * size):
                yield RowChunk(
                    offset=offset,
                    total_rows=total,
                    rows=Packed(dtype, (count, width)),
                    result_shape=result_shape if offset == 0 else (),
                    pending=PendingRows(table.native, keys, offset, offset + count),
                )
