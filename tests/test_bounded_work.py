"""Small requests do small work: metadata calls and checkpoints of a huge table touching a
few rows neither scan nor map its bitmaps (a gigabyte each at ten billion rows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, "tests")
from store_helpers import push_command, table_spec
from store._proto.engram.store.v1 import store_pb2 as pb
from store.engine import StoreEngine

engine = StoreEngine(sys.argv[1], overcommit_disk=True)
engine.create_table(table_spec("huge", num_rows=10**10, dim=1, optimizer="adam"))
engine.push(push_command("huge", [5, 9_999_999_999], np.ones((2, 1), np.float32)))
info = engine.table("huge").status()
engine.list_tables()
engine.checkpoint(full=False)
engine.push(push_command("huge", [7], np.ones((1, 1), np.float32)))
engine.checkpoint(full=False)
engine.checkpoint(full=True)
engine.restore(2)
engine.close()
engine = StoreEngine(sys.argv[1], overcommit_disk=True)
after = engine.table("huge").status()
engine.close()
print(json.dumps({
    "written": [info.written_rows, after.written_rows],
    "step": after.step,
    # The peak resident memory of this program (getrusage would count the parent's, which
    # fork handed over before exec).
    "max_rss_mb": next(
        int(line.split()[1]) // 1024
        for line in open("/proc/self/status")
        if line.startswith("VmHWM:")
    ),
}))
"""


def test_a_ten_billion_row_table_is_described_checkpointed_and_restored_in_small_memory(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(run.stdout)
    assert result["written"] == [2, 3] and result["step"] == 2
    # Python, numpy and the extension take about 60 MB; scanning either bitmap of the rows
    # or of the optimizer state would map 1.25 GB.
    assert result["max_rss_mb"] < 300, result
