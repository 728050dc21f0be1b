"""``KnowledgeService``: knowledge bases, documents, indexing jobs and filtered retrieval.

Built once per process with the settings and the SQL store; ``await start()`` opens the vector
store and starts the indexing worker, ``await close()`` stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flowhost.config import Settings
from flowhost.exceptions import FlowhostError, InvalidInput, NotFound, ServiceUnavailable
from flowhost.knowledge import retrieval
from flowhost.knowledge.embedding import DEFAULT_MODEL, Embedder, LocalEmbedder, OpenAIEmbedder
from flowhost.knowledge.filters import ID_RULE, RagOptions, normalize_value
from flowhost.knowledge.jobs import JobWorker
from flowhost.knowledge.parsing import (
    PARSE_HARD_LIMIT_S,
    STRUCTURED_TYPES,
    UNSTRUCTURED_TYPES,
    file_type,
)
from flowhost.knowledge.processes import Processes, cpus
from flowhost.knowledge.records import BaseKind, Chunk, Document, Job, KnowledgeBase
from flowhost.knowledge.repository import KnowledgeRepository
from flowhost.knowledge.vectorstore import VectorStore
from flowhost.llm.connections import ConnectionRegistry, LLMNotConfigured
from flowhost.store import Store

__all__ = ["KnowledgeService", "space_name"]

log = logging.getLogger("flowhost.knowledge")
MAX_TAGS = 32
MAX_METADATA_KEYS = 64
DECLARED_POLL_S = 1.0  # how often a search waiting for a declared base looks at the catalogue


def space_name(service: str, connection: str | None, model: str, dim: int) -> str:
    """The vector-store table/collection for one embedding model: ``kb_<service>_<slug>_<dim>``."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:24] or "model"
    digest = hashlib.sha256(f"{connection or ''}|{model}".encode()).hexdigest()[:6]
    return f"kb_{service}_{slug}_{digest}_{dim}"


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


class KnowledgeService:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.repo = KnowledgeRepository(store)
        self.vectors: VectorStore = self._make_vector_store(settings)
        self._embedders: dict[tuple[str | None, str], Embedder] = {}
        self._connections: ConnectionRegistry | None = None
        self._worker = JobWorker(
            self.repo, self._run_job, idle=self.maintain, concurrency=settings.kb_ingest_jobs
        )
        parsers = settings.parse_processes
        if parsers is None:
            parsers = min(settings.kb_ingest_jobs, cpus())
        # reading a document: in processes of its own, stopped past its time (see ingest)
        memory = settings.parse_memory_mb * 1024 * 1024 or None
        self.parsers: Processes | None = (
            Processes(parsers, what="parsing", time_limit=PARSE_HARD_LIMIT_S, memory_limit=memory)
            if parsers
            else None
        )
        self._dirty: set[str] = set()
        self._started = False
        # bases declared in knowledge.yaml -> their documents still to be indexed; a search of
        # such a base waits for them (see ``wait_declared``)
        self._declared: dict[str, set[str]] = {}
        self._declared_done = asyncio.Event()
        self._not_waited_for: set[str] = set()  # declared bases a search stopped waiting for

    @staticmethod
    def _make_vector_store(settings: Settings) -> VectorStore:
        if settings.kb_backend == "milvus":
            from flowhost.knowledge.milvus_store import MilvusStore

            uri = settings.milvus_uri or str(settings.data_dir / "milvus.db")
            token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
            return MilvusStore(uri, token=token)
        from flowhost.knowledge.lancedb_store import LanceDBStore

        return LanceDBStore(settings.kb_uri or str(settings.data_dir / "lancedb"))

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self, *, worker: bool = True, bootstrap: bool | None = None) -> None:
        """Open the vector store, resume unfinished jobs, build declared example bases."""
        if self._started:
            return
        try:
            if self.settings.kb_backend == "lancedb" and not self.settings.kb_uri:
                self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            await self.vectors.open()
        except FlowhostError:
            raise
        except Exception as exc:  # the driver's own error (pymilvus, lancedb, OSError): say so
            raise ServiceUnavailable(
                f"cannot open the vector store ({self.settings.kb_backend}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._started = True
        if worker:
            self._worker.start()
        if self.settings.kb_bootstrap if bootstrap is None else bootstrap:
            from flowhost.knowledge.bootstrap import bootstrap_flows

            await bootstrap_flows(self, self.settings.flows)

    async def close(self) -> None:
        await self._worker.close()
        if self.parsers is not None:
            await self.parsers.close()
        for embedder in self._embedders.values():
            await embedder.aclose()
        self._embedders.clear()
        await self.vectors.close()
        self._started = False

    async def _run_job(self, job: Job) -> None:
        from flowhost.knowledge.ingest import run_job

        try:
            await run_job(self, job)
        finally:
            self._declared_indexed(job.pipeline_id, job.file_id)

    # --- bases declared in knowledge.yaml ----------------------------------------------------
    async def expect_declared(self, doc: Document, job: Job | None) -> None:
        """A declared base's document as the server's start left it: searches of the base
        wait until it is indexed (``wait_declared``)."""
        if doc.status == "completed" and job is None:
            return
        self._declared.setdefault(doc.pipeline_id, set()).add(doc.file_id)
        if job is None:  # its job was queued before this start: it may have ended meanwhile
            await self._look_up_declared([doc.file_id])

    async def _look_up_declared(self, file_ids: list[str] | None = None) -> None:
        """Mark awaited documents (``file_ids``, default all) done where the catalogue says
        they are, whichever process indexed them; a deleted one has nothing to wait for."""
        if file_ids is None:
            file_ids = [f for files in self._declared.values() for f in files]
        if not file_ids:
            return
        left = await self.repo.unfinished_of(file_ids)
        wanted = set(file_ids)
        for pipeline_id, files in list(self._declared.items()):
            for file_id in files & wanted - left:
                self._declared_indexed(pipeline_id, file_id)

    async def declared_indexing(self) -> dict[str, int]:
        """Documents that bases declared in knowledge.yaml are still indexing, per base, as
        the catalogue says now (for ``/health/ready``)."""
        await self._look_up_declared()
        return {pipeline_id: len(files) for pipeline_id, files in self._declared.items()}

    def _declared_indexed(self, pipeline_id: str, file_id: str) -> None:
        left = self._declared.get(pipeline_id)
        if left is None:
            return
        left.discard(file_id)
        if not left:
            del self._declared[pipeline_id]
            log.info("knowledge base %s (declared) is indexed", pipeline_id)
            self._declared_done.set()  # wake the waiters; they look again
            self._declared_done = asyncio.Event()

    async def wait_declared(self, pipeline_ids: Iterable[str], limit_s: float) -> None:
        """Wait (at most ``limit_s``) until the bases among ``pipeline_ids`` that a flow declares
        in knowledge.yaml have indexed the documents the server's start added to them, so the
        first question after a first start is answered from the whole base, not from part of
        it. This process's worker wakes the waiters; documents another replica indexes are
        looked up every ``DECLARED_POLL_S``. A base still indexing after ``limit_s`` is
        searched as it is, from then on."""
        wanted = [p for p in pipeline_ids if p in self._declared and p not in self._not_waited_for]
        if not wanted:
            return
        log.info("search waits for %s to finish indexing (declared)", ", ".join(wanted))
        try:
            async with asyncio.timeout(limit_s):
                while any(p in self._declared for p in wanted):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(DECLARED_POLL_S):
                            await self._declared_done.wait()
                    # indexed elsewhere (another replica) meanwhile?
                    await self._look_up_declared(
                        [f for p in wanted for f in self._declared.get(p, ())]
                    )
        except TimeoutError:
            log.warning(
                "knowledge bases %s still indexing after %gs: searching them as they are",
                ", ".join(wanted),
                limit_s,
            )
            self._not_waited_for.update(wanted)  # still reported by ``declared_indexing``

    def mark_dirty(self, space: str) -> None:
        """A job wrote to ``space``: refresh its indexes when the queue is empty."""
        self._dirty.add(space)

    async def maintain(self) -> None:
        """Build/refresh the indexes of every space written since the last call.

        Rows not yet indexed are still found (LanceDB searches them flat), so deferring this
        to an empty queue keeps ingestion fast without losing results.
        """
        while self._dirty:
            space = self._dirty.pop()
            await self.vectors.maintain(space)

    async def run_pending_jobs(self) -> int:
        """Run every pending job now, in this task (the CLI's in-process mode). Returns the count."""
        from flowhost.knowledge.ingest import run_job
        from flowhost.knowledge.jobs import LEASE

        await self.repo.requeue_expired()
        count = 0
        while (job := await self.repo.claim_next(LEASE)) is not None:
            await run_job(self, job)
            count += 1
        await self.maintain()
        return count

    async def wait_idle(self, limit_s: float = 60.0) -> None:
        """Wait until no job is pending or running (tests, bootstrap). Raises TimeoutError."""
        deadline = time.monotonic() + limit_s
        self._worker.notify()
        while self._worker.busy or self._dirty or await self.repo.pending_count():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("knowledge jobs still running")
            if self._worker.busy:  # woken when it is not: no polling meanwhile
                await self._worker.wait_not_busy(min(left, 1.0))
            else:
                await asyncio.sleep(min(left, 0.05))

    # --- embeddings --------------------------------------------------------------------------
    def _registry(self) -> ConnectionRegistry:
        if self._connections is None:
            flows = self.settings.flows
            folders = [flows] if flows.is_dir() else []
            self._connections = ConnectionRegistry.load(folders, os.environ)
        return self._connections

    async def embedder(self, connection: str | None, model: str) -> Embedder:
        key = (connection, model)
        embedder = self._embedders.get(key)
        if embedder is None:
            if connection is None:
                embedder = LocalEmbedder(model, processes=self.settings.embedding_processes)
            else:
                registry = self._registry()
                if connection not in registry.names():
                    raise InvalidInput(
                        f"embedding connection {connection!r} is not configured "
                        f"(known: {', '.join(registry.names()) or 'none'})",
                        field="embedding_connection",
                    )
                try:
                    conn = registry.get(connection)
                except LLMNotConfigured as exc:
                    raise InvalidInput(str(exc), field="embedding_connection") from None
                embedder = OpenAIEmbedder(conn, model)
            self._embedders[key] = embedder
        return embedder

    async def embedder_for(self, base: KnowledgeBase) -> Embedder:
        """The base's own embedder; refuses a model whose dimension changed."""
        embedder = await self.embedder(base.embedding.connection, base.embedding.model)
        dim = await embedder.dim()
        if dim != base.embedding.dim:
            raise InvalidInput(
                f"knowledge base {base.pipeline_id!r} was built with {base.embedding.dim}-d "
                f"vectors of {base.embedding.model!r}, the model now returns {dim}-d; re-create "
                "the base to re-embed it"
            )
        return embedder

    # --- bases -------------------------------------------------------------------------------
    async def create_base(
        self,
        name: str,
        *,
        type: BaseKind = "unstructured",
        pipeline_id: str | None = None,
        description: str | None = None,
        embedding_connection: str | None = None,
        embedding_model: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> KnowledgeBase:
        pid = pipeline_id or secrets.token_hex(5)
        if not ID_RULE.match(pid):
            raise InvalidInput("pipeline_id must be 1-64 of [A-Za-z0-9_-]", field="pipeline_id")
        connection, model = self._embedding_of(embedding_connection, embedding_model)
        size = chunk_size or self.settings.kb_chunk_size
        overlap = self.settings.kb_chunk_overlap if chunk_overlap is None else chunk_overlap
        if not 0 <= overlap < size:
            raise InvalidInput(
                "chunk_overlap must be smaller than chunk_size", field="chunk_overlap"
            )
        embedder = await self.embedder(connection, model)
        dim = await embedder.dim()
        space = space_name(self.store.service, connection, model, dim)
        await self.vectors.ensure_space(space, dim)
        return await self.repo.create_base(
            {
                "pipeline_id": pid,
                "name": name,
                "description": description,
                "kind": type,
                "embedding_connection": connection,
                "embedding_model": model,
                "embedding_dim": dim,
                "space": space,
                "columns": [],
                "metadata_keys": [],
                "chunk_size": size,
                "chunk_overlap": overlap,
            }
        )

    def _embedding_of(self, connection: str | None, model: str | None) -> tuple[str | None, str]:
        """A new base's (connection, model): what the request names, else the server's. A
        connection of the base's own has no model to fall back on: the server's model belongs
        to the server's connection (or is the packaged one, which no endpoint serves)."""
        settings = self.settings
        if connection is None:
            connection = settings.embedding_connection
        if model:
            return connection, model
        if connection is None:
            return None, DEFAULT_MODEL
        if connection == settings.embedding_connection:
            return connection, settings.embedding_model
        raise InvalidInput(
            f"embedding_model is required with embedding_connection {connection!r}: name the "
            "endpoint's model (e.g. text-embedding-v3)",
            field="embedding_model",
        )

    async def list_bases(self) -> list[KnowledgeBase]:
        return await self.repo.list_bases()

    async def get_base(self, pipeline_id: str) -> KnowledgeBase:
        base = await self.repo.get_base(pipeline_id)
        return base.model_copy(
            update={"document_count": await self.repo.count_documents(pipeline_id)}
        )

    async def delete_base(self, pipeline_id: str) -> None:
        base = await self.repo.get_base(pipeline_id)
        await self._worker.stop(pipeline_id=pipeline_id)  # as for a document, below
        await self.vectors.delete(base.space, pipeline_id)
        await self.repo.delete_base(pipeline_id)

    # --- documents ---------------------------------------------------------------------------
    async def add_document(
        self,
        pipeline_id: str,
        filename: str,
        content: bytes,
        *,
        tags: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Document, Job | None, bool]:
        """Store a document and enqueue its indexing job. Returns (document, job, created).

        Idempotent by content: the same bytes in the same base return the existing document
        (``created`` False, and no job unless it had failed: then it is indexed again).
        """
        base = await self.repo.get_base(pipeline_id)
        name = os.path.basename(filename.replace("\\", "/")).strip() or "document"
        kind = file_type(name)
        allowed = STRUCTURED_TYPES if base.type == "structured" else UNSTRUCTURED_TYPES
        if kind not in allowed:
            raise InvalidInput(
                f"{name!r}: a {base.type} base takes {', '.join(sorted(allowed))} files",
                field="file",
            )
        if not content:
            raise InvalidInput(f"{name!r} is empty", field="file")
        tags = [t for t in dict.fromkeys(tags) if t]
        meta = dict(metadata or {})
        if len(tags) > MAX_TAGS or len(meta) > MAX_METADATA_KEYS:
            raise InvalidInput(f"at most {MAX_TAGS} tags and {MAX_METADATA_KEYS} metadata keys")
        for value in meta.values():
            normalize_value(value)  # scalars only
        sha = hashlib.sha256(content).hexdigest()
        existing = await self.repo.find_by_hash(pipeline_id, sha)
        if existing is not None:
            if existing.status == "failed":
                return existing, await self.reindex_document(existing.file_id), False
            return existing, None, False
        if meta:
            await self.repo.extend_base_keys(pipeline_id, metadata_keys=list(meta))
        doc, job = await self.repo.add_document(
            {
                "file_id": _new_id("file_"),
                "pipeline_id": pipeline_id,
                "name": name[:255],
                "file_type": kind,
                "size": len(content),
                "sha256": sha,
                "tags": tags,
                "doc_metadata": meta,
            },
            content,
            _new_id("job_"),
        )
        self._worker.notify()
        return doc, job, True

    async def list_documents(
        self, pipeline_id: str, *, limit: int = 100, offset: int = 0
    ) -> list[Document]:
        await self.repo.get_base(pipeline_id)
        return await self.repo.list_documents(pipeline_id, limit=limit, offset=offset)

    async def get_document(self, file_id: str) -> Document:
        return await self.repo.get_document(file_id)

    async def delete_document(self, file_id: str) -> None:
        doc = await self.repo.get_document(file_id)
        base = await self.repo.get_base(doc.pipeline_id)
        # its job, when this process runs it, ends first (so no chunk is written after the
        # delete below); one running in another replica stops at its next progress write
        await self._worker.stop(pipeline_id=doc.pipeline_id, file_id=file_id)
        await self.vectors.delete(base.space, base.pipeline_id, file_id)
        await self.repo.delete_document(file_id)

    async def reindex_document(self, file_id: str) -> Job:
        doc = await self.repo.get_document(file_id)
        job = await self.repo.create_job(_new_id("job_"), doc.pipeline_id, file_id)
        self._worker.notify()
        return job

    async def get_job(self, job_id: str) -> Job:
        return await self.repo.get_job(job_id)

    async def list_jobs(
        self, *, pipeline_id: str | None = None, file_id: str | None = None, limit: int = 100
    ) -> list[Job]:
        return await self.repo.list_jobs(pipeline_id=pipeline_id, file_id=file_id, limit=limit)

    # --- retrieval ---------------------------------------------------------------------------
    async def retrieve(
        self,
        query: str,
        *,
        pipeline_ids: list[str],
        options: RagOptions | None,
        top_k: int,
        score_threshold: float | None,
    ) -> list[Chunk]:
        """Hybrid retrieval over ``pipeline_ids`` (or ``options.pipeline_ids``), filtered.

        Raises InvalidInput (no base to search, bad top_k) and NotFound (unknown base).
        """
        if not 1 <= top_k <= 100:
            raise InvalidInput("top_k must be between 1 and 100", field="top_k")
        return await retrieval.retrieve(
            self,
            query,
            pipeline_ids=pipeline_ids,
            options=options,
            top_k=top_k,
            score_threshold=score_threshold,
        )

    async def bases_for(self, pipeline_ids: Sequence[str]) -> list[KnowledgeBase]:
        """The bases named, in order; NotFound names any unknown one."""
        wanted = list(dict.fromkeys(pipeline_ids))
        found = {
            b.pipeline_id: b
            for b in await self.repo.get_bases([p for p in wanted if ID_RULE.match(p)])
        }
        missing = [p for p in wanted if p not in found]
        if missing:
            raise NotFound(f"knowledge base(s) not found: {', '.join(map(repr, missing))}")
        return [found[p] for p in wanted]
