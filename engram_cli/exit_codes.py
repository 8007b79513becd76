"""The command line's exit statuses, one meaning each."""

from __future__ import annotations

EXIT_OK = 0
EXIT_DECLINED = 1
EXIT_USAGE = 2
EXIT_FAILURE = 3
EXIT_STARTUP_FAILURE = 4
EXIT_NO_DAEMON = 5

MEANINGS = {
    EXIT_OK: "done",
    EXIT_DECLINED: "not done: the confirmation was declined (drop-table, restore)",
    EXIT_USAGE: "bad command line (unknown verb or flag, missing argument, a serve setting "
    "out of its range)",
    EXIT_FAILURE: "the request failed (refused, bad input, a file unreadable) or verify "
    "found damage",
    EXIT_STARTUP_FAILURE: "serve could not start (port taken, data directory held by another "
    "daemon or unreadable, a restore needed or failed)",
    EXIT_NO_DAEMON: "no daemon answers at --address",
}


def describe_exit_codes() -> str:
    return "exit statuses:\n" + "\n".join(f"  {code}  {text}" for code, text in MEANINGS.items())
