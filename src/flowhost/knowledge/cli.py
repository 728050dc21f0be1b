"""``flowhost kb``: knowledge bases from the command line.

The commands work in-process on the same data as the server: the database (``--database-url``
or ``FLOWHOST_DATABASE_URL``, default SQLite in the data dir), the vector store
(``FLOWHOST_KB_URI`` / ``FLOWHOST_KB_BACKEND`` / ``FLOWHOST_MILVUS_URI``) and the service name
(``--service-name``, default: the served folder's name, as ``flowhost serve`` uses). ``kb add``
indexes the uploaded files itself, with a progress bar; a running server sees the result at
once (LanceDB reads are strongly consistent; Milvus collections are shared).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from flowhost.cli import load_settings
from flowhost.config import Settings
from flowhost.exceptions import FlowhostError

__all__ = ["kb"]

T = TypeVar("T")


def _settings(ctx: click.Context) -> Settings:
    overrides = {k: v for k, v in ctx.obj.items() if v is not None}
    overrides["kb_bootstrap"] = False
    return load_settings(**overrides)


def _run(ctx: click.Context, work: Callable[[Any], Awaitable[T]]) -> T:
    settings = _settings(ctx)

    async def go() -> T:
        from flowhost.knowledge.service import KnowledgeService
        from flowhost.server.app import open_store

        store = await open_store(settings)
        service = KnowledgeService(settings, store)
        try:
            await service.start(worker=False, bootstrap=False)
            return await work(service)
        finally:
            await service.close()
            await store.close()

    try:
        return asyncio.run(go())
    except FlowhostError as exc:
        raise click.ClickException(exc.message) from None


def _echo(value: Any) -> None:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def _pairs(values: tuple[str, ...], option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in values:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=option)
        out[key] = value
    return out


@click.group()
@click.option("--flows", type=click.Path(path_type=Path), help="served folder [examples/flows]")
@click.option("--data-dir", type=click.Path(path_type=Path), help="local data [./.flowhost]")
@click.option("--database-url", help="database URL [env FLOWHOST_DATABASE_URL; SQLite]")
@click.option("--service-name", help="table name suffix [the served folder's name]")
@click.pass_context
def kb(
    ctx: click.Context,
    flows: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    service_name: str | None,
) -> None:
    """Knowledge bases: create, add documents, list, show, search, delete."""
    ctx.obj = {
        "flows": flows,
        "data_dir": data_dir,
        "database_url": database_url,
        "service_name": service_name,
    }


@kb.command()
@click.argument("name")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["unstructured", "structured"]),
    default="unstructured",
    show_default=True,
)
@click.option("--id", "pipeline_id", help="choose the pipeline id [generated]")
@click.option("--description")
@click.option("--embedding-connection", help="embeddings endpoint connection [packaged model]")
@click.option("--embedding-model")
@click.option("--chunk-size", type=int)
@click.option("--chunk-overlap", type=int)
@click.pass_context
def create(ctx: click.Context, /, name: str, kind: str, **options: Any) -> None:
    """Create a knowledge base NAME; prints it (its pipeline_id is the id to use)."""
    _echo(_run(ctx, lambda s: s.create_base(name, type=kind, **options)))


@kb.command()
@click.argument("pipeline_id")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--tag", "tags", multiple=True, help="a tag (repeat for more)")
@click.option("--meta", "meta", multiple=True, help="metadata KEY=VALUE (repeat for more)")
@click.option("--no-index", is_flag=True, help="only upload; a running server indexes them")
@click.pass_context
def add(
    ctx: click.Context,
    pipeline_id: str,
    files: tuple[Path, ...],
    tags: tuple[str, ...],
    meta: tuple[str, ...],
    no_index: bool,
) -> None:
    """Upload FILES to PIPELINE_ID and index them (progress bar)."""
    metadata = _pairs(meta, "--meta")

    async def work(svc: Any) -> list[dict[str, Any]]:
        results = []
        with click.progressbar(files, label="uploading", file=sys.stderr) as bar:
            for path in bar:
                doc, job, created = await svc.add_document(
                    pipeline_id, path.name, path.read_bytes(), tags=list(tags), metadata=metadata
                )
                results.append(
                    {
                        "file": str(path),
                        "file_id": doc.file_id,
                        "created": created,
                        "job_id": job.job_id if job else None,
                    }
                )
        jobs = [r for r in results if r["job_id"]]
        if jobs and not no_index:
            from flowhost.knowledge.ingest import run_job
            from flowhost.knowledge.jobs import LEASE

            with click.progressbar(length=len(jobs), label="indexing", file=sys.stderr) as bar:
                while (job := await svc.repo.claim_next(LEASE)) is not None:
                    await run_job(svc, job)
                    bar.update(1)
            await svc.maintain()
            for r in results:
                doc = await svc.get_document(r["file_id"])
                r.update(status=doc.status, chunks=doc.chunk_count, error=doc.error)
        return results

    results = _run(ctx, work)
    _echo(results)
    if any(r.get("status") == "failed" for r in results):
        raise SystemExit(1)


@kb.command("list")
@click.argument("pipeline_id", required=False)
@click.pass_context
def list_(ctx: click.Context, pipeline_id: str | None) -> None:
    """List knowledge bases, or the documents of PIPELINE_ID."""
    if pipeline_id is None:
        bases = _run(ctx, lambda s: s.list_bases())
        for b in bases:
            click.echo(f"{b.pipeline_id}\t{b.type}\t{b.document_count} docs\t{b.name}")
    else:
        docs = _run(ctx, lambda s: s.list_documents(pipeline_id, limit=1000))
        for d in docs:
            click.echo(f"{d.file_id}\t{d.status}\t{d.chunk_count} chunks\t{d.name}")


@kb.command()
@click.argument("ident")
@click.pass_context
def show(ctx: click.Context, ident: str) -> None:
    """Show a base (pipeline id), a document (file_...) or a job (job_...)."""
    if ident.startswith("file_"):
        _echo(_run(ctx, lambda s: s.get_document(ident)))
    elif ident.startswith("job_"):
        _echo(_run(ctx, lambda s: s.get_job(ident)))
    else:
        _echo(_run(ctx, lambda s: s.get_base(ident)))


@kb.command()
@click.argument("pipeline_ids")
@click.argument("query")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--threshold", type=float, help="minimum cosine similarity")
@click.option("--file", "file_ids", multiple=True, help="only this file id (repeat)")
@click.option("--tag", "tags", multiple=True, help="documents with this tag (repeat: any)")
@click.option("--meta", "meta", multiple=True, help="metadata KEY=VALUE (repeat: all)")
@click.option("--structured", "structured", multiple=True, help="column KEY=VALUE (repeat: all)")
@click.pass_context
def search(
    ctx: click.Context,
    pipeline_ids: str,
    query: str,
    top_k: int,
    threshold: float | None,
    file_ids: tuple[str, ...],
    tags: tuple[str, ...],
    meta: tuple[str, ...],
    structured: tuple[str, ...],
) -> None:
    """Retrieve from PIPELINE_IDS (comma-separated) for QUERY, with rag_options filters."""
    from flowhost.knowledge.filters import RagOptions

    ids = [p for p in pipeline_ids.split(",") if p]
    options = RagOptions(
        pipeline_ids=ids,
        file_ids=list(file_ids) or None,
        tags=list(tags) or None,
        metadata_filter=_pairs(meta, "--meta") or None,
        structured_filter=_pairs(structured, "--structured") or None,
    )
    chunks = _run(
        ctx,
        lambda s: s.retrieve(
            query, pipeline_ids=ids, options=options, top_k=top_k, score_threshold=threshold
        ),
    )
    _echo([c.to_node_output() for c in chunks])


@kb.command()
@click.argument("ident")
@click.option("--yes", is_flag=True, help="do not ask")
@click.pass_context
def delete(ctx: click.Context, ident: str, yes: bool) -> None:
    """Delete a base (pipeline id, with its documents) or a document (file_...)."""
    if not yes:
        click.confirm(f"delete {ident} and its chunks?", abort=True)
    if ident.startswith("file_"):
        _run(ctx, lambda s: s.delete_document(ident))
    else:
        _run(ctx, lambda s: s.delete_base(ident))
    click.echo(f"deleted {ident}")
