"""/openapi.json documents the errors flowhost gives: 400 (never FastAPI's 422), 401, 404,
408 and 413, each in its protocol's error shape. schemathesis (tests/hardening) checks real
responses against these schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowhost.config import Settings
from flowhost.server.app import create_app

ROOT = Path(__file__).resolve().parents[2]


def _spec(tmp_path: Path) -> dict[str, Any]:
    settings = Settings(flows=ROOT / "examples" / "flows", default_app="echo", data_dir=tmp_path)
    spec: dict[str, Any] = create_app(settings).openapi()
    return spec


def _schema(op: dict[str, Any], status: str) -> tuple[str, str]:
    ((media, body),) = op["responses"][status]["content"].items()
    return media, body["schema"]["$ref"].rsplit("/", 1)[-1]


def test_no_422_anywhere_and_its_schemas_are_gone(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    for ops in spec["paths"].values():
        for op in ops.values():
            assert "422" not in op["responses"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_each_protocol_documents_its_own_error_shape(tmp_path: Path) -> None:
    paths = _spec(tmp_path)["paths"]
    simple = paths["/apps/{app_id}"]["post"]
    for status in ("400", "401", "404", "408", "413"):
        assert _schema(simple, status) == ("application/problem+json", "Problem")
    openai = paths["/v1/chat/completions"]["post"]
    assert _schema(openai, "413") == ("application/json", "ErrorResponse")
    bailian = paths["/api/v1/apps/{app_id}/completion"]["post"]
    assert _schema(bailian, "408") == ("application/json", "AppError")
    history = paths["/api/v1/history/sessions/{session_id}"]["delete"]
    assert set(history["responses"]) == {"204", "400", "401", "404"}


def test_open_paths_document_no_auth_error(tmp_path: Path) -> None:
    paths = _spec(tmp_path)["paths"]
    assert "401" not in paths["/health"]["get"]["responses"]
    assert "401" in paths["/apps"]["get"]["responses"]


def test_run_routes_declare_the_headers_they_read(tmp_path: Path) -> None:
    """The run routes take the plain Request: their headers are declared by hand, so that
    Swagger UI offers a field for each (seed 000 points users at it)."""
    paths = _spec(tmp_path)["paths"]
    for path in ("/", "/apps/{app_id}", "/run", "/apps/{app_id}/run", "/v1/chat/completions"):
        params = {p["name"]: p for p in paths[path]["post"]["parameters"]}
        for header in ("Chat-Session-Id", "Chat-User-Id", "Memory-Id"):
            assert params[header]["in"] == "header", (path, header)
            assert params[header]["required"] is False
        assert ("app_id" in params) == ("{app_id}" in path)
