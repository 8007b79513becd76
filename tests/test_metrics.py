"""Prometheus metrics: a scrape of a daemon that served lookups, pushes and a checkpoint
reports them, per RPC and per table."""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from daemon import daemon_thread
from prometheus_client.parser import text_string_to_metric_families

from client import DataParallelStepError, EngramClient, KeyOutOfRangeError, SyncStep


def scrape(port_file: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{port_file.read_text()}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_scrape_reports_calls_tables_and_checkpoints(tmp_path: Path) -> None:
    port_file = tmp_path / "metrics-port"
    with (
        daemon_thread(tmp_path / "data", metrics_port=0, metrics_port_file=str(port_file)) as d,
        EngramClient(d.address, shared_memory=False) as client,
    ):
        client.create_table("t", 1000, 8, optimizer="adam")
        keys = np.arange(10, dtype=np.uint64)
        for _ in range(3):
            client.push("t", keys, np.ones((10, 8), np.float32))
        client.lookup("t", np.arange(100, dtype=np.uint64))
        with pytest.raises(KeyOutOfRangeError):
            client.lookup("t", np.array([5000], np.uint64))
        client.checkpoint()
        metrics = scrape(port_file)
    table = (("table", "t"),)
    assert metrics["engram_table_pushes_total", table] == 3
    assert metrics["engram_table_rows_pushed_total", table] == 30
    assert metrics["engram_table_rows_looked_up_total", table] == 100
    assert metrics["engram_table_step", table] == 3
    assert metrics["engram_table_written_rows", table] == 10
    assert metrics["engram_table_rows", table] == 1000
    assert metrics["engram_table_row_bytes", table] == 32
    # At least the pages just written (rows, and Adam's state) are in the page cache.
    files = (tmp_path / "data" / "tables" / "t").glob("*.engram")
    cached = metrics["engram_table_page_cache_bytes", table]
    assert 2 * 4096 <= cached <= sum(f.stat().st_size for f in files)
    assert metrics["engram_requests_total", (("code", "OK"), ("method", "Push"))] == 3
    assert metrics["engram_requests_total", (("code", "OK"), ("method", "Lookup"))] == 1
    assert metrics["engram_requests_total", (("code", "OUT_OF_RANGE"), ("method", "Lookup"))] == 1
    assert metrics["engram_request_seconds_count", (("method", "Checkpoint"),)] == 1
    assert metrics["engram_response_bytes_total", (("method", "Lookup"),)] >= 100 * 8 * 4
    assert metrics["engram_checkpoints", ()] == 1
    assert metrics["engram_last_checkpoint_bytes", ()] > 10 * 8 * 4
    assert metrics["engram_pending_step_bytes", ()] == 0


@pytest.mark.serial  # timing-sensitive: run alone
def test_a_push_waiting_for_its_step_is_a_call_in_progress(tmp_path: Path) -> None:
    """Rank 0 of a two-rank step waits for rank 1, which never comes: meanwhile the scrape
    shows one Push in progress, and none once the step has failed."""
    port_file = tmp_path / "metrics-port"
    with (
        daemon_thread(tmp_path / "data", metrics_port=0, metrics_port_file=str(port_file)) as d,
        EngramClient(d.address, shared_memory=False) as client,
    ):
        client.create_table("t", 1000, 8)
        waiting = (("method", "Push"),)
        sync = SyncStep(step=1, rank=0, world_size=2, timeout_s=3.0)
        with ThreadPoolExecutor(1) as pool:
            keys, grads = np.arange(4, dtype=np.uint64), np.ones((4, 8), np.float32)
            pushed = pool.submit(client.push, "t", keys, grads, sync=sync)
            deadline = time.monotonic() + 10
            while scrape(port_file).get(("engram_requests_in_progress", waiting)) != 1:
                assert time.monotonic() < deadline, "the waiting push was never in progress"
                time.sleep(0.05)
            with pytest.raises(DataParallelStepError):
                pushed.result(timeout=30)
        assert scrape(port_file)["engram_requests_in_progress", waiting] == 0
