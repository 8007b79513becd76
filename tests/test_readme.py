"""The README's code examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT


def test_readme_python_examples_run(
    tokenizer_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) >= 2
    code = "\n".join(blocks).replace('"data/engram-hash/tokenizer.json"', repr(str(tokenizer_path)))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "layer1.engram").exists()
    assert (tmp_path / "engram-data" / "catalog.lmdb").is_dir()
    assert namespace["rows"].shape == (1, 4, 16, 32)  # type: ignore[attr-defined]
