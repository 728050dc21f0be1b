"""The error responses flowhost really gives, in ``/openapi.json``.

FastAPI documents a 422 ``HTTPValidationError`` on every route with parameters or a body; flowhost
answers every invalid request 400 in the protocol's own error shape (``server/errors.py``), and
also answers 401 (token), 404 (no such resource), 408 (body too slow) and 413 (body too large).
``document_errors`` rewrites the generated document once: on each operation 422 becomes 400 and
the others are added, each with the schema of its protocol's error body (OpenAI under ``/v1/``,
DashScope under ``/api/v1/apps/``, RFC 7807 problem details everywhere else), unless the route
documents that status itself.
"""

from __future__ import annotations

from typing import Any, Final

from flowhost.server.middleware import OPEN_PATHS

__all__ = ["PROBLEM_SCHEMA", "document_errors"]

PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "title": "Problem",
    "description": "An error (RFC 7807 problem details, with flowhost's code and request id).",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string", "example": "about:blank"},
        "title": {"type": "string", "example": "Bad Request"},
        "status": {"type": "integer", "example": 400},
        "detail": {"type": "string", "example": "limit: must be at most 100"},
        "code": {"type": "string", "example": "InvalidInput"},
        "request_id": {"type": "string"},
        "field": {"type": "string", "description": "the request field at fault, when known"},
    },
}

# path prefix -> (schema name, media type) of the protocol's error body; longest prefix first
_SHAPES: Final = (
    ("/api/v1/apps/", "AppError", "application/json"),
    ("/v1/", "ErrorResponse", "application/json"),
    ("", "Problem", "application/problem+json"),
)
_DESCRIPTIONS: Final = {
    "400": "Invalid request: the body, a parameter or an input (the error names the field)",
    "401": "Missing or wrong bearer token (when the server has one)",
    "404": "No such resource",
    "408": "The request body did not arrive in time",
    "413": "The request body is larger than the server's limit",
}
_VALIDATION_SCHEMAS: Final = ("HTTPValidationError", "ValidationError")


def _statuses(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    statuses = ["401"]
    if "422" in operation.get("responses", {}) or "parameters" in operation:
        statuses.append("400")
    if "{" in path:
        statuses.append("404")
    if method in ("post", "put", "patch"):
        statuses += ["400", "408", "413"]
    return sorted(set(statuses))


def document_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``spec`` (FastAPI's generated document) in place as the module says; return it."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Problem", PROBLEM_SCHEMA)
    for path, operations in spec.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        name, media = next((n, m) for prefix, n, m in _SHAPES if path.startswith(prefix))
        if name not in schemas:  # that protocol is not served: problem details
            name, media = "Problem", "application/problem+json"
        for method, operation in operations.items():
            statuses = _statuses(method, path, operation)
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in statuses:
                responses.setdefault(
                    status,
                    {
                        "description": _DESCRIPTIONS[status],
                        "content": {media: {"schema": {"$ref": f"#/components/schemas/{name}"}}},
                    },
                )
    text = repr(spec["paths"])
    for unused in _VALIDATION_SCHEMAS:
        if f"#/components/schemas/{unused}'" not in text:
            schemas.pop(unused, None)
    return spec
