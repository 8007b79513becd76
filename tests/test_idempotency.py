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


def test_the_number_of_client_windows_is_bounded() -> None:
    windows = ClientWindows(max_clients=3)
    for client in ("a", "b", "c"):
        windows.window(client).record(1)
    windows.window("a")  # used again: "b" is now the least recently used
    windows.window("d").record(1)
    assert sorted(windows.snapshot()) == ["a", "c", "d"]
