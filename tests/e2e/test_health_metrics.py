"""``/health/live``, ``/health/ready`` and ``/metrics`` on real servers (and ready's 503 in process)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowhost.config import Settings
from flowhost.server.app import create_app
from flowhost.testing import FakeLLM

Server = Any  # tests/conftest.py's Server
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


def test_live_and_ready_need_no_token(examples_server: Server) -> None:
    live = httpx.get(f"{examples_server.url}/health/live")
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    ready = httpx.get(f"{examples_server.url}/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ok"
    assert ready.json()["checks"]["database"] == "ok"
    # the old /health stays as it was
    assert httpx.get(f"{examples_server.url}/health").json() == {"status": "ok"}


def test_metrics_need_the_token(examples_server: Server) -> None:
    resp = httpx.get(f"{examples_server.url}/metrics")
    assert resp.status_code == 401
    assert resp.headers["content-type"].startswith("application/problem+json")


def test_metrics_count_runs_tokens_and_errors(examples_server: Server, llm: FakeLLM) -> None:
    url, headers = examples_server.url, examples_server.headers
    before = httpx.get(f"{url}/metrics", headers=headers).text
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        ok = client.post(
            "/apps/chat",
            json={"question": "hi [[fake:chunks=a|b|c]]"},
            headers={"Accept": "text/event-stream"},
        )
        assert ok.status_code == 200
        ok.read()
        bad = client.post("/apps/chat", json={"question": "[[fake:status=500]]"})
        assert bad.status_code >= 500
        resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    after = resp.text

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("flowhost_runs_total", app="chat", protocol="simple", status="ok") == 1
    assert grew("flowhost_runs_total", app="chat", protocol="simple", status="failed") == 1
    assert grew("flowhost_run_duration_seconds_count", app="chat", protocol="simple") == 2
    assert grew("flowhost_run_first_output_seconds_count", app="chat", protocol="simple") >= 1
    assert grew("flowhost_run_errors_total", app="chat") == 1
    assert grew("flowhost_tokens_total", model="fake-chat", direction="output") == 3
    assert grew("flowhost_tokens_total", model="fake-chat", direction="input") > 0


def test_metrics_are_summed_over_workers(
    server_factory: Callable[..., Server], chat_llm_env: dict[str, str]
) -> None:
    server = server_factory(EXAMPLES, "--workers", "2", token="t", env=chat_llm_env)
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        for _ in range(6):  # new connections: the kernel spreads them over the workers
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as one:
                assert one.post("/apps/echo", json={"question": "x"}).status_code == 200
        text = client.get("/metrics").text
    assert sample(text, "flowhost_runs_total", app="echo", status="ok") == 6


# --- readiness failures, in process (a real database cannot be taken down from a test) ---------


class _Store:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    async def ping(self) -> None:
        if self.fail:
            raise RuntimeError("connection refused by 10.0.0.1 (password=hunter2)")


class _Vectors:
    backend = "test"

    async def ping(self) -> None:
        raise RuntimeError("milvus is gone")


class _Knowledge:
    vectors = _Vectors()


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return create_app(Settings(flows=EXAMPLES, data_dir=tmp_path, token="t"))


async def _ready(app: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/health/ready")


@pytest.mark.anyio
async def test_ready_answers_503_naming_the_database(app: Any) -> None:
    app.state.store = _Store(fail=True)
    resp = await _ready(app)
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["status"] == 503
    assert body["title"] == "Service Unavailable"
    assert body["code"] == "ServiceUnavailable"
    assert "database" in body["detail"]
    assert body["checks"] == {"database": "down"}
    assert "hunter2" not in resp.text  # an open route never echoes a server's error text


@pytest.mark.anyio
async def test_ready_answers_503_naming_the_vector_store(app: Any) -> None:
    app.state.store = _Store(fail=False)
    app.state.knowledge = _Knowledge()
    resp = await _ready(app)
    assert resp.status_code == 503
    assert resp.json()["checks"] == {"database": "ok", "vector_store": "down"}
    assert "vector_store" in resp.json()["detail"]


@pytest.mark.anyio
async def test_ready_before_the_store_is_open(app: Any) -> None:
    resp = await _ready(app)
    assert resp.status_code == 503
    assert resp.json()["checks"] == {"database": "down"}


class _Indexing:
    """A knowledge service whose declared bases are still indexing (or cannot say)."""

    def __init__(self, pending: dict[str, int] | Exception) -> None:
        self.pending = pending
        self.vectors = self

    async def ping(self) -> None:
        return None

    async def declared_indexing(self) -> dict[str, int]:
        if isinstance(self.pending, Exception):
            raise self.pending
        return self.pending


@pytest.mark.anyio
async def test_ready_reports_declared_bases_still_indexing(app: Any) -> None:
    app.state.store = _Store(fail=False)
    app.state.knowledge = _Indexing({"rag_docs": 2})
    resp = await _ready(app)
    assert resp.status_code == 200  # searches wait for them: the replica is ready
    assert resp.json() == {
        "status": "ok",
        "checks": {"database": "ok", "vector_store": "ok"},
        "indexing": {"rag_docs": 2},
    }
    app.state.knowledge = _Indexing({})
    assert "indexing" not in (await _ready(app)).json()
    app.state.knowledge = _Indexing(RuntimeError("lost the connection"))
    resp = await _ready(app)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "checks": {"database": "ok", "vector_store": "ok"}}
