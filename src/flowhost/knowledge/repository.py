"""``KnowledgeRepository``: the knowledge catalogue in the SQL store (any of its backends).

Every call is one operation of the store's ``Runner`` (``flowhost.store.runner``), as the chat
history's are: on SQLite a call is one hop to a worker thread (aiosqlite hopped for every cursor
call, ~80 hops per indexed document), on MySQL/PostgreSQL one transaction on the async engine.

Jobs are claimed with a conditional UPDATE (``WHERE status = 'pending'``), so several workers,
in one process or in replicas sharing the database, never run the same job twice. A running
job holds a lease that its worker renews; a job whose lease expired (its worker died) goes
back to pending at the next start or sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BindParameter,
    Connection,
    bindparam,
    delete,
    exc,
    func,
    insert,
    select,
    update,
)

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
from flowhost.store.engine import translate_errors

__all__ = ["KnowledgeRepository"]

T = TypeVar("T")


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
        self._db = store.runner
        self.t = kb_tables(store.service)
        b, d = self.t.base, self.t.doc
        # Every retrieval looks its bases (and files) up by id. ``column.in_(values)`` would
        # make a statement per call whose bind parameter is a reference cycle (10 objects a
        # call, left to the garbage collector); these are built once, the ids bound at run time.
        ids: BindParameter[list[str]] = bindparam("ids", expanding=True)
        self._bases_by_id = select(b).where(b.c.pipeline_id.in_(ids))
        self._files_by_id = select(d.c.file_id, d.c.pipeline_id).where(d.c.file_id.in_(ids))

    async def _read(self, operation: Callable[[Connection], T]) -> T:
        async with translate_errors("reading the knowledge catalogue"):
            return await self._db.read(operation)

    async def _write(self, operation: Callable[[Connection], T]) -> T:
        async with translate_errors("writing the knowledge catalogue"):
            return await self._db.write(operation)

    # --- bases -------------------------------------------------------------------------------
    async def create_base(self, values: dict[str, Any]) -> KnowledgeBase:
        now = utcnow()
        row = {**values, "created_at": now, "updated_at": now}
        try:
            await self._write(lambda conn: conn.execute(insert(self.t.base).values(**row)))
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
        ids = {"ids": list(pipeline_ids)}
        rows = await self._read(lambda conn: conn.execute(self._bases_by_id, ids).mappings().all())
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
        rows = await self._read(lambda conn: conn.execute(statement).mappings().all())
        return [_base(r, int(r["n"] or 0)) for r in rows]

    async def count_documents(self, pipeline_id: str) -> int:
        statement = select(func.count()).where(self.t.doc.c.pipeline_id == pipeline_id)
        return int(await self._read(lambda conn: conn.execute(statement).scalar_one()))

    async def extend_base_keys(
        self, pipeline_id: str, *, columns: Sequence[str] = (), metadata_keys: Sequence[str] = ()
    ) -> None:
        """Add columns / metadata keys to the base's schema (order kept, no duplicates)."""
        b = self.t.base

        def extend(conn: Connection) -> None:
            row = conn.execute(select(b).where(b.c.pipeline_id == pipeline_id)).mappings().first()
            if row is None:
                raise NotFound(f"knowledge base {pipeline_id!r} not found")
            cols = list(row["columns"] or [])
            keys = list(row["metadata_keys"] or [])
            new_cols = cols + [c for c in dict.fromkeys(columns) if c not in cols]
            new_keys = keys + [k for k in dict.fromkeys(metadata_keys) if k not in keys]
            if new_cols != cols or new_keys != keys:
                conn.execute(
                    update(b)
                    .where(b.c.pipeline_id == pipeline_id)
                    .values(columns=new_cols, metadata_keys=new_keys, updated_at=utcnow())
                )

        await self._write(extend)

    async def delete_base(self, pipeline_id: str) -> None:
        t = self.t

        def remove(conn: Connection) -> None:
            files = select(t.doc.c.file_id).where(t.doc.c.pipeline_id == pipeline_id)
            conn.execute(delete(t.blob).where(t.blob.c.file_id.in_(files)))
            conn.execute(delete(t.job).where(t.job.c.pipeline_id == pipeline_id))
            conn.execute(delete(t.doc).where(t.doc.c.pipeline_id == pipeline_id))
            result = conn.execute(delete(t.base).where(t.base.c.pipeline_id == pipeline_id))
            if result.rowcount == 0:
                raise NotFound(f"knowledge base {pipeline_id!r} not found")

        await self._write(remove)

    # --- documents ---------------------------------------------------------------------------
    async def find_by_hash(self, pipeline_id: str, sha256: str) -> Document | None:
        d = self.t.doc
        statement = select(d).where(d.c.pipeline_id == pipeline_id, d.c.sha256 == sha256)
        row = await self._read(lambda conn: conn.execute(statement).mappings().first())
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

        def add(conn: Connection) -> None:
            conn.execute(insert(self.t.doc).values(**drow))
            conn.execute(insert(self.t.blob).values(file_id=doc["file_id"], content=content))
            conn.execute(insert(self.t.job).values(**jrow))

        await self._write(add)
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
        statement = select(d).where(d.c.file_id == file_id)
        row = await self._read(lambda conn: conn.execute(statement).mappings().first())
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
        rows = await self._read(lambda conn: conn.execute(statement).mappings().all())
        return [_doc(r) for r in rows]

    async def files_of(self, file_ids: Sequence[str]) -> dict[str, str]:
        """``file_id -> pipeline_id`` for the existing files among ``file_ids``."""
        if not file_ids:
            return {}
        ids = {"ids": list(file_ids)}
        rows = await self._read(lambda conn: conn.execute(self._files_by_id, ids).all())
        return {r[0]: r[1] for r in rows}

    async def unfinished_of(self, file_ids: Sequence[str]) -> set[str]:
        """The existing files among ``file_ids`` that are neither indexed nor failed."""
        d = self.t.doc
        statements = [  # bounded IN lists
            select(d.c.file_id).where(
                d.c.file_id.in_(list(file_ids[i : i + 500])),
                d.c.status.not_in(("completed", "failed")),
            )
            for i in range(0, len(file_ids), 500)
        ]

        def read(conn: Connection) -> set[str]:
            return {f for statement in statements for f in conn.execute(statement).scalars()}

        return await self._read(read)

    async def get_blob(self, file_id: str) -> bytes:
        b = self.t.blob
        statement = select(b.c.content).where(b.c.file_id == file_id)
        value = await self._read(lambda conn: conn.execute(statement).scalar_one_or_none())
        if value is None:
            raise NotFound(f"the content of document {file_id!r} is gone")
        return bytes(value)

    async def delete_document(self, file_id: str) -> Document:
        doc = await self.get_document(file_id)
        t = self.t

        def remove(conn: Connection) -> None:
            conn.execute(delete(t.job).where(t.job.c.file_id == file_id))
            conn.execute(delete(t.blob).where(t.blob.c.file_id == file_id))
            conn.execute(delete(t.doc).where(t.doc.c.file_id == file_id))

        await self._write(remove)
        return doc

    # --- jobs --------------------------------------------------------------------------------
    async def create_job(self, job_id: str, pipeline_id: str, file_id: str) -> Job:
        row = self._new_job(job_id, pipeline_id, file_id, utcnow())

        def create(conn: Connection) -> None:
            conn.execute(insert(self.t.job).values(**row))
            conn.execute(
                update(self.t.doc)
                .where(self.t.doc.c.file_id == file_id)
                .values(status="pending", error=None, updated_at=row["created_at"])
            )

        await self._write(create)
        return _job(row)

    async def get_job(self, job_id: str) -> Job:
        j = self.t.job
        statement = select(j).where(j.c.job_id == job_id)
        row = await self._read(lambda conn: conn.execute(statement).mappings().first())
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
        rows = await self._read(lambda conn: conn.execute(statement).mappings().all())
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
        oldest = (
            select(j)
            .where(j.c.status == "pending", ~busy_file)
            .order_by(j.c.created_at, j.c.job_id)
            .limit(1)
        )
        for _ in range(5):
            row = await self._read(lambda conn: conn.execute(oldest).mappings().first())
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

            if await self._write(partial(self._claim, row=row, claimed=claimed)):
                return _job({**row, **claimed})
        return None

    def _claim(self, conn: Connection, *, row: Mapping[Any, Any], claimed: dict[str, Any]) -> bool:
        """Take the pending job ``row`` with ``claimed``'s values; False: another worker did."""
        j = self.t.job
        result = conn.execute(
            update(j).where(j.c.job_id == row["job_id"], j.c.status == "pending").values(**claimed)
        )
        if result.rowcount != 1:
            return False
        conn.execute(
            update(self.t.doc)
            .where(self.t.doc.c.file_id == row["file_id"])
            .values(status="running", error=None, updated_at=claimed["started_at"])
        )
        return True

    async def job_inputs(self, job: Job) -> tuple[Document, KnowledgeBase, bytes | None, bool]:
        """What a job reads, in one go: its document, base and content (None: gone), and
        whether the file may have chunks already (False only for the first attempt of the
        document's only job: nothing can have written them). NotFound: no document or base."""
        d, b, blob, j = self.t.doc, self.t.base, self.t.blob, self.t.job

        def read(conn: Connection) -> tuple[Document, KnowledgeBase, bytes | None, int]:
            drow = conn.execute(select(d).where(d.c.file_id == job.file_id)).mappings().first()
            if drow is None:
                raise NotFound(f"document {job.file_id!r} not found")
            brow = (
                conn.execute(select(b).where(b.c.pipeline_id == drow["pipeline_id"]))
                .mappings()
                .first()
            )
            if brow is None:
                raise NotFound(f"knowledge base {drow['pipeline_id']!r} not found")
            content = conn.execute(
                select(blob.c.content).where(blob.c.file_id == job.file_id)
            ).scalar_one_or_none()
            jobs = conn.execute(select(func.count()).where(j.c.file_id == job.file_id)).scalar_one()
            data = None if content is None else bytes(content)
            return _doc(drow), _base(brow), data, int(jobs)

        doc, base, content, jobs = await self._read(read)
        return doc, base, content, job.attempts > 1 or jobs > 1

    async def end_job(
        self, job_id: str, file_id: str, *, chunks: int, error: str | None = None
    ) -> bool:
        """Record a job's end and its document's state together: completed with ``chunks``
        (progress = total = chunks), or failed with ``error``. False: the document is gone
        (deleted while it was being indexed)."""
        now = utcnow()
        job: dict[str, Any] = {"finished_at": now, "lease_until": None}
        if error is None:
            job.update(status="completed", progress=chunks, total=chunks)
            doc: dict[str, Any] = {"status": "completed", "chunk_count": chunks, "error": None}
        else:
            job.update(status="failed", error=error)
            doc = {"status": "failed", "chunk_count": 0, "error": error}

        def end(conn: Connection) -> bool:
            updated = conn.execute(
                update(self.t.doc)
                .where(self.t.doc.c.file_id == file_id)
                .values(**doc, updated_at=now)
            ).rowcount
            conn.execute(update(self.t.job).where(self.t.job.c.job_id == job_id).values(**job))
            return bool(updated)

        return await self._write(end)

    async def update_job(self, job_id: str, **values: Any) -> bool:
        """Update a job's row; False when there is none (deleted with its document)."""
        j = self.t.job
        statement = update(j).where(j.c.job_id == job_id).values(**values)
        return await self._write(lambda conn: bool(conn.execute(statement).rowcount))

    async def requeue_expired(self) -> int:
        """Running jobs whose lease ran out (their worker died) go back to pending."""
        j = self.t.job
        statement = (
            update(j)
            .where(j.c.status == "running", j.c.lease_until < utcnow())
            .values(status="pending", lease_until=None)
        )
        return int(await self._write(lambda conn: conn.execute(statement).rowcount or 0))

    async def pending_count(self) -> int:
        j = self.t.job
        statement = select(func.count()).where(j.c.status.in_(["pending", "running"]))
        return int(await self._read(lambda conn: conn.execute(statement).scalar_one()))
