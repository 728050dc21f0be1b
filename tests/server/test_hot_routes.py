"""The run routes' short way in (server/hot.py): which routes take it, and that it keeps the
guards. The routes' behaviour is covered end to end by the protocol tests."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from flowhost.config import Settings
from flowhost.server.app import create_app

ROOT = Path(__file__).resolve().parents[2]
RUN_ROUTES = {
    "/",
    "/apps/{app_id}",
    "/run",
    "/apps/{app_id}/run",
    "/v1/chat/completions",
    "/api/v1/apps/{app_id}/completion",
}

pytestmark = pytest.mark.anyio


def _app(tmp_path: Path, **kw: object) -> object:
    settings = Settings(
        flows=ROOT / "examples" / "flows",
        default_app="echo",
        data_dir=tmp_path,
        history=False,
        enable_tracing=False,
        **kw,  # type: ignore[arg-type]
    )
    return create_app(settings)


def test_exactly_the_run_routes_are_hot_and_still_documented(tmp_path: Path) -> None:
    app = _app(tmp_path)
    hot = {r.regex.pattern for r in app._hot_routes}  # type: ignore[attr-defined]
    assert len(hot) == len(RUN_ROUTES)
    paths = app.openapi()["paths"]  # type: ignore[attr-defined]
    for route in RUN_ROUTES:
        assert "post" in paths[route], route


async def test_hot_routes_keep_token_request_id_and_body_limit(tmp_path: Path) -> None:
    app = _app(tmp_path, token="s3cret", max_body_bytes=2048)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with (
        app.router.lifespan_context(app),  # type: ignore[attr-defined]
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        r = await client.post("/apps/echo", json={"question": "hi"})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": "Bearer s3cret", "X-Request-Id": "rid-1"}
        r = await client.post("/apps/echo", json={"question": "hi"}, headers=auth)
        assert r.status_code == 200
        assert r.json() == {"answer": "echo: hi"}
        assert r.headers["x-request-id"] == "rid-1"
        r = await client.post("/apps/echo", content=b"{" + b" " * 4096 + b"}", headers=auth)
        assert r.status_code == 413
        r = await client.post("/apps/nope", json={"question": "hi"}, headers=auth)
        assert r.status_code == 404
        assert r.json()["request_id"] == "rid-1"
        r = await client.get("/run", headers=auth)  # not POST: FastAPI answers as before
        assert r.status_code == 405
