"""``KnowledgeRepository``: the knowledge catalogue in the SQL store (any of its backends).

Jobs are claimed with a conditional UPDATE (``WHERE status = 'pending'``), so several workers,
in one process or in replicas sharing the database, never run the same job twice. A running
job holds a lease that its worker renews; a job whose lease expired (its worker died) goes
back to pending at the next start or sweep.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import anyio
from sqlalchemy import delete, exc, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from flowhost.exceptions import InvalidInput, NotFound
from flowhost.knowledge.records import (
    Document,
    EmbeddingInfo,
    Job,
    JobStatus,
    KnowledgeBase,
    utcnow,
)
from flowhost.knowledge.tables import kb_tables
from flowhost.store import Store
from flowhost.store.engine import SQLITE_BEGIN_OPTION, translate_errors

__all__ = ["KnowledgeRepository"]


def _base(row: Mapping[Any, Any], count: int | None = None) -> KnowledgeBase:
    return KnowledgeBase(
        pipeline_id=row["pipeline_id"],
        name=row["name"],
        description=row["description"],
        type=row["kind"],
        embedding=EmbeddingInfo(
            connection=row["embedding_connection"],
            model=row["embedding_model"],
            dim=row["embedding_dim"],
        ),
        columns=list(row["columns"] or []),
        metadata_keys=list(row["metadata_keys"] or []),
        chunk_size=row["chunk_size"],
        chunk_overlap=row["chunk_overlap"],
        space=row["space"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        document_count=count,
    )


def _doc(row: Mapping[Any, Any]) -> Document:
    return Document(
        file_id=row["file_id"],
        pipeline_id=row["pipeline_id"],
        name=row["name"],
        file_type=row["file_type"],
        size=row["size"],
        sha256=row["sha256"],
        tags=list(row["tags"] or []),
        metadata=dict(row["doc_metadata"] or {}),
        status=row["status"],
        error=row["error"],
        chunk_count=row["chunk_count"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _job(row: Mapping[Any, Any]) -> Job:
    return Job(
        job_id=row["job_id"],
        pipeline_id=row["pipeline_id"],
        file_id=row["file_id"],
        status=cast(JobStatus, row["status"]),
        error=row["error"],
        progress=row["progress"],
        total=row["total"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


class KnowledgeRepository:
    def __init__(self, store: Store) -> None:
        self._engine = store.engine
        self.t = kb_tables(store.service)
        self._sqlite_writer = anyio.Lock() if store.dialect == "sqlite" else None

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        async with (
            translate_errors("reading the knowledge catalogue"),
            self._engine.connect() as conn,
        ):
            yield conn

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        async with translate_errors("writing the knowledge catalogue"):
            if self._sqlite_writer is None:
                async with self._engine.begin() as conn:
                    yield conn
                return
            async with self._sqlite_writer, self._engine.connect() as conn:
                conn = await conn.execution_options(**{SQLITE_BEGIN_OPTION: "immediate"})
                async with conn.begin():
                    yield conn

    # --- bases -------------------------------------------------------------------------------
    async def create_base(self, values: dict[str, Any]) -> KnowledgeBase:
        now = utcnow()
        row = {**values, "created_at": now, "updated_at": now}
        try:
            async with self._writing() as conn:
                await conn.execute(insert(self.t.base).values(**row))
        except Exception as e:
            if isinstance(e.__cause__, exc.IntegrityError) or isinstance(e, exc.IntegrityError):
                raise InvalidInput(
                    f"knowledge base {values['pipeline_id']!r} already exists", field="pipeline_id"
                ) from None
            raise
        return _base(row, 0)

    async def get_base(self, pipeline_id: str) -> KnowledgeBase:
        bases = await self.get_bases([pipeline_id])
        if not bases:
            raise NotFound(f"knowledge base {pipeline_id!r} not found")
        return bases[0]

    async def get_bases(self, pipeline_ids: Sequence[str]) -> list[KnowledgeBase]:
        """The existing bases among ``pipeline_ids`` (unknown ids are left out)."""
        if not pipeline_ids:
            return []
        async with self._reading() as conn:
            rows = (
                (
                    await conn.execute(
                        select(self.t.base).where(self.t.base.c.pipeline_id.in_(list(pipeline_ids)))
                    )
                )
                .mappings()
                .all()
            )
        return [_base(r) for r in rows]

    async def list_bases(self) -> list[KnowledgeBase]:
        d = self.t.doc
        counts = (
            select(d.c.pipeline_id, func.count().label("n")).group_by(d.c.pipeline_id).subquery()
        )
        statement = (
            select(self.t.base, counts.c.n)
            .outerjoin(counts, counts.c.pipeline_id == self.t.base.c.pipeline_id)
            .order_by(self.t.base.c.created_at)
        )
        async with self._reading() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_base(r, int(r["n"] or 0)) for r in rows]

    async def count_documents(self, pipeline_id: str) -> int:
        statement = select(func.count()).where(self.t.doc.c.pipeline_id == pipeline_id)
        async with self._reading() as conn:
            return int((await conn.execute(statement)).scalar_one())

    async def extend_base_keys(
        self, pipeline_id: str, *, columns: Sequence[str] = (), metadata_keys: Sequence[str] = ()
    ) -> None:
        """Add columns / metadata keys to the base's schema (order kept, no duplicates)."""
        b = self.t.base
        async with self._writing() as conn:
            row = (
                (await conn.execute(select(b).where(b.c.pipeline_id == pipeline_id)))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"knowledge base {pipeline_id!r} not found")
            cols = list(row["columns"] or [])
            keys = list(row["metadata_keys"] or [])
            new_cols = cols + [c for c in dict.fromkeys(columns) if c not in cols]
            new_keys = keys + [k for k in dict.fromkeys(metadata_keys) if k not in keys]
            if new_cols != cols or new_keys != keys:
                await conn.execute(
                    update(b)
                    .where(b.c.pipeline_id == pipeline_id)
                    .values(columns=new_cols, metadata_keys=new_keys, updated_at=utcnow())
                )

    async def delete_base(self, pipeline_id: str) -> None:
        t = self.t
        async with self._writing() as conn:
            files = select(t.doc.c.file_id).where(t.doc.c.pipeline_id == pipeline_id)
            await conn.execute(delete(t.blob).where(t.blob.c.file_id.in_(files)))
            await conn.execute(delete(t.job).where(t.job.c.pipeline_id == pipeline_id))
            await conn.execute(delete(t.doc).where(t.doc.c.pipeline_id == pipeline_id))
            result = await conn.execute(delete(t.base).where(t.base.c.pipeline_id == pipeline_id))
            if result.rowcount == 0:
                raise NotFound(f"knowledge base {pipeline_id!r} not found")

    # --- documents ---------------------------------------------------------------------------
    async def find_by_hash(self, pipeline_id: str, sha256: str) -> Document | None:
        d = self.t.doc
        statement = select(d).where(d.c.pipeline_id == pipeline_id, d.c.sha256 == sha256)
        async with self._reading() as conn:
            row = (await conn.execute(statement)).mappings().first()
        return None if row is None else _doc(row)

    async def add_document(
        self, doc: dict[str, Any], content: bytes, job_id: str
    ) -> tuple[Document, Job]:
        """Insert the document, its bytes and its pending indexing job in one transaction."""
        now = utcnow()
        drow = {
            **doc,
            "status": "pending",
            "error": None,
            "chunk_count": 0,
            "created_at": now,
            "updated_at": now,
        }
        jrow = self._new_job(job_id, doc["pipeline_id"], doc["file_id"], now)
        async with self._writing() as conn:
            await conn.execute(insert(self.t.doc).values(**drow))
            await conn.execute(insert(self.t.blob).values(file_id=doc["file_id"], content=content))
            await conn.execute(insert(self.t.job).values(**jrow))
        return _doc(drow), _job(jrow)

    @staticmethod
    def _new_job(job_id: str, pipeline_id: str, file_id: str, now: datetime) -> dict[str, Any]:
        return {
            "job_id": job_id,
            "pipeline_id": pipeline_id,
            "file_id": file_id,
            "status": "pending",
            "error": None,
            "progress": 0,
            "total": 0,
            "attempts": 0,
            "lease_until": None,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
        }

    async def get_document(self, file_id: str) -> Document:
        d = self.t.doc
        async with self._reading() as conn:
            row = (await conn.execute(select(d).where(d.c.file_id == file_id))).mappings().first()
        if row is None:
            raise NotFound(f"document {file_id!r} not found")
        return _doc(row)

    async def list_documents(
        self, pipeline_id: str, *, limit: int = 100, offset: int = 0
    ) -> list[Document]:
        d = self.t.doc
        statement = (
            select(d)
            .where(d.c.pipeline_id == pipeline_id)
            .order_by(d.c.created_at, d.c.file_id)
            .limit(limit)
            .offset(offset)
        )
        async with self._reading() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_doc(r) for r in rows]

    async def files_of(self, file_ids: Sequence[str]) -> dict[str, str]:
        """``file_id -> pipeline_id`` for the existing files among ``file_ids``."""
        if not file_ids:
            return {}
        d = self.t.doc
        statement = select(d.c.file_id, d.c.pipeline_id).where(d.c.file_id.in_(list(file_ids)))
        async with self._reading() as conn:
            rows = (await conn.execute(statement)).all()
        return {r[0]: r[1] for r in rows}

    async def get_blob(self, file_id: str) -> bytes:
        b = self.t.blob
        async with self._reading() as conn:
            value = (
                await conn.execute(select(b.c.content).where(b.c.file_id == file_id))
            ).scalar_one_or_none()
        if value is None:
            raise NotFound(f"the content of document {file_id!r} is gone")
        return bytes(value)

    async def delete_document(self, file_id: str) -> Document:
        doc = await self.get_document(file_id)
        t = self.t
        async with self._writing() as conn:
            await conn.execute(delete(t.job).where(t.job.c.file_id == file_id))
            await conn.execute(delete(t.blob).where(t.blob.c.file_id == file_id))
            await conn.execute(delete(t.doc).where(t.doc.c.file_id == file_id))
        return doc

    # --- jobs --------------------------------------------------------------------------------
    async def create_job(self, job_id: str, pipeline_id: str, file_id: str) -> Job:
        row = self._new_job(job_id, pipeline_id, file_id, utcnow())
        async with self._writing() as conn:
            await conn.execute(insert(self.t.job).values(**row))
            await conn.execute(
                update(self.t.doc)
                .where(self.t.doc.c.file_id == file_id)
                .values(status="pending", error=None, updated_at=row["created_at"])
            )
        return _job(row)

    async def get_job(self, job_id: str) -> Job:
        j = self.t.job
        async with self._reading() as conn:
            row = (await conn.execute(select(j).where(j.c.job_id == job_id))).mappings().first()
        if row is None:
            raise NotFound(f"job {job_id!r} not found")
        return _job(row)

    async def list_jobs(
        self, *, pipeline_id: str | None = None, file_id: str | None = None, limit: int = 100
    ) -> list[Job]:
        j = self.t.job
        statement = select(j).order_by(j.c.created_at.desc(), j.c.job_id).limit(limit)
        if pipeline_id is not None:
            statement = statement.where(j.c.pipeline_id == pipeline_id)
        if file_id is not None:
            statement = statement.where(j.c.file_id == file_id)
        async with self._reading() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_job(r) for r in rows]

    async def claim_next(self, lease: timedelta) -> Job | None:
        """Take the oldest pending job (status running, leased; its document running), or None.

        A job whose file has another job running is left pending: two jobs of one document
        never overlap (their chunk writes and deletes would mix).
        """
        j = self.t.job
        other = j.alias("other")
        busy_file = (
            select(other.c.job_id)
            .where(other.c.file_id == j.c.file_id, other.c.status == "running")
            .exists()
        )
        for _ in range(5):
            async with self._reading() as conn:
                row = (
                    (
                        await conn.execute(
                            select(j)
                            .where(j.c.status == "pending", ~busy_file)
                            .order_by(j.c.created_at, j.c.job_id)
                            .limit(1)
                        )
                    )
                    .mappings()
                    .first()
                )
            if row is None:
                return None
            now = utcnow()
            claimed = {
                "status": "running",
                "started_at": now,
                "lease_until": now + lease,
                "attempts": row["attempts"] + 1,
                "error": None,
            }
            async with self._writing() as conn:
                result = await conn.execute(
                    update(j)
                    .where(j.c.job_id == row["job_id"], j.c.status == "pending")
                    .values(**claimed)
                )
                if result.rowcount == 1:
                    await conn.execute(
                        update(self.t.doc)
                        .where(self.t.doc.c.file_id == row["file_id"])
                        .values(status="running", error=None, updated_at=now)
                    )
            if result.rowcount == 1:
                return _job({**row, **claimed})
        return None

    async def job_inputs(self, job: Job) -> tuple[Document, KnowledgeBase, bytes | None, bool]:
        """What a job reads, in one go: its document, base and content (None: gone), and
        whether the file may have chunks already (False only for the first attempt of the
        document's only job: nothing can have written them). NotFound: no document or base."""
        d, b, blob, j = self.t.doc, self.t.base, self.t.blob, self.t.job
        async with self._reading() as conn:
            drow = (
                (await conn.execute(select(d).where(d.c.file_id == job.file_id))).mappings().first()
            )
            if drow is None:
                raise NotFound(f"document {job.file_id!r} not found")
            brow = (
                (await conn.execute(select(b).where(b.c.pipeline_id == drow["pipeline_id"])))
                .mappings()
                .first()
            )
            if brow is None:
                raise NotFound(f"knowledge base {drow['pipeline_id']!r} not found")
            content = (
                await conn.execute(select(blob.c.content).where(blob.c.file_id == job.file_id))
            ).scalar_one_or_none()
            jobs = (
                await conn.execute(select(func.count()).where(j.c.file_id == job.file_id))
            ).scalar_one()
        may_have_chunks = job.attempts > 1 or int(jobs) > 1
        return _doc(drow), _base(brow), None if content is None else bytes(content), may_have_chunks

    async def end_job(
        self, job_id: str, file_id: str, *, chunks: int, error: str | None = None
    ) -> None:
        """Record a job's end and its document's state together: completed with ``chunks``
        (progress = total = chunks), or failed with ``error``."""
        now = utcnow()
        job: dict[str, Any] = {"finished_at": now, "lease_until": None}
        if error is None:
            job.update(status="completed", progress=chunks, total=chunks)
            doc: dict[str, Any] = {"status": "completed", "chunk_count": chunks, "error": None}
        else:
            job.update(status="failed", error=error)
            doc = {"status": "failed", "chunk_count": 0, "error": error}
        async with self._writing() as conn:
            await conn.execute(
                update(self.t.doc)
                .where(self.t.doc.c.file_id == file_id)
                .values(**doc, updated_at=now)
            )
            await conn.execute(
                update(self.t.job).where(self.t.job.c.job_id == job_id).values(**job)
            )

    async def update_job(self, job_id: str, **values: Any) -> None:
        j = self.t.job
        async with self._writing() as conn:
            await conn.execute(update(j).where(j.c.job_id == job_id).values(**values))

    async def requeue_expired(self) -> int:
        """Running jobs whose lease ran out (their worker died) go back to pending."""
        j = self.t.job
        async with self._writing() as conn:
            result = await conn.execute(
                update(j)
                .where(j.c.status == "running", j.c.lease_until < utcnow())
                .values(status="pending", lease_until=None)
            )
        return int(result.rowcount or 0)

    async def pending_count(self) -> int:
        j = self.t.job
        statement = select(func.count()).where(j.c.status.in_(["pending", "running"]))
        async with self._reading() as conn:
            return int((await conn.execute(statement)).scalar_one())
