"""The benchmarks' own bookkeeping, on inputs small enough for a test (timings are not checked:
those belong to ``make bench``)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.common import cpu_seconds, main_thread_cpu_seconds, traces_lost
from bench.knowledge import SHAPES, _retrieval
from bench.procs import Pinning, Servers
from sqlalchemy import MetaData, create_engine, select

from flowhost.knowledge.lancedb_store import IVF_MIN_ROWS
from flowhost.store.traces import TraceNames, trace_table

pytestmark = pytest.mark.anyio
CHUNKS = 3000


async def test_knowledge_recall_is_measured_against_the_right_exact_results(
    tmp_path: Path,
) -> None:
    # Below IVF_MIN_ROWS chunks the table has no vector index, so every vector search is
    # exact: the benchmark's recall, against its own numpy search of the same filtered rows
    # (computed ahead for every query, the shapes taking turns), must come out (near) 1.0. A
    # query paired with another query's exact results would score near 0.
    assert CHUNKS < IVF_MIN_ROWS
    out = await _retrieval(CHUNKS, 4, tmp_path, "uniform")
    assert list(out["shapes"]) == list(SHAPES)
    assert out["lancedb_count_p50_ms"] > 0
    for name, shape in out["shapes"].items():
        assert shape["recall_at_10"] >= 0.95, name  # float ties at rank 10 aside
        assert 0 < shape["p50_ms"] <= shape["p95_ms"], name
    rows = {name: shape["rows"] for name, shape in out["shapes"].items()}
    assert rows["no rag_options (all 10 bases)"] == CHUNKS
    assert rows["pipeline_ids (1 of 10 bases)"] == CHUNKS // 10
    assert rows["file_ids (2 files)"] == 10  # file_11 (file_303 is beyond 3,000 chunks), 2 bases


def test_the_main_threads_cpu_is_told_apart_from_the_other_threads() -> None:
    """``bench simple`` shows the CPU a server spends outside its event loop's thread (the
    trace store's writer): a thread that burns CPU here counts in the process, not the main."""
    pid = os.getpid()
    total0, main0 = cpu_seconds(pid), main_thread_cpu_seconds(pid)

    def burn() -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.3:
            pass

    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    total, main = cpu_seconds(pid) - total0, main_thread_cpu_seconds(pid) - main0
    assert total >= 0.25
    assert main <= total - 0.2
    assert main_thread_cpu_seconds(2**22 + 1) == 0.0  # no such process


def test_instruction_counts_are_repeatable_and_see_the_app() -> None:
    # bench.instructions is for A/B on a noisy machine: the same target counts the same, and
    # flowhost's echo app counts more than the bare one (tracing off, short runs); the floor
    # (its trace rows written inside the counted window) more than bare, less than flowhost
    from concurrent.futures import ThreadPoolExecutor

    from bench.instructions import count

    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    targets = ["bare", "bare", "off", "floor"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        bare, again, off, floor = pool.map(lambda t: count(t, 320, warmup=10), targets)
    assert abs(bare - again) <= 0.02 * bare
    assert off > 1.5 * bare > 0
    assert bare < floor < off


def test_lost_traces_are_read_from_a_real_servers_metrics(
    server_factory: Callable[..., Any],
) -> None:
    """``bench simple`` fails a flowhost that skipped tracing work: it reads the counter the
    server really exports (a wrong metric name would read 0 for ever)."""
    echo = Path(__file__).resolve().parents[1] / "examples" / "flows" / "echo"
    server = server_factory(echo, "--no-history")
    text = httpx.get(f"{server.url}/metrics").text
    assert 'flowhost_trace_runs_lost_total{reason="dropped"} 0.0' in text
    assert traces_lost(server.port) == 0.0


def test_the_floor_app_answers_as_flowhost_and_stores_a_trace_row_flowhost_reads(
    tmp_path: Path,
) -> None:
    """``bench simple``'s floor server does the echo app's durable work: the same answer, and
    each run's trace as a row of flowhost's trace table that flowhost's own types read."""
    with Servers(Pinning.detect(enabled=False)) as servers:
        floor = servers.start(
            "floor", ["-m", "bench.floor_app", "--data-dir", str(tmp_path)], cpus=None
        )
        with httpx.Client(base_url=floor.url) as client:
            answer = client.post("/", json={"question": "hi"}, headers={"x-request-id": "r-1"})
            bad = client.post("/", json={"question": 3})
        assert (answer.status_code, answer.content) == (200, b'{"answer":"echo: hi"}')
        assert answer.headers["x-request-id"] == "r-1"
        assert bad.status_code == 400
        table = trace_table(TraceNames("floor"), MetaData())
        engine = create_engine(f"sqlite:///{tmp_path / 'floor.db'}")
        deadline = time.monotonic() + 10
        try:
            while True:  # written within BATCH_WINDOW of the answer
                with engine.connect() as conn:
                    rows = conn.execute(select(table)).mappings().all()
                if rows or time.monotonic() > deadline:
                    break
        finally:
            engine.dispose()
    assert len(rows) == 1
    row = rows[0]
    assert row["trace_id"] == answer.headers["x-trace-id"]
    assert row["start_time"] <= row["end_time"]
    assert row["start_time"].tzinfo is not None  # flowhost's UTCDateTime read the stored text
    assert row["attributes"]["flowhost.request_id"] == "r-1"
    assert json.loads(row["attributes"]["output.value"]) == {"answer": "echo: hi"}
    assert [s["name"] for s in row["spans"]] == ["echo"]
