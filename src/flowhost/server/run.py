"""Run the server with uvicorn (one process, or ``--workers N``)."""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

import uvicorn
from pydantic import SecretStr
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from flowhost.config import Settings
from flowhost.metrics import MULTIPROC_ENV  # metrics
from flowhost.server.app import create_app
from flowhost.server.logs import JsonFormatter, OneLineFormatter
from flowhost.server.protocol import ServerConfig

__all__ = ["WorkerConfig", "log_config", "serve", "settings_json"]


def settings_json(settings: Settings) -> str:
    """``settings`` for a worker process, secrets included (``model_dump`` masks them)."""
    data = settings.model_dump(mode="json")
    for name, value in settings:
        if isinstance(value, SecretStr):
            data[name] = value.get_secret_value()
    return json.dumps(data)


class WorkerConfig(ServerConfig):
    """The uvicorn config of ``--workers N``: uvicorn pickles it to each worker process (through
    the pipe that starts the process), and the worker builds its app from the settings it
    carries. Not through the environment: every process a worker starts (document-reading
    processes, a node's subprocess) would inherit the token and the database password."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        # the app is made in the worker (``load``); the parent never loads one
        super().__init__("flowhost.server.app:create_app", **kwargs)
        self.settings_json = settings_json(settings)

    def load(self) -> None:
        self.app = create_app(Settings.model_validate_json(self.settings_json))
        super().load()


def _settle_gc(*, freeze: bool = True) -> None:
    """Freeze what start-up built (modules, classes, routes, flows) and turn the collector on.

    ``flowhost serve`` turns the collector off while it imports and builds the app: with it on,
    the ~200k objects made then are scanned by every collection that their own allocation
    triggers, and again by the full collection the lifespan runs before it freezes the heap
    (about 0.1 s of CPU each). Frozen here, they are never scanned; the lifespan's collection
    only sees what came after. The few cyclic leftovers of the imports (about 1.5k objects)
    stay, as frozen garbage.
    """
    if not gc.isenabled():
        if freeze:
            gc.freeze()
        gc.enable()


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def log_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging set-up plus flowhost's loggers, at ``level``, named in each line (and
    other libraries' warnings, named too), every message on one line and scrubbed of the
    server's secrets (``flowhost.server.logs``); ``log_format`` json: JSON lines, uvicorn's
    included.

    uvicorn configures only its own loggers: without this, everything below WARNING that
    flowhost logs (knowledge bases created and indexed, exporters started) went nowhere."""
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    formatter = _dotted(JsonFormatter if log_format == "json" else OneLineFormatter)
    formatters = config["formatters"]
    formatters["default"]["()"] = formatter  # uvicorn's own lines
    if log_format == "json":
        formatters["access"]["()"] = formatter
    formatters["flowhost"] = {"()": formatter, "fmt": "%(levelprefix)s %(name)s: %(message)s"}
    config["handlers"]["flowhost"] = {
        "formatter": "flowhost",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["flowhost"] = {
        "handlers": ["flowhost"],
        "level": level.upper(),
        "propagate": False,
    }
    # libraries' warnings (the OTLP exporter's for an unreachable collector, the database
    # drivers', ...) in the same format, not through Python's bare last-resort handler
    quietest = max(logging.WARNING, logging.getLevelName(level.upper()))
    config["root"] = {"handlers": ["flowhost"], "level": logging.getLevelName(quietest)}
    return config


def _run_workers(config: ServerConfig) -> None:
    """``uvicorn.run`` with ``workers > 1``, but a worker that fails to start (the database
    unreachable, say) ends the parent with uvicorn's start-up failure status, as one process
    does: uvicorn's supervisor stops the parent then and exits 0, which tells a process manager
    all went well."""
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        sys.exit(STARTUP_FAILURE)


def serve(settings: Settings) -> None:
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": log_config(settings.log_level, settings.log_format),
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.graceful_timeout,
        # not uvicorn's 5 s, which is no longer than clients' own idle limits (httpx's and the
        # openai SDK's 5 s): pooled connections were closed as clients sent requests on them,
        # which failed unsent (ReadError: ~0.05% of `make soak`'s streams, with its client
        # expiring idle connections at 3 s). Longer than clients' and proxies' limits, the
        # client side closes first (README, "Idle connections").
        "timeout_keep_alive": settings.keep_alive_timeout,
        "max_header_bytes": settings.max_header_bytes,  # see flowhost.server.protocol
        "header_timeout": settings.header_timeout,
        "server_header": False,
        # flowhost has no WebSocket route: do not import a WebSocket protocol at start
        "ws": "none",
    }
    if settings.workers > 1:
        create_app(settings)  # validate the flows once in the parent: fail fast
        _settle_gc(freeze=False)  # that app is dropped: let the collector free it
        # metrics: every worker writes its values to one directory, /metrics sums them
        own_dir = None if os.environ.get(MULTIPROC_ENV) else tempfile.mkdtemp(prefix="flowhost-")
        if own_dir is not None:
            os.environ[MULTIPROC_ENV] = own_dir
        try:
            _run_workers(WorkerConfig(settings, workers=settings.workers, **common))
        finally:
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)
    else:
        app = create_app(settings)
        _settle_gc()
        server = uvicorn.Server(ServerConfig(app, **common))
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C during the shutdown
            server.run()
        if not server.started:  # as uvicorn.run: the start failed (logged)
            sys.exit(STARTUP_FAILURE)
