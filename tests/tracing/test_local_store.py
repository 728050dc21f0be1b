"""The local span store: batched background writes, queries, retention pruning, migration."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import REGISTRY
from sqlalchemy import Connection, MetaData, select
from tracing_support import MakeTraced

from flowhost.store import Store
from flowhost.store.names import service_names
from flowhost.store.traces import (
    RunRecord,
    SpanEntry,
    SpanRecord,
    TraceQuery,
    TraceRepository,
    sqlite_time_text,
    trace_table,
    utc_from_ns,
)
from flowhost.testing.databases import drop_service
from flowhost.tracing.pipeline import SpanPipeline

pytestmark = pytest.mark.anyio


def ns(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def record(trace: str, span: str, *, age_days: float, **kw: Any) -> RunRecord:
    start = ns(datetime.now(UTC) - timedelta(days=age_days))
    fields: dict[str, Any] = {
        "trace_id": trace * 32,
        "span_id": span * 16,
        "parent_span_id": None,
        "name": "app",
        "status": "completed",
        "run_id": f"run-{trace}",
        "app_id": "app",
        "session_id": None,
        "start_ns": start,
        "end_ns": start + 5_000_000,
        "duration_us": 5000,
        "input_tokens": None,
        "output_tokens": None,
        "attributes": {"flowhost.span_type": "flow"},
        "spans": [],
    }
    fields.update(kw)
    return RunRecord(**fields)


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[TraceRepository]:
    store = await Store.open(None, data_dir=tmp_path, service="spans")
    repo = TraceRepository.for_store(store)
    yield repo
    await repo.close()
    await store.close()


async def test_spans_are_written_in_the_background(traced: MakeTraced) -> None:
    t = await traced(store=True)
    await t.run("branch", {"question": "is it stored?"})
    repo = t.tracing.repository
    assert repo is not None
    records: list[SpanRecord] = []  # one row per run, expanded into its spans
    with anyio.fail_after(10):  # poll: the writer's batch window is short
        while len(records) < 6:
            records = await repo.get_trace(t.last_trace_id)
            await anyio.sleep(0.02)
    root = next(r for r in records if r.span_type == "flow")
    assert root.name == "branch"
    assert root.attributes["flowhost.app_id"] == "branch"
    assert root.status == "completed"
    assert root.parent_span_id is None
    assert {r.parent_span_id for r in records if r is not root} == {root.span_id}
    assert {r.name for r in records} >= {"classify", "join", "answer_statement"}
    assert next(r for r in records if r.name == "answer_statement").status == "skipped"
    runs, total = await repo.list_runs(TraceQuery(app_id="branch"), limit=10, offset=0)
    assert total == 1
    assert runs[0].trace_id == t.last_trace_id


async def test_list_filters_and_pages(repo: TraceRepository) -> None:
    node = SpanEntry(
        "4" * 16, "3" * 16, "llm_node", "llm", "completed", 1, 2001, {"gen_ai.request.model": "m"}
    )
    await repo.add_runs(
        [
            record("a", "1", age_days=0.3, session_id="s1"),
            record("b", "2", age_days=0.2, status="failed", app_id="other"),
            record("c", "3", age_days=0.1, session_id="s1", spans=[node]),
        ]
    )
    runs, total = await repo.list_runs(TraceQuery(), limit=2, offset=0)
    assert total == 3
    assert [r.trace_id[0] for r in runs] == ["c", "b"]  # newest first
    runs, _ = await repo.list_runs(TraceQuery(), limit=2, offset=2)
    assert [r.trace_id[0] for r in runs] == ["a"]
    assert (await repo.list_runs(TraceQuery(session_id="s1"), limit=9, offset=0))[1] == 2
    assert (await repo.list_runs(TraceQuery(status="failed"), limit=9, offset=0))[1] == 1
    assert (await repo.list_runs(TraceQuery(app_id="other"), limit=9, offset=0))[1] == 1
    since = datetime.now(UTC) - timedelta(days=0.15)
    assert (await repo.list_runs(TraceQuery(since=since), limit=9, offset=0))[1] == 1
    assert (await repo.list_runs(TraceQuery(until=since), limit=9, offset=0))[1] == 2
    root, child = await repo.get_trace("c" * 32)
    assert root.span_type == "flow"
    assert child.parent_span_id == root.span_id
    assert child.span_type == "llm"
    assert child.duration_us == 2
    # what the row holds elsewhere comes back with the stored attributes
    assert child.attributes == {
        "flowhost.span_type": "llm",
        "flowhost.node": "llm_node",
        "flowhost.run_id": "run-c",
        "gen_ai.request.model": "m",
        "flowhost.status": "completed",
    }
    assert root.attributes == {
        "flowhost.span_type": "flow",
        "openinference.span.kind": "CHAIN",
        "flowhost.app_id": "app",
        "flowhost.run_id": "run-c",
        "flowhost.status": "completed",
    }


async def test_attributes_the_columns_hold_are_stored_once(traced: MakeTraced) -> None:
    t = await traced(store=True)
    await t.run("echo", {"question": "stored once?"})
    await t.tracing.flush()
    repo = t.tracing.repository
    assert repo is not None
    table = repo.table

    def raw(conn: Connection) -> Any:
        return conn.execute(select(table.c.run_id, table.c.attributes, table.c.spans)).one()

    assert t.store is not None
    run_id, attributes, spans = await t.store.runner.read(raw)
    derived = {"flowhost.span_type", "flowhost.app_id", "flowhost.run_id", "flowhost.status"}
    assert not derived & set(attributes)
    assert "openinference.span.kind" not in attributes  # a root's is always CHAIN
    assert not (derived | {"flowhost.node"}) & set(spans[0]["attributes"])
    assert spans[0]["attributes"]["openinference.span.kind"] == "CHAIN"  # by node type: kept
    node, root = await t.spans()  # the exporters get them all
    assert (root.attributes or {})["flowhost.run_id"] == run_id
    assert (root.attributes or {})["flowhost.status"] == "completed"
    assert (node.attributes or {})["flowhost.node"] == "echo"


async def test_rows_that_hold_them_twice_read_the_same(repo: TraceRepository) -> None:
    """Rows written before the columns' attributes were left out of the JSON."""
    full = {"flowhost.span_type": "flow", "flowhost.app_id": "app", "flowhost.run_id": "run-d"}
    node = SpanEntry(
        "6" * 16,
        "5" * 16,
        "n",
        "python",
        "failed",
        1,
        2,
        {"flowhost.span_type": "python", "flowhost.node": "n", "flowhost.status": "failed"},
    )
    await repo.add_runs([record("d", "5", age_days=0.1, attributes=full, spans=[node])])
    root, child = await repo.get_trace("d" * 32)
    assert root.attributes == {
        "flowhost.span_type": "flow",
        "openinference.span.kind": "CHAIN",
        "flowhost.app_id": "app",
        "flowhost.run_id": "run-d",
        "flowhost.status": "completed",
    }
    assert child.attributes == {
        "flowhost.span_type": "python",
        "flowhost.node": "n",
        "flowhost.run_id": "run-d",
        "flowhost.status": "failed",
    }


def pipeline(repo: TraceRepository | None, **kw: Any) -> SpanPipeline:
    return SpanPipeline(
        repository=repo,
        processors=[],
        resource=Resource.create({}),
        scope=InstrumentationScope("test"),
        **{"retention_days": 7.0, **kw},
    )


async def test_retention_prunes_old_spans(repo: TraceRepository) -> None:
    await repo.add_runs(
        [record("a", "1", age_days=10), record("a", "2", age_days=8), record("b", "3", age_days=1)]
    )
    assert await pipeline(repo, retention_days=0).prune() == 0
    assert await pipeline(repo, retention_days=7).prune() == 2
    assert await repo.get_trace("a" * 32) == []
    assert len(await repo.get_trace("b" * 32)) == 1


async def test_the_writer_prunes_at_start(repo: TraceRepository) -> None:
    await repo.add_runs([record("a", "1", age_days=3), record("b", "2", age_days=0)])
    writer = pipeline(repo, retention_days=1, prune_interval=3600)
    writer.start()
    try:
        with anyio.fail_after(10):
            while await repo.get_trace("a" * 32):
                await anyio.sleep(0.02)
    finally:
        await writer.aclose()
    assert len(await repo.get_trace("b" * 32)) == 1


def lost(reason: str) -> float:
    """flowhost_trace_runs_lost_total{reason} as /metrics reports it."""
    return REGISTRY.get_sample_value("flowhost_trace_runs_lost_total", {"reason": reason}) or 0.0


async def test_a_full_queue_drops_the_oldest_spans_and_says_so(
    repo: TraceRepository, caplog: pytest.LogCaptureFixture
) -> None:
    small = pipeline(repo, max_pending=3)
    before = lost("dropped")
    for i in range(4):
        small.emit(record(str(i + 1), str(i + 1), age_days=0))
    with caplog.at_level(logging.WARNING, "flowhost.tracing"):
        await small.flush()
    assert "1 runs' spans dropped" in caplog.text
    assert lost("dropped") == before + 1
    assert await repo.get_trace("1" * 32) == []  # the oldest went
    assert len(await repo.get_trace("4" * 32)) == 1


async def test_runs_the_store_refuses_are_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await Store.open(None, data_dir=tmp_path, service="spans")
    repo = TraceRepository.for_store(store)
    try:
        await store.runner.write(lambda conn: conn.exec_driver_sql(f"DROP TABLE {repo.table.name}"))
        before = lost("store_error")
        p = pipeline(repo)
        for i in range(2):
            p.emit(record(str(i + 1), str(i + 1), age_days=0))
        with caplog.at_level(logging.WARNING, "flowhost.tracing"):
            await p.flush()  # the failure is the store's: flush itself goes on
        assert "2 runs not stored" in caplog.text
        assert lost("store_error") == before + 2
    finally:
        await repo.close()
        await store.close()


def _diff(conn: Connection, service: str) -> list[Any]:
    metadata = MetaData()
    table = trace_table(service_names(service), metadata)

    def include(name: str | None, type_: str, _parent: object) -> bool:
        return type_ != "table" or name == table.name

    context = MigrationContext.configure(conn, opts={"include_name": include, "compare_type": True})
    return list(compare_metadata(context, metadata))


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("FLOWHOST_TEST_MYSQL_URL", marks=pytest.mark.mysql),
        pytest.param("FLOWHOST_TEST_POSTGRES_URL", marks=pytest.mark.postgres),
    ],
)
async def test_the_migration_matches_the_table(
    backend: str, tmp_path: Path, db_service_url: Any
) -> None:
    url = None if backend == "sqlite" else db_service_url(backend)
    service = f"trace_{datetime.now(UTC).strftime('%H%M%S%f')}"
    store = await Store.open(url, data_dir=tmp_path, service=service)
    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_diff, store.service) == []
        repo = TraceRepository.for_store(store)
        try:
            node = SpanEntry("5" * 16, "1" * 16, "n", "python", "failed", 7, 3007, {"k": "文"})
            run = record("d", "1", age_days=0, attributes={"k": "中文", "n": 1}, spans=[node])
            await repo.add_runs([run])
            got, child = await repo.get_trace("d" * 32)
        finally:
            await repo.close()
        assert {"k": "中文", "n": 1}.items() <= got.attributes.items()
        assert got.start_time.tzinfo is not None
        assert (child.span_id, child.parent_span_id, child.name) == ("5" * 16, "1" * 16, "n")
        assert (child.span_type, child.status, child.duration_us) == ("python", "failed", 3)
        assert child.attributes["k"] == "文"
    finally:
        await drop_service(store.engine.url.render_as_string(hide_password=False), store.service)
        await store.close()


async def test_run_times_round_trip_to_the_microsecond_and_compare_as_sqlalchemy_binds(
    repo: TraceRepository,
) -> None:
    """SQLite rows are bound by hand (``_sqlite_row``, times from nanoseconds): they read back
    as the same instants (truncated to the microsecond), and compare with times SQLAlchemy
    binds (``TraceQuery.since``) as its own text would."""
    utc = datetime(2026, 12, 7, 6, 30, 1, 250, tzinfo=UTC)
    whole = datetime(2026, 12, 7, 6, 30, 3, tzinfo=UTC)  # no microseconds: still 6 digits
    await repo.add_runs(
        [
            record("a", "1", age_days=0, start_ns=ns(utc) + 999, end_ns=ns(whole)),
            record("b", "2", age_days=0, start_ns=ns(whole), end_ns=ns(whole) + 1_000),
        ]
    )
    runs, _ = await repo.list_runs(TraceQuery(), limit=9, offset=0)
    got = {r.trace_id[0]: (r.start_time, r.end_time) for r in runs}
    assert got == {"a": (utc, whole), "b": (whole, whole + timedelta(microseconds=1))}
    assert got["a"][0].tzinfo == UTC
    assert [r.start_ns for r in runs] == [ns(whole), ns(utc)]
    assert utc_from_ns(ns(utc) + 999) == utc
    exact = await repo.list_runs(TraceQuery(since=whole), limit=9, offset=0)
    assert [r.trace_id[0] for r in exact[0]] == ["b"]
    later = await repo.list_runs(
        TraceQuery(since=utc + timedelta(microseconds=1)), limit=9, offset=0
    )
    assert [r.trace_id[0] for r in later[0]] == ["b"]


@pytest.mark.parametrize(
    "ns",
    [0, 1_796_678_654_000_000_999, 1_796_678_654_000_123_000, 1_796_678_654_999_999_999],
)
def test_sqlite_time_text_is_what_sqlalchemy_stores(ns: int) -> None:
    # the text SQLAlchemy's SQLite DATETIME writes: naive UTC, six digits of microseconds
    moment = datetime.fromtimestamp(ns // 1000 / 1e6, UTC).replace(tzinfo=None)
    moment = moment.replace(microsecond=ns // 1000 % 1_000_000)  # no float rounding
    assert sqlite_time_text(ns) == moment.isoformat(" ", "microseconds")
