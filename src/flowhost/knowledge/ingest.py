"""One indexing job: read (parse and chunk, in a process of its own), embed in batches (off the
event loop), write, index.

A failure (unreadable file, embedding endpoint down, ...) marks the job and the document
failed with the reason and removes the file's partial chunks; the base stays usable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from flowhost.exceptions import NotFound
from flowhost.knowledge.chunking import chunk_sections
from flowhost.knowledge.filters import meta_label, structured_label, tag_label
from flowhost.knowledge.parsing import ParseError, parse_document, parse_table
from flowhost.knowledge.processes import CallTimedOut, ProcessesStopped, ProcessesUnavailable
from flowhost.knowledge.records import Document, Job, KnowledgeBase, utcnow
from flowhost.knowledge.vectorstore import MAX_LABELS, ChunkRow

if TYPE_CHECKING:
    from flowhost.knowledge.service import KnowledgeService

__all__ = ["PROGRESS_S", "WRITE_ROWS", "Unit", "run_job", "units_of"]

log = logging.getLogger("flowhost.knowledge")
WRITE_ROWS = 2048  # chunks a vector-store write takes at most
PROGRESS_S = 1.0  # a running job writes its progress at most this often


@dataclass(frozen=True, slots=True)
class Unit:
    """What becomes one chunk: its text, the text to embed, labels and metadata."""

    text: str
    embed_text: str
    title: str
    labels: tuple[str, ...]
    meta: dict[str, Any]


def units_of(base: KnowledgeBase, doc: Document, content: bytes) -> tuple[list[Unit], list[str]]:
    """Chunks of a document (blocking; run in a parsing process). Returns (units, table
    columns)."""
    if base.type == "structured":
        table = parse_table(doc.name, content)
        units = []
        for i, row in enumerate(table.rows):
            text = "\n".join(f"{c}: {v}" for c, v in row.items() if v != "")
            # empty cells match no filter value: no label (a wide sheet had 128 per row)
            labels = tuple(structured_label(c, v) for c, v in row.items() if v != "")
            title = f"{doc.name} #{i + 1}"
            units.append(Unit(text, text, title, labels[:MAX_LABELS], {"row": row}))
        return units, table.columns
    sections = parse_document(doc.name, content)
    pieces = chunk_sections(sections, size=base.chunk_size, overlap=base.chunk_overlap)
    labels = tuple(tag_label(t) for t in doc.tags) + tuple(
        meta_label(k, v) for k, v in doc.metadata.items()
    )
    meta: dict[str, Any] = {"metadata": doc.metadata, "tags": doc.tags}
    out = []
    for p in pieces:
        m = {**meta, "page": p.page} if p.page is not None else meta
        embed_text = f"{p.title}\n{p.text}" if p.title else p.text
        out.append(Unit(p.text, embed_text, p.title or doc.name, labels, m))
    return out, []


class _Deleted(Exception):
    """The document was deleted while it was being indexed."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ParseError):
        return str(exc)
    text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _read(
    svc: KnowledgeService, base: KnowledgeBase, doc: Document, content: bytes
) -> tuple[list[Unit], list[str]]:
    """``units_of`` in a parsing process (``svc.parsers``), or in a thread when there are none.

    In a thread, reading a document (pure Python, mostly) holds the server's GIL for as long
    as it lasts, and a parser stuck inside one page cannot be stopped; a process is killed
    once its call outlives ``parsers.time_limit`` (``parsing.PARSE_HARD_LIMIT_S``). A
    document that kills its process (twice: the call is retried once) fails, rather than
    being read again in the server."""
    parsers = svc.parsers
    if parsers is not None:
        try:
            return await parsers.call(units_of, base, doc, content)
        except CallTimedOut as exc:
            limit = parsers.time_limit
            raise ParseError(
                f"reading the document took longer than {limit:g} s and was stopped"
            ) from exc
        except MemoryError as exc:  # the process's memory_limit (PARSE_MEMORY_MB)
            cap = (parsers.memory_limit or 0) // (1024 * 1024)
            raise ParseError(
                f"reading the document needed more than the {cap:,} MB of memory a reading "
                "process may use (PARSE_MEMORY_MB)"
            ) from exc
        except ProcessesUnavailable as exc:  # none can start here: threads, from now on
            log.warning("reading documents in threads: %s", exc)
            svc.parsers = None
            await parsers.close()
        except ProcessesStopped as exc:
            raise ParseError("the process reading the document stopped (out of memory?)") from exc
    return await anyio.to_thread.run_sync(units_of, base, doc, content)


async def run_job(svc: KnowledgeService, job: Job) -> None:
    """Index the job's document. Records success or failure; raises only on cancellation.

    ``job`` comes from ``claim_next``, which marked it and its document running.
    """
    repo = svc.repo
    try:
        doc, base, content, may_have_chunks = await repo.job_inputs(job)
    except Exception as exc:  # the document or base was deleted meanwhile
        await repo.update_job(
            job.job_id, status="failed", error=_reason(exc), finished_at=utcnow(), lease_until=None
        )
        return
    space = base.space
    try:
        if content is None:
            raise NotFound(f"the content of document {doc.file_id!r} is gone")
        embedder = await svc.embedder_for(base)
        units, columns = await _read(svc, base, doc, content)
        if columns:
            await repo.extend_base_keys(base.pipeline_id, columns=columns)
        await svc.vectors.ensure_space(space, base.embedding.dim)
        if may_have_chunks:  # a rerun, or a reindex: start from no chunks
            await svc.vectors.delete(space, base.pipeline_id, doc.file_id)
        await _embed_and_write(svc, base, doc, job, units, embedder)
        svc.mark_dirty(space)  # indexes are refreshed once the queue is empty
        if not await repo.end_job(job.job_id, doc.file_id, chunks=len(units)):
            raise _Deleted
        log.info("indexed %s (%s): %d chunks", doc.name, doc.file_id, len(units))
    except anyio.get_cancelled_exc_class():
        raise
    except _Deleted:  # its delete removed the chunks written so far; these are the rest
        log.info("indexing %s (%s) stopped: the document was deleted", doc.name, doc.file_id)
        try:
            await svc.vectors.delete(space, base.pipeline_id, doc.file_id)
        except Exception:
            log.exception("cannot remove the chunks of deleted document %s", doc.file_id)
    except Exception as exc:
        reason = _reason(exc)
        log.warning("indexing %s (%s) failed: %s", doc.name, doc.file_id, reason)
        try:
            await svc.vectors.delete(space, base.pipeline_id, doc.file_id)
        except Exception:
            log.exception("cannot remove the partial chunks of %s", doc.file_id)
        await repo.end_job(job.job_id, doc.file_id, chunks=0, error=reason)


async def _embed_and_write(
    svc: KnowledgeService,
    base: KnowledgeBase,
    doc: Document,
    job: Job,
    units: Sequence[Unit],
    embedder: Any,
) -> None:
    """Embed ``units`` in batches, several at once (the embedder's ``parallel``), writing rows
    ``WRITE_ROWS`` at a time while the next batches embed. Progress (with the total) is
    written at most every ``PROGRESS_S`` seconds; the job's end records the rest."""
    batch = svc.settings.embedding_batch_size
    # The packaged model embeds documents in its process pool; endpoints have embed only.
    embed = getattr(embedder, "embed_documents", None) or embedder.embed
    starts = iter(range(0, len(units), batch))
    embedding: deque[tuple[int, asyncio.Task[Any]]] = deque()

    def launch() -> None:
        start = next(starts, None)
        if start is not None:
            texts = [u.embed_text for u in units[start : start + batch]]
            embedding.append((start, asyncio.ensure_future(embed(texts))))

    writing: asyncio.Task[None] | None = None
    pending: list[ChunkRow] = []
    reported = time.monotonic()
    try:
        for _ in range(max(1, int(getattr(embedder, "parallel", 1)))):
            launch()
        while embedding:
            start, task = embedding.popleft()
            vectors = await task
            launch()
            if vectors.shape[1] != base.embedding.dim:
                raise ValueError(
                    f"embedding model {base.embedding.model!r} returned {vectors.shape[1]}-d "
                    f"vectors; the knowledge base holds {base.embedding.dim}-d vectors"
                )
            part = units[start : start + batch]
            for i, (unit, vec) in enumerate(zip(part, vectors, strict=True)):
                pending.append(
                    ChunkRow(
                        chunk_id=f"{doc.file_id}_{start + i}",
                        pipeline_id=base.pipeline_id,
                        file_id=doc.file_id,
                        doc_name=doc.name,
                        title=unit.title,
                        text=unit.text,
                        position=start + i,
                        labels=unit.labels,
                        meta=unit.meta,
                        vector=vec,
                    )
                )
            if len(pending) >= WRITE_ROWS or not embedding:
                if writing is not None:
                    # shielded: a cancelled job (its document deleted) must not cancel a write
                    # whose thread would still land it after the delete; finally waits for it
                    await asyncio.shield(writing)
                writing = asyncio.ensure_future(svc.vectors.add(base.space, pending))
                pending = []
            if embedding and time.monotonic() - reported >= PROGRESS_S:
                reported = time.monotonic()
                done = start + len(part)
                if not await svc.repo.update_job(job.job_id, progress=done, total=len(units)):
                    raise _Deleted  # the job went with its document: stop embedding it
        if writing is not None:
            await asyncio.shield(writing)
            writing = None
    finally:
        # On a failure: stop the embeddings ahead, and let a write in flight end, so that
        # removing the partial chunks afterwards removes all of them.
        for _, t in embedding:
            t.cancel()
        leftovers = [t for _, t in embedding] + ([writing] if writing is not None else [])
        await asyncio.gather(*leftovers, return_exceptions=True)
