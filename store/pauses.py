"""How long the daemon's durable steps hold pushes off, and how long they take: the figures
behind the docs' promise that a flush holds a push for at most the pushes in flight, and
behind the `engram_*_hold_seconds` metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Pause:
    """One kind of step (flushes, checkpoints): how many ran, the longest that one held
    pushes off, the longest that one took in all, and the last of each."""

    count: int = 0
    longest_hold_s: float = 0.0
    longest_total_s: float = 0.0
    last_hold_s: float = 0.0
    last_total_s: float = 0.0

    def record(self, hold_s: float, total_s: float) -> None:
        self.count += 1
        self.last_hold_s, self.last_total_s = hold_s, total_s
        self.longest_hold_s = max(self.longest_hold_s, hold_s)
        self.longest_total_s = max(self.longest_total_s, total_s)


@dataclass
class Pauses:
    flushes: Pause = field(default_factory=Pause)
    checkpoints: Pause = field(default_factory=Pause)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, kind: str, hold_s: float, total_s: float) -> None:
        with self._lock:
            getattr(self, kind).record(hold_s, total_s)

    def snapshot(self) -> dict[str, Pause]:
        with self._lock:
            return {
                "flushes": Pause(**vars(self.flushes)),
                "checkpoints": Pause(**vars(self.checkpoints)),
            }
