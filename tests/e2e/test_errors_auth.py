"""Auth and every request error, through a real `flowhost serve`: a clean 4xx, never a 500.

``examples_server`` (token "secret", default 10 MiB body limit) and ``fixtures_server``
(tests/flows_fixtures/served, token "secret", ``--max-body-bytes 4096``) come from
tests/conftest.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

OPEN = ["/health", "/health/live", "/health/ready", "/docs", "/openapi.json"]


def assert_clean(r: requests.Response, status: int) -> dict[str, Any]:
    """A JSON error body with the status, no stack trace, and the request id."""
    assert r.status_code == status, r.text
    for leak in ("Traceback", 'File "', "site-packages"):
        assert leak not in r.text
    body: dict[str, Any] = r.json()
    assert r.headers["x-request-id"]
    return body


def api_routes(server: Any) -> list[tuple[str, str]]:
    """(method, path) of every route in the OpenAPI document that is not open."""
    spec = requests.get(f"{server.url}/openapi.json").json()
    routes = []
    for path, methods in spec["paths"].items():
        if path in OPEN:
            continue
        concrete = path.replace("{app_id}", "echo")
        while "{" in concrete:
            start, end = concrete.index("{"), concrete.index("}")
            concrete = concrete[:start] + "x" * 32 + concrete[end + 1 :]
        routes += [(m.upper(), concrete) for m in methods]
    return routes


def test_every_api_route_needs_the_token(examples_server: Any) -> None:
    routes = api_routes(examples_server)
    expected = {
        ("POST", "/"),
        ("POST", "/run"),
        ("POST", "/apps/echo"),
        ("POST", "/apps/echo/run"),
        ("GET", "/apps"),
        ("GET", "/metrics"),
    }
    assert expected <= set(routes)
    for method, path in routes:
        url = f"{examples_server.url}{path}"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "secret"}):
            r = requests.request(method, url, json={"question": "hi"}, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert "Traceback" not in r.text
        ok = requests.request(method, url, json={"question": "hi"}, headers=examples_server.headers)
        assert ok.status_code != 401, (method, path)


def test_problem_body_for_a_missing_token(examples_server: Any) -> None:
    r = requests.post(examples_server.url, json={"question": "hi"})
    body = assert_clean(r, 401)
    assert (body["code"], body["detail"]) == ("InvalidApiKey", "No API-key provided.")
    assert r.headers["www-authenticate"] == "Bearer"
    r = requests.post(examples_server.url, json={"question": "hi"}, headers={"Authorization": "x"})
    assert assert_clean(r, 401)["detail"] == "Invalid API-key provided."
    r = requests.post(
        examples_server.url, json={"question": "hi"}, headers={"Authorization": "Bearer no"}
    )
    assert assert_clean(r, 401)["detail"] == "Invalid API-key provided."


@pytest.mark.parametrize("path", OPEN)
def test_health_and_docs_are_open(examples_server: Any, path: str) -> None:
    r = requests.get(f"{examples_server.url}{path}")
    assert r.status_code == 200
    if path == "/openapi.json":
        assert "/run" in r.json()["paths"]


def test_every_openapi_ref_resolves(examples_server: Any) -> None:
    spec = requests.get(f"{examples_server.url}/openapi.json").json()
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    for ref in refs:
        target: Any = spec
        assert ref.startswith("#/"), ref
        for part in ref[2:].split("/"):
            assert isinstance(target, dict), ref
            assert part in target, f"{ref} does not resolve"
            target = target[part]
    run_body = spec["paths"]["/run"]["post"]["requestBody"]["content"]["application/json"]
    props = run_body["schema"]["properties"]
    assert {"inputs", "stream", "response_config"} <= set(props)


def test_request_id_is_echoed(examples_server: Any) -> None:
    r = requests.post(
        f"{examples_server.url}/apps/nope",
        json={},
        headers={**examples_server.headers, "X-Request-Id": "req-42"},
    )
    body = assert_clean(r, 404)
    assert r.headers["x-request-id"] == "req-42" == body["request_id"]


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "says"),
    [
        ("/apps/typed", b'{"question": ', 400, "body", "not valid JSON"),
        ("/apps/typed", b"", 400, "body", "empty"),
        ("/apps/typed", b"[1, 2]", 400, "body", "must be a JSON object"),
        ("/apps/typed", b"\xff\xfe{", 400, "body", "not valid JSON"),
        ("/apps/typed", b'{"count": 2}', 400, "question", "missing required input 'question'"),
        ("/apps/typed", b'{"question": "q", "count": "abc"}', 400, "count", "type int"),
        ("/apps/typed", b'{"question": "q", "count": "--5"}', 400, "count", "type int"),
        ("/apps/typed", b'{"question": "q", "count": 1, "flag": "yes"}', 400, "flag", "type bool"),
        ("/apps/typed", b'{"question": "q", "count": 1, "tags": "[1,"}', 400, "tags", "JSON"),
        ("/apps/typed", b'{"question": "q", "count": 1, "ratio": NaN}', 400, "ratio", "double"),
        (
            "/apps/typed",
            b'{"question": "q", "count": 1, "ratio": 1' + b"0" * 400 + b"}",
            400,
            "ratio",
            "double",
        ),
        ("/apps/typed/run", b'{"inputs": {"question": "q", "count": true}}', 400, "count", "int"),
        ("/apps/typed", b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}", 400, "body", "nested deeper"),
        ("/apps/nope", b"{}", 404, None, "app 'nope' not found"),
        ("/apps/nope/run", b'{"inputs": {}}', 404, None, "app 'nope' not found"),
        ("/no/such/route", b"{}", 404, None, "Not Found"),
    ],
)
def test_request_errors(
    fixtures_server: Any, path: str, body: bytes, status: int, field: str | None, says: str
) -> None:
    headers = {**fixtures_server.headers, "Content-Type": "application/json"}
    r = requests.post(f"{fixtures_server.url}{path}", data=body, headers=headers)
    problem = assert_clean(r, status)
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["status"] == status
    assert problem.get("field") == field
    assert says in problem["detail"]


def test_json_nesting_inside_strings_is_fine(fixtures_server: Any) -> None:
    question = "[" * 200 + "{" * 200
    r = requests.post(
        f"{fixtures_server.url}/apps/typed",
        json={"question": question, "count": 1},
        headers=fixtures_server.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["answer"]["question"] == ["str", question]


def test_body_over_the_limit_with_content_length(fixtures_server: Any) -> None:
    body = json.dumps({"question": "x" * 5000, "count": 1}).encode()
    r = requests.post(
        f"{fixtures_server.url}/apps/typed",
        data=body,
        headers={**fixtures_server.headers, "Content-Type": "application/json"},
    )
    problem = assert_clean(r, 413)
    assert problem["code"] == "RequestTooLarge"
    assert "4096 bytes" in problem["detail"]


def test_body_over_the_limit_when_chunked(fixtures_server: Any) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        yield b'{"question": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'", "count": 1}'

    r = requests.post(
        f"{fixtures_server.url}/apps/typed",
        data=chunks(),
        headers={**fixtures_server.headers, "Content-Type": "application/json"},
    )
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in r.request.headers
    assert assert_clean(r, 413)["code"] == "RequestTooLarge"


def test_a_small_chunked_body_is_fine(fixtures_server: Any) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"question": "hi",'
        yield b' "count": 2}'

    r = requests.post(
        f"{fixtures_server.url}/apps/typed",
        data=chunks(),
        headers={**fixtures_server.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["answer"]["count"] == ["int", 2]


def test_lone_surrogates_are_answered_as_valid_json(fixtures_server: Any) -> None:
    r = requests.post(
        f"{fixtures_server.url}/apps/typed",
        data=b'{"question": "a\\ud800b", "count": 1}',
        headers={**fixtures_server.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["answer"]["question"] == ["str", "a\ud800b"]


def test_a_huge_integer_literal_is_a_bad_request(examples_server: Any) -> None:
    r = requests.post(
        examples_server.url,
        data=b'{"question": "q", "n": 1' + b"0" * 5000 + b"}",
        headers={**examples_server.headers, "Content-Type": "application/json"},
    )
    problem = assert_clean(r, 400)
    assert problem["field"] == "body"


def test_wrong_method(fixtures_server: Any) -> None:
    r = requests.get(f"{fixtures_server.url}/apps/typed", headers=fixtures_server.headers)
    assert assert_clean(r, 405)["code"] == "MethodNotAllowed"
    assert r.headers["allow"] == "POST"  # RFC 9110: a 405 names the methods that are allowed
