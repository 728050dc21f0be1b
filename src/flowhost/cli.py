"""The ``flowhost`` command: serve, run, validate, db."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import click

from flowhost.config import ConfigFileError, Settings, read_config_file
from flowhost.exceptions import FlowDefinitionError, FlowhostError

__all__ = ["main"]


def _parse_inputs(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--input")
        try:
            out[key] = json.loads(value) if value.startswith(("[", "{")) else value
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"{key}: {exc}", param_hint="--input") from None
    return out


def load_settings(**overrides: Any) -> Settings:
    """``Settings`` from ``overrides`` (flags), the FLOWHOST_* environment and the config file
    (``flowhost --config``), or a usage error naming each bad setting; never the values given
    (the token or a database URL may be among them)."""
    from pydantic import ValidationError

    ctx = click.get_current_context(silent=True)
    config_file: Path | None = ctx.find_root().params.get("config") if ctx is not None else None
    try:
        return Settings.load(config_file, **overrides)
    except ConfigFileError as exc:
        raise click.UsageError(str(exc)) from None
    except ValidationError as exc:
        file_keys = set(read_config_file(config_file)) if config_file is not None else set()
        flags = {
            p.name: p.opts[0]
            for p in (ctx.command.params if ctx is not None else ())
            if isinstance(p, click.Option)
        }
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            msg = str(err["msg"]).removeprefix("Value error, ")
            names = [str(part) for part in err["loc"]]
            if names:
                field = names[0]
                in_file = f"{field} in {config_file}" if field in file_keys else None
                where = ", ".join(
                    w for w in (flags.get(field), f"FLOWHOST_{field.upper()}", in_file) if w
                )
                msg = f"{'.'.join(names)} ({where}): {msg}"
            problems.append(msg)
        raise click.UsageError("invalid settings: " + "; ".join(problems)) from None


class _LazyGroup(click.Group):
    """Imports heavy subcommand groups (``kb``) only when they are invoked or listed."""

    lazy: ClassVar[dict[str, tuple[str, str]]] = {"kb": ("flowhost.knowledge.cli", "kb")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            import importlib

            module, attr = self.lazy[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="flowhost")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FLOWHOST_CONFIG",
    help="a TOML file of settings (lower-case FLOWHOST_* names as keys; flags and the "
    "environment win over it) [env FLOWHOST_CONFIG]",
)
def main(config: Path | None) -> None:
    """Serve LLM application flows as HTTP services."""


@main.command()
@click.argument(
    "path", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False
)
@click.option("--host", help="bind address [env FLOWHOST_HOST; 127.0.0.1]")
@click.option("--port", type=int, help="port [env FLOWHOST_PORT; 8000]")
@click.option("--token", help="require this bearer token [env FLOWHOST_TOKEN]")
@click.option("--default-app", help="app served at / and /run [env FLOWHOST_DEFAULT_APP]")
@click.option("--workers", type=int, help="worker processes [env FLOWHOST_WORKERS; 1]")
@click.option(  # scale-out
    "--graceful-timeout",
    type=float,
    help="seconds open streams may take to finish at shutdown [env FLOWHOST_GRACEFUL_TIMEOUT; 30]",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="local data [env FLOWHOST_DATA_DIR; ./.flowhost]",
)
@click.option("--database-url", help="sessions database URL [env FLOWHOST_DATABASE_URL; SQLite]")
@click.option(
    "--service-name",
    help="table name suffix [env FLOWHOST_SERVICE_NAME; the served folder's name]",
)
@click.option(
    "--history/--no-history", default=None, help="keep chat history [env FLOWHOST_HISTORY; on]"
)
@click.option(
    "--max-body-bytes", type=int, help="request body limit [env FLOWHOST_MAX_BODY_BYTES; 10 MiB]"
)
@click.option(
    "--node-timeout",
    type=float,
    help="per-node timeout in seconds [env FLOWHOST_NODE_TIMEOUT; 600]",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="flowhost's and uvicorn's log lines [env FLOWHOST_LOG_LEVEL; info]",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="text lines, or one JSON object a line for a log collector "
    "[env FLOWHOST_LOG_FORMAT; text]",
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="log every request [env FLOWHOST_ACCESS_LOG; off]",
)
# tracing
@click.option(
    "--enable-tracing/--disable-tracing",
    default=None,
    help="trace every run [env FLOWHOST_ENABLE_TRACING; on]",
)
@click.option(
    "--trace-content",
    type=click.Choice(["on", "off"]),
    help="record inputs, outputs, prompts and completions in spans [env FLOWHOST_TRACE_CONTENT; on]",
)
@click.option(
    "--trace-retention-days",
    type=float,
    help="local span store retention [env FLOWHOST_TRACE_RETENTION_DAYS; 7; 0: keep]",
)
def serve(path: Path | None, **options: Any) -> None:
    """Serve the flow folder (or folder of flow folders) PATH [env FLOWHOST_FLOWS]."""
    if options.get("trace_content") is not None:  # tracing
        options["trace_content"] = options["trace_content"] == "on"
    overrides = {k: v for k, v in options.items() if v is not None}
    if path is not None:
        overrides["flows"] = path
    settings = load_settings(**overrides)
    # Start-up imports and builds ~200k objects that live as long as the process: with the
    # collector on, it would scan them again and again while they are made. ``run_server`` turns
    # it back on (after freezing them) before serving; the ``finally`` covers a failed start.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        from flowhost.server.run import serve as run_server

        run_server(settings)
    except FlowDefinitionError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        if gc_was_enabled:
            gc.enable()


@contextlib.asynccontextmanager
async def _knowledge_for(apps: Any, settings: Settings) -> AsyncIterator[None]:
    """For flows with retrieval nodes: the knowledge service on the local store (as serve)."""
    from flowhost.knowledge import KnowledgeService, needs_knowledge

    if not needs_knowledge(apps):
        yield
        return
    from flowhost.server.app import open_store

    store = await open_store(settings)
    service = KnowledgeService(settings, store)
    try:
        await service.start(worker=True)
        for app in apps.apps.values():
            app.services.extra["knowledge"] = service
        await service.wait_idle()  # the declared bases are indexed before the run
        yield
    finally:
        await service.close()
        await store.close()


@main.command()
@click.argument("flow", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--input", "-i", "inputs", multiple=True, help="KEY=VALUE (JSON for lists/objects)")
@click.option("--events", is_flag=True, help="print every run event as a JSON line")
def run(flow: Path, inputs: tuple[str, ...], events: bool) -> None:
    """Run FLOW once in-process and print its outputs."""
    from dataclasses import asdict

    from flowhost.apps import AppRegistry
    from flowhost.engine.events import RunFailed, RunFinished
    from flowhost.service import RunRequest, RunService
    from flowhost.wire.sse import dumps

    given = _parse_inputs(inputs)

    async def go() -> int:
        apps = AppRegistry.load(flow)
        settings = load_settings(history=False, flows=flow)
        svc = RunService(apps, settings)
        async with _knowledge_for(apps, settings):
            return await run_once(apps, svc)

    async def run_once(apps: AppRegistry, svc: RunService) -> int:
        try:
            prepared = await svc.prepare(RunRequest(app_id=None, inputs=given, protocol="cli"))
            async for ev in prepared.events():
                if events:
                    click.echo(dumps(asdict(ev)))
                elif isinstance(ev, RunFinished):
                    click.echo(dumps(ev.outputs, compact=False))
                if isinstance(ev, RunFailed):
                    click.echo(f"Error: {ev.error.message}", err=True)
                    return 1
            return 0
        finally:
            await next(iter(apps.apps.values())).services.llm.aclose()

    try:
        code = asyncio.run(go())
    except FlowhostError as exc:
        raise click.ClickException(exc.message) from None
    sys.exit(code)


@main.command()
@click.argument("flow", type=click.Path(exists=True, file_okay=False, path_type=Path))
def validate(flow: Path) -> None:
    """Check FLOW (or a folder of flows): schema, references, cycles, sources, templates."""
    from flowhost.apps import AppRegistry

    try:
        apps = AppRegistry.load(flow)
    except FlowDefinitionError as exc:
        raise click.ClickException(exc.message) from None
    for app in apps.apps.values():
        f = app.flow
        click.echo(
            f"ok  {app.app_id}: {len(f.nodes)} nodes, inputs {list(f.spec.inputs)}, "
            f"outputs {list(f.spec.outputs)}" + (" (chat)" if f.is_chat else "")
        )


@main.group()
def db() -> None:
    """Manage the SQL store (sessions, history)."""


@db.command("upgrade")
@click.option("--database-url", help="[env FLOWHOST_DATABASE_URL; SQLite in --data-dir]")
@click.option(
    "--data-dir", type=click.Path(path_type=Path), help="[env FLOWHOST_DATA_DIR; ./.flowhost]"
)
@click.option("--service-name", help="table name suffix [env FLOWHOST_SERVICE_NAME; required]")
def db_upgrade(database_url: str | None, data_dir: Path | None, service_name: str | None) -> None:
    """Create or migrate the tables of SERVICE (serve does this at start, too)."""
    given = {"database_url": database_url, "data_dir": data_dir, "service_name": service_name}
    settings = load_settings(**{k: v for k, v in given.items() if v is not None})
    if settings.service_name is None:
        raise click.UsageError("--service-name (or FLOWHOST_SERVICE_NAME) is required")
    url = settings.database_url.get_secret_value() if settings.database_url else None
    data_dir, service_name = settings.data_dir, settings.service_name
    from flowhost.store import Store, StoreError

    async def go() -> str:
        store = await Store.open(url, data_dir=data_dir, service=service_name)
        try:
            return f"ok  {store.dialect} database, service {store.service!r}: tables up to date"
        finally:
            await store.close()

    try:
        click.echo(asyncio.run(go()))
    except StoreError as exc:
        raise click.ClickException(exc.message) from None
