"""A bound on the bytes that the daemon's lookup answers hold together.

Each streamed chunk is gathered into its message's bytes, which gRPC then holds until it is
sent; a batch's lookups answered in its message hold their rows until the reply is sent.
Every such answer takes its bytes from one budget (`serve --max-answer-bytes`) before it
gathers a row, and gives them back once gRPC has taken the next chunk or the call has ended,
so that however many clients ask at once, the daemon's memory for answers stays under the
budget: a request that does not fit waits for room, and one that waits too long is refused
(RESOURCE_EXHAUSTED) rather than queued without bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from store.errors import ResourceExhaustedError

DEFAULT_MAX_ANSWER_BYTES = 256 << 20
# Copies of an answer's rows alive at once: the message's bytes as gathered, and gRPC's own
# copy of them while it sends.
COPIES_PER_ANSWER = 2
# How long an answer waits for room before it is refused.
WAIT_S = 30.0


class AnswerBudget:
    def __init__(self, max_bytes: int = DEFAULT_MAX_ANSWER_BYTES, wait_s: float = WAIT_S) -> None:
        self.max_bytes = max_bytes
        self.wait_s = wait_s
        self._in_use = 0
        self._peak = 0
        self._room = threading.Condition()

    def take(self, rows_bytes: int) -> int:
        """Takes the bytes an answer of `rows_bytes` bytes of rows holds; returns them, to
        give back. An answer larger than the whole budget runs alone."""
        held = rows_bytes * COPIES_PER_ANSWER
        deadline = time.monotonic() + self.wait_s
        with self._room:
            while self._in_use and self._in_use + held > self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ResourceExhaustedError(
                        f"the daemon's lookup answers hold {self._in_use} bytes of its "
                        f"{self.max_bytes} (serve --max-answer-bytes), and this answer's "
                        f"{held} did not fit within {self.wait_s:g} s: try again"
                    )
                self._room.wait(left)
            self._in_use += held
            self._peak = max(self._peak, self._in_use)
        return held

    def give_back(self, held: int) -> None:
        with self._room:
            self._in_use -= held
            self._room.notify_all()

    @contextmanager
    def holding(self, rows_bytes: int) -> Iterator[None]:
        held = self.take(rows_bytes)
        try:
            yield
        finally:
            self.give_back(held)

    @property
    def peak_bytes(self) -> int:
        with self._room:
            return self._peak
