"""The daemon's record of applied (client_id, sequence) pairs."""

from __future__ import annotations

from store.idempotency import WINDOW, ClientWindows


def test_the_idempotency_window_remembers_the_last_sequences() -> None:
    window = ClientWindows().window("client")
    for sequence in range(1, 3 * WINDOW):
        if sequence % 7:  # some sequences never arrive
            window.record(sequence)
    highest = 3 * WINDOW - 1
    assert window.seen(1) and window.seen(highest - WINDOW), "below the window: applied"
    assert window.seen(highest) and window.seen(highest - 1)
    missing = next(s for s in range(highest - WINDOW + 1, highest) if s % 7 == 0)
    assert not window.seen(missing), "a sequence in the window that never came is new"
    saved = window.to_json()
    assert len(saved["recent"]) <= WINDOW and min(saved["recent"]) > highest - WINDOW
