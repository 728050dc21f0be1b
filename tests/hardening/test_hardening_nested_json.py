"""Deeply nested JSON is refused cleanly (a 4xx in the route's error shape, never a 5xx) on every
route of every protocol that takes a JSON body: the list comes from /openapi.json."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

DEEP = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"question": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
    b"[" * 100_000,  # unterminated too
]


def _json_routes(server: Any) -> list[tuple[str, str]]:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    routes = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            content = op.get("requestBody", {}).get("content", {})
            if method in ("post", "put", "patch") and "application/json" in content:
                concrete = path.replace("{app_id}", "echo")
                while "{" in concrete:
                    start, end = concrete.index("{"), concrete.index("}")
                    concrete = concrete[:start] + "x" * 32 + concrete[end + 1 :]
                routes.append((method.upper(), concrete))
    return routes


def test_deep_nesting_is_a_clean_4xx_everywhere(examples_server: Any) -> None:
    routes = _json_routes(examples_server)
    paths = {p for _, p in routes}
    assert {"/", "/apps/echo", "/v1/chat/completions", "/api/v1/apps/echo/completion"} <= paths
    headers = {**examples_server.headers, "Content-Type": "application/json"}
    failures = []
    with httpx.Client(base_url=examples_server.url, headers=headers, timeout=30) as client:
        for method, path in routes:
            for body in DEEP:
                r = client.request(method, path, content=body)
                if not 400 <= r.status_code < 500 or "Traceback" in r.text or not r.json():
                    failures.append((method, path, body[:20], r.status_code, r.text[:200]))
    assert not failures, failures


@pytest.mark.parametrize(
    ("path", "check"),
    [
        ("/apps/echo", lambda b: b["status"] == 400 and "nested deeper" in b["detail"]),
        ("/apps/echo/run", lambda b: b["status"] == 400 and "nested deeper" in b["detail"]),
        ("/v1/chat/completions", lambda b: "nested deeper" in b["error"]["message"]),
        ("/api/v1/apps/echo/completion", lambda b: "nested deeper" in b["message"]),
    ],
)
def test_each_protocol_names_the_problem(examples_server: Any, path: str, check: Any) -> None:
    headers = {**examples_server.headers, "Content-Type": "application/json"}
    r = httpx.post(f"{examples_server.url}{path}", content=DEEP[1], headers=headers)
    assert r.status_code == 400, r.text
    assert check(r.json()), r.text
