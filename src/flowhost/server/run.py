"""Run the server with uvicorn (one process, or ``--workers N``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import uvicorn

from flowhost.config import Settings
from flowhost.metrics import MULTIPROC_ENV  # metrics
from flowhost.server.app import create_app

__all__ = ["app_from_env", "serve"]

_SETTINGS_ENV = "FLOWHOST__SETTINGS_JSON"


def app_from_env() -> object:
    """Factory for worker processes: the parent passes its settings through the environment."""
    return create_app(Settings.model_validate(json.loads(os.environ[_SETTINGS_ENV])))


def serve(settings: Settings) -> None:
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.graceful_timeout,
        "server_header": False,
    }
    if settings.workers > 1:
        data = settings.model_dump(mode="json")
        for key in ("token", "database_url"):
            secret = getattr(settings, key)
            data[key] = secret.get_secret_value() if secret else None
        os.environ[_SETTINGS_ENV] = json.dumps(data)
        create_app(settings)  # validate the flows once in the parent: fail fast
        # metrics: every worker writes its values to one directory, /metrics sums them
        own_dir = None if os.environ.get(MULTIPROC_ENV) else tempfile.mkdtemp(prefix="flowhost-")
        if own_dir is not None:
            os.environ[MULTIPROC_ENV] = own_dir
        try:
            uvicorn.run(
                "flowhost.server.run:app_from_env", factory=True, workers=settings.workers, **common
            )
        finally:
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)
    else:
        uvicorn.run(create_app(settings), **common)
