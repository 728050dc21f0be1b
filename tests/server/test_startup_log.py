"""What ``flowhost serve`` says about itself at start: flowhost's own log lines reach the output
(uvicorn configures only its own loggers), at ``--log-level``, and hold no secret."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

ECHO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "echo"
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
