"""Exactly-once pushes: which (client_id, sequence) pairs have been applied.

Each client keeps a window of the last WINDOW sequence numbers it used. A sequence inside
the window is a duplicate if recorded; one below the window is taken as applied long ago (a
client retries within seconds, not thousands of pushes later).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

WINDOW = 4096
MAX_CLIENTS = 16384


class _Window:
    def __init__(self, highest: int = 0, recent: set[int] | None = None) -> None:
        self.highest = highest
        self.recent = recent or set()
        self.lock = threading.Lock()

    def seen(self, sequence: int) -> bool:
        return sequence <= self.highest - WINDOW or sequence in self.recent

    def record(self, sequence: int) -> None:
        self.recent.add(sequence)
        self.highest = max(self.highest, sequence)
        # Sequences below the window count as seen anyway: drop them now and then, not at
        # every push (that would cost a pass over the window each time).
        if len(self.recent) > 2 * WINDOW:
            floor = self.highest - WINDOW
            self.recent = {s for s in self.recent if s > floor}

    def to_json(self) -> dict[str, Any]:
        floor = self.highest - WINDOW
        return {"highest": self.highest, "recent": sorted(s for s in self.recent if s > floor)}


class ClientWindows:
    def __init__(
        self, saved: dict[str, dict[str, Any]] | None = None, max_clients: int = MAX_CLIENTS
    ) -> None:
        self._lock = threading.Lock()
        self._max_clients = max_clients
        self._windows: OrderedDict[str, _Window] = OrderedDict(
            (client, _Window(w["highest"], set(w["recent"]))) for client, w in (saved or {}).items()
        )

    def window(self, client_id: str) -> _Window:
        with self._lock:
            window = self._windows.get(client_id)
            if window is None:
                window = self._windows[client_id] = _Window()
                while len(self._windows) > self._max_clients:
                    self._windows.popitem(last=False)
            else:
                self._windows.move_to_end(client_id)
            return window

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            windows = list(self._windows.items())
        return {client: w.to_json() for client, w in windows}
