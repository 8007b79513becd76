"""What verbs print: one plain JSON document with `--json` (numbers as numbers, every field
present, shapes listed in docs/reference/cli.md), otherwise lines for people."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """`value` as JSON-ready Python: dataclasses as objects, arrays as nested lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def emit(as_json: bool, data: Any, human: str) -> None:
    print(json.dumps(plain(data)) if as_json else human)
