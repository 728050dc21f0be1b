"""The browser console (playground, sessions, traces): static files served at ``/ui``.

Plain HTML, CSS and JavaScript in ``static/``, no build step and nothing loaded from elsewhere,
so it works offline. The page itself is public (the token middleware exempts ``/ui``); it asks
for the service token and sends it as ``Authorization: Bearer`` on every API call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "mount"]

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"


def mount(app: FastAPI, path: str = "/ui") -> None:
    """Serve the console at ``path`` (``path`` itself redirects to ``path/``)."""

    relative = path.rstrip("/").rsplit("/", 1)[-1] + "/"  # keeps working behind a path prefix

    async def to_slash() -> RedirectResponse:
        return RedirectResponse(relative, status_code=307)

    app.add_api_route(path, to_slash, methods=["GET"], include_in_schema=False)
    app.mount(path, StaticFiles(directory=STATIC_DIR, html=True), name="console")
