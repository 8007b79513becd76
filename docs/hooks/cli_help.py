"""A MkDocs hook: the command line's reference page gets every verb's `--help`, as the
installed `engram-store` prints it, when the site is built (so it cannot drift)."""

from __future__ import annotations

import os
from typing import Any

MARKER = "<!-- engram-store help -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal's width
    from engram_cli import build_parser

    sections = [
        f"## `{f'engram-store {name}'.strip()}`\n\n```text\n{text.rstrip()}\n```"
        for name, text in build_parser().help_texts().items()
    ]
    return markdown.replace(MARKER, "\n\n".join(sections))
