"""The knowledge tables: created by the k0001 migration, matching ``kb_tables`` (every backend)."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from flowhost.knowledge.repository import KnowledgeRepository
from flowhost.knowledge.tables import kb_tables
from flowhost.store import Store
from flowhost.testing.databases import drop_service

pytestmark = pytest.mark.anyio
ENV = {"mysql": "FLOWHOST_TEST_MYSQL_URL", "postgres": "FLOWHOST_TEST_POSTGRES_URL"}


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}"
    value = os.environ.get(ENV[request.param], "")
    if not value:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {ENV[request.param]} is not set")
        pytest.skip(f"{ENV[request.param]} is not set")
    return value


async def test_migration_creates_the_tables_the_code_uses(
    url: str, tmp_path: Path, base_values: Callable[..., dict[str, Any]]
) -> None:
    service = f"kb_{uuid.uuid4().hex[:8]}"
    store = await Store.open(url, data_dir=tmp_path, service=service)
    try:
        expected = kb_tables(store.service)

        def columns(sync_conn: object) -> dict[str, set[str]]:
            insp = inspect(sync_conn)
            return {
                t.name: {c["name"] for c in insp.get_columns(t.name)}
                for t in (expected.base, expected.doc, expected.blob, expected.job)
            }

        async with store.engine.connect() as conn:
            found = await conn.run_sync(columns)
        for table in (expected.base, expected.doc, expected.blob, expected.job):
            assert found[table.name] == {c.name for c in table.columns}
        repo = KnowledgeRepository(store)
        base = await repo.create_base(base_values("p1", "n"))
        doc, job = await repo.add_document(
            {
                "file_id": "file_1",
                "pipeline_id": "p1",
                "name": "a.txt",
                "file_type": "txt",
                "size": 3,
                "sha256": "0" * 64,
                "tags": ["中文"],
                "doc_metadata": {"k": "v"},
            },
            b"\x00" * 100_000,
            "job_1",
        )
        assert await repo.get_blob("file_1") == b"\x00" * 100_000
        assert (await repo.list_bases())[0].document_count == 1
        assert base.pipeline_id == "p1"
        assert doc.tags == ["中文"]
        assert job.status == "pending"
        # what every retrieval looks up, by statements built once (column.in_(values) would
        # leave a reference cycle a call: 10 objects for the garbage collector)
        gc.collect()
        gc.disable()
        try:
            for _ in range(5):
                assert [b.pipeline_id for b in await repo.get_bases(["p1", "nope"])] == ["p1"]
                assert await repo.files_of(["file_1", "nope"]) == {"file_1": "p1"}
            garbage = gc.collect()
        finally:
            gc.enable()
        assert garbage == 0
        await repo.delete_base("p1")
    finally:
        await store.close()
        await drop_service(url, service)  # every table the migrations made, not only kb's
