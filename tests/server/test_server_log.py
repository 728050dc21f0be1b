"""What ``flowhost serve`` logs: flowhost's own lines reach the output (uvicorn configures only
its own loggers), at ``--log-level``, with no secret; the start says what is served where, and a
failed run is one line the operator can match to the client's request id."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowhost.config import Settings
from flowhost.exceptions import ServiceUnavailable, one_line
from flowhost.server import logs
from flowhost.server.app import create_app
from flowhost.server.errors import render_error
from flowhost.server.logs import JsonFormatter, OneLineFormatter
from flowhost.server.run import log_config
from flowhost.tracing.setup import shown_endpoint

ECHO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "echo"
PROTOCOLS = Path(__file__).resolve().parents[1] / "flows_fixtures" / "protocols"
Server = Any  # tests/conftest.py's Server


def test_start_names_the_app_the_database_and_the_auth_without_the_token(
    server_factory: Callable[..., Server],
) -> None:
    token = "s3cret-token-value"
    server = server_factory(ECHO, token=token)
    out = server.output()
    assert "INFO:     flowhost.server: serving echo (default) from " in out
    assert "database sqlite+aiosqlite:///" in out
    assert "chat history on; tracing on, local span store" in out
    assert "every route but health and docs needs the bearer token" in out
    assert token not in out


def test_an_open_server_on_a_public_address_is_a_warning(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(ECHO, "--host", "0.0.0.0", "--no-history", "--disable-tracing")
    out = server.output()
    assert "WARNING:  flowhost.server: no token set and listening on 0.0.0.0" in out
    assert "chat history off; tracing off" in out


def test_log_level_applies_to_flowhost_lines(server_factory: Callable[..., Server]) -> None:
    server = server_factory(ECHO, "--log-level", "warning")
    out = server.output()
    assert "Application startup complete" not in out  # uvicorn's INFO lines: off too
    assert "flowhost.server" not in out


def test_a_failed_run_is_logged_with_its_request_id(
    server_factory: Callable[..., Server],
) -> None:
    token = "s3cret-token-value"
    server = server_factory(PROTOCOLS, "--default-app", "explode", token=token)
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=10) as client:
        reply = client.post("/", json={"question": " why "})
        quoting = client.post("/", json={"question": f"why {token}"})
        ok = client.post("/apps/plain", json={"topic": "hi"})
    assert reply.status_code == quoting.status_code == 500
    request_id = reply.json()["request_id"]
    deadline = time.monotonic() + 10  # the log line is written as the run ends: poll for it
    while request_id not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in server.output().splitlines() if request_id in x)
    assert line.startswith("WARNING:  flowhost.service: run ")
    assert f"of app explode (simple, request {request_id}) failed" in line
    assert "the answer to 'why' is unknowable" in line
    # the node's message quoted the server's token: the client has it, the log does not
    assert token in quoting.json()["detail"]
    rid = quoting.json()["request_id"]
    while rid not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "the answer to 'why [redacted]' is unknowable" in server.output()
    assert token not in server.output()
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-request-id"] not in server.output()  # a run that succeeds: silent


def test_access_log_flag_logs_each_request(server_factory: Callable[..., Server]) -> None:
    server = server_factory(ECHO, "--access-log", "--no-history")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/", json={"question": "hi"}).status_code == 200
    deadline = time.monotonic() + 10
    while '"POST / HTTP/1.1" 200' not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"POST / HTTP/1.1" 200' in server.output()


def test_otlp_export_lines_mask_a_password_and_carry_their_logger(
    server_factory: Callable[..., Server],
) -> None:
    with socket.socket() as s:  # bound, never listening: the collector is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://user:otlp-pw-123@127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # export at once, not after 5 s
        }
        server = server_factory(ECHO, "--no-history", env=env)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/", json={"question": "hi"}).status_code == 200
        deadline = time.monotonic() + 30
        while "WARNING:  opentelemetry." not in server.output() and time.monotonic() < deadline:
            time.sleep(0.05)
    out = server.output()
    assert f"OTLP/HTTP to http://***@127.0.0.1:{port}" in out
    assert "WARNING:  opentelemetry.exporter.otlp" in out  # the exporter's own, in our format
    assert "otlp-pw-123" not in out


def test_shown_endpoint_masks_credentials_only() -> None:
    assert shown_endpoint("https://u:p4ss@collector:4318/v1") == "https://***@collector:4318/v1"
    assert shown_endpoint("http://u:pw@[::1]:4318") == "http://***@[::1]:4318"
    assert shown_endpoint("http://api-key@collector:4318") == "http://***@collector:4318"
    assert shown_endpoint("http://collector:4318/a@b") == "http://collector:4318/a@b"


def test_a_failure_message_cannot_forge_a_log_line(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    flow = tmp_path / "raiser"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(
        "inputs:\n  question: {type: string}\n"
        "outputs:\n  answer: {type: string, reference: '${boom.output}'}\n"
        "nodes:\n- name: boom\n  type: python\n  source: {type: code, path: boom.py}\n"
        "  inputs:\n    text: ${inputs.question}\n"
    )
    (flow / "boom.py").write_text("def boom(text: str) -> str:\n    raise ValueError(text)\n")
    server = server_factory(flow)
    forged = "WARNING:  flowhost.server: forged line"
    with httpx.Client(base_url=server.url, timeout=10) as client:
        reply = client.post("/", json={"question": f"first\n{forged}\r\nthird"})
    assert reply.status_code == 500
    deadline = time.monotonic() + 10
    while reply.json()["request_id"] not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = server.output().splitlines()
    assert not [x for x in lines if x.startswith(forged)]
    (line,) = [x for x in lines if reply.json()["request_id"] in x]
    assert f"ValueError: first\\n{forged}\\r\\nthird" in line


def test_one_line_escapes_every_control_character_but_tab() -> None:
    text = "a\nb\r\x1b[31mred\x00\x7f\x9b\u2028z\tt 中文"
    assert one_line(text) == "a\\nb\\r\\x1b[31mred\\x00\\x7f\\x9b\\u2028z\tt 中文"
    assert one_line("plain 中文") == "plain 中文"


def test_a_5xx_outside_a_run_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "flowhost.server"):
        response = render_error("/x", ServiceUnavailable("down\nERROR: forged"), "rid-1")
    assert response.status_code == 503
    assert caplog.messages == ["request rid-1 failed: down\\nERROR: forged"]


def test_every_served_log_line_is_one_line_but_tracebacks_keep_theirs() -> None:
    """Not only flowhost's own messages: a library's, or one quoting a document's name."""
    config = log_config("info")
    for name in ("flowhost", "default"):  # flowhost's and the root's handler; uvicorn's
        assert config["formatters"][name]["()"] == "flowhost.server.logs.OneLineFormatter"
    formatter = OneLineFormatter(fmt=config["formatters"]["flowhost"]["fmt"], use_colors=False)
    forged = "INFO:     flowhost.server: forged"
    record = logging.LogRecord("some.library", logging.WARNING, __file__, 1, "a %s", None, None)
    record.args = (f"doc\n{forged}\r\n",)
    assert formatter.format(record) == f"WARNING:  some.library: a doc\\n{forged}\\r\\n"
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord(
            "flowhost.knowledge", logging.ERROR, __file__, 1, "x\ny", None, sys.exc_info()
        )
    lines = formatter.format(failed).splitlines()
    assert lines[0] == "ERROR:    flowhost.knowledge: x\\ny"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


def test_served_log_lines_never_carry_the_servers_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whoever logs it, in the message or a traceback: the token, the database password and the
    Milvus token that create_app knows are scrubbed from the line."""
    monkeypatch.setattr(logs, "_redactor", None)
    token, db_pw, milvus = "tok-0123456789abcdef", "db-pw-0123456789", "root:milvus-pw-0123456"
    settings = Settings(
        flows=ECHO,
        token=token,
        database_url=f"mysql+asyncmy://u:{db_pw}@127.0.0.1:1/x",
        milvus_token=milvus,
    )
    create_app(settings)
    formatter = OneLineFormatter(fmt="%(levelprefix)s %(name)s: %(message)s", use_colors=False)
    try:
        raise RuntimeError(f"driver says {db_pw}")
    except RuntimeError:
        record = logging.LogRecord(
            "some.driver", logging.ERROR, __file__, 1, "%s / %s", (token, milvus), sys.exc_info()
        )
    text = formatter.format(record)
    assert text.startswith("ERROR:    some.driver: [redacted] / [redacted]\nTraceback")
    assert "RuntimeError: driver says [redacted]" in text
    assert all(secret not in text for secret in (token, db_pw, milvus))

    json_text = JsonFormatter().format(record)
    assert all(secret not in json_text for secret in (token, db_pw, milvus))
    entry = json.loads(json_text)
    assert entry["message"] == "[redacted] / [redacted]"
    assert entry["exception"].endswith("RuntimeError: driver says [redacted]")


def test_json_lines_carry_time_level_logger_and_the_access_fields() -> None:
    record = logging.LogRecord(
        "flowhost.knowledge", logging.INFO, __file__, 1, "indexed %s", ("a\nb.md",), None
    )
    record.created = 1796601600.25  # 2026-12-07T00:00:00.250Z
    line = JsonFormatter(fmt="%(message)s", use_colors=False).format(record)
    assert "\n" not in line  # one line; the newline in the message is JSON-escaped
    assert json.loads(line) == {
        "time": "2026-12-07T00:00:00.250+00:00",
        "level": "INFO",
        "logger": "flowhost.knowledge",
        "message": "indexed a\nb.md",
    }
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/run?x=1", "1.1", 200),
        None,
    )
    entry = json.loads(JsonFormatter().format(access))
    assert entry["message"] == '127.0.0.1:5000 - "POST /run?x=1 HTTP/1.1" 200'
    assert (entry["client"], entry["method"], entry["path"]) == (
        "127.0.0.1:5000",
        "POST",
        "/run?x=1",
    )
    assert (entry["http_version"], entry["status"]) == ("1.1", 200)


def test_log_format_json_makes_every_served_line_json(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(ECHO, "--log-format", "json", "--access-log", "--no-history")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/", json={"question": "hi"}).status_code == 200
    deadline = time.monotonic() + 10
    while '"status":200' not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    entries = [json.loads(line) for line in server.output().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    messages = {e["logger"]: e["message"] for e in entries}
    assert messages["flowhost.server"].startswith("no token set")  # the last start line
    assert any(e["message"].startswith("serving echo (default) from ") for e in entries)
    assert (
        messages["uvicorn.error"] == "Uvicorn running on " + server.url + " (Press CTRL+C to quit)"
    )
    (access,) = [e for e in entries if e["logger"] == "uvicorn.access" and e["method"] == "POST"]
    assert (access["method"], access["path"], access["status"]) == ("POST", "/", 200)
