"""Asking before a verb deletes what it cannot give back (drop-table, restore)."""

from __future__ import annotations

import sys

from engram_cli.exit_codes import EXIT_DECLINED, EXIT_USAGE


def declined(yes: bool, consequence: str, summary: str, answer: str, not_done: str) -> int | None:
    """None when the deletion may go ahead: `--yes` was given, or the user typed `answer`
    at the terminal after reading `summary`; otherwise the exit status to return. Not at a
    terminal (a script), it needs `--yes`: no one is there to answer."""
    if yes:
        return None
    if not sys.stdin.isatty():
        print(
            f"engram-store: {consequence}; add --yes to confirm when not at a terminal",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(f"{summary}\nType {answer!r} to go on: ", end="")
    if input().strip() != answer:
        print(not_done, file=sys.stderr)
        return EXIT_DECLINED
    return None
