"""SIGTERM lets open streams finish (``--graceful-timeout``), then the server exits."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

Server = Any  # tests/conftest.py's Server
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"
SLOW = "[[fake:chunks=a|b|c|d]][[fake:chunk_delay=0.3]]"


def stream_then_signal(server: Server, question: str) -> tuple[str, int | None]:
    """Open a stream on /apps/chat, send SIGTERM once its first event arrived, read the rest.

    Returns the body read (whatever arrived before the connection ended) and the exit code."""
    body: list[str] = []
    with (
        httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client,
        client.stream(
            "POST",
            "/apps/chat",
            json={"question": question},
            headers={"Accept": "text/event-stream"},
        ) as resp,
    ):
        assert resp.status_code == 200
        signalled = False
        try:
            for text in resp.iter_text():
                body.append(text)
                if not signalled and "data:" in "".join(body):
                    server.proc.send_signal(signal.SIGTERM)
                    signalled = True
        except httpx.HTTPError:
            pass  # the server cut the stream (the grace period ran out)
        assert signalled
    return "".join(body), server.proc.wait(30)


def test_sigterm_lets_an_open_stream_finish(
    server_factory: Callable[..., Server], chat_llm_env: dict[str, str]
) -> None:
    server = server_factory(EXAMPLES, "--graceful-timeout", "30", token="t", env=chat_llm_env)
    body, code = stream_then_signal(server, f"hello {SLOW}")
    pieces = [
        json.loads(line.removeprefix("data: ")).get("answer")
        for line in body.splitlines()
        if line.startswith("data: ")
    ]
    assert [p for p in pieces if p] == ["a", "b", "c", "d"], body
    # uvicorn shuts down cleanly, then re-raises the signal it caught: the exit says SIGTERM
    assert code in (0, -signal.SIGTERM)
    assert "Finished server process" in server.output()
    # a new connection is refused once shutdown began: the server is gone now
    try:
        httpx.get(f"{server.url}/health/live", timeout=2)
        raise AssertionError("the server still answers after shutdown")
    except httpx.TransportError:
        pass
    assert "Waiting for connections to close" in server.output()


def test_the_grace_period_is_bounded(
    server_factory: Callable[..., Server], chat_llm_env: dict[str, str]
) -> None:
    server = server_factory(EXAMPLES, "--graceful-timeout", "0", token="t", env=chat_llm_env)
    # 100 pieces 0.3 s apart: far longer than a zero grace period
    pieces = "|".join(f"p{k}" for k in range(100))
    body, _ = stream_then_signal(server, f"[[fake:chunks={pieces}]][[fake:chunk_delay=0.3]]")
    assert '"p99"' not in body
    assert server.proc.poll() is not None
