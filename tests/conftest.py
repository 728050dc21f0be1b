"""Shared fixtures: the fake LLM over real HTTP, and real flowhost servers on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowhost.testing import FakeLLM

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "flows"
FLOWS = Path(__file__).resolve().parent / "flows_fixtures"
IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_url(var: str) -> str:
    """A test service URL from the environment: skip when unset locally, fail under CI=true."""
    url = os.environ.get(var)
    if not url:
        if IN_CI:
            pytest.fail(f"{var} is not set; CI must test against the real service")
        pytest.skip(f"{var} not set")
    return url


@dataclass
class Server:
    """A `flowhost serve` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    token: str | None = None
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int | None = None) -> None:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0
) -> None:
    """Poll /health until it answers 200 (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not become healthy in {timeout}s")


def start_server(
    path: Path,
    tmp: Path,
    *args: str,
    token: str | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Server:
    port = port or free_port()
    log = tmp / f"server-{port}.log"
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "DASHSCOPE_", "FLOWHOST_"))
    }
    full_env.update({"FLOWHOST_DATA_DIR": str(tmp / "data"), "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "flowhost", "serve", str(path), "--port", str(port), *args]
    if token:
        cmd += ["--token", token]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=tmp)
    server = Server(proc, port, log, token, list(args))
    try:
        wait_healthy(server.url, proc)
    except Exception:
        server.stop()
        raise RuntimeError(f"server failed to start:\n{server.output()}") from None
    return server


def kb_base_values(pipeline_id: str, name: str | None = None) -> dict[str, Any]:
    """The catalogue row of a small unstructured knowledge base (KnowledgeRepository.create_base)."""
    return {
        "pipeline_id": pipeline_id,
        "name": name or pipeline_id,
        "description": None,
        "kind": "unstructured",
        "embedding_connection": None,
        "embedding_model": "m",
        "embedding_dim": 4,
        "space": "s",
        "columns": [],
        "metadata_keys": [],
        "chunk_size": 100,
        "chunk_overlap": 10,
    }


@pytest.fixture
def base_values() -> Callable[..., dict[str, Any]]:
    """``kb_base_values`` for tests in other folders (tests are not a package)."""
    return kb_base_values


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def llm(fake_llm: FakeLLM) -> FakeLLM:
    """The session's fake LLM, reset for this test."""
    fake_llm.reset()
    return fake_llm


def llm_env(fake: FakeLLM) -> dict[str, str]:
    # OPENAI_MODEL: the chat example names no model, and an OPENAI_API_KEY connection has none.
    return {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_MODEL": "fake-chat",
        "FLOWHOST_LLM_MAX_RETRIES": "0",
    }


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(path: Path = EXAMPLES, *args: str, **kw: object) -> Server:
        s = start_server(path, tmp_path, *args, **kw)  # type: ignore[arg-type]
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def examples_server(
    fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server for a test module: the examples, default app echo, token 'secret', fake LLM."""
    tmp = tmp_path_factory.mktemp("srv")
    s = start_server(EXAMPLES, tmp, "--default-app", "echo", token="secret", env=llm_env(fake_llm))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def fixtures_server(
    fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server for the session (its apps keep no state): tests/flows_fixtures/served,
    token 'secret', 4 KiB bodies, fake LLM."""
    tmp = tmp_path_factory.mktemp("srv")
    s = start_server(
        FLOWS / "served", tmp, "--max-body-bytes", "4096", token="secret", env=llm_env(fake_llm)
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def protocols_server(
    fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server for a test module: tests/flows_fixtures/protocols (the OpenAI / Bailian protocol
    flows), token 'secret', fake LLM, debug logging and the access log on (for secret checks)."""
    tmp = tmp_path_factory.mktemp("proto")
    env = {**llm_env(fake_llm), "FLOWHOST_ACCESS_LOG": "true"}
    s = start_server(FLOWS / "protocols", tmp, "--log-level", "debug", token="secret", env=env)
    yield s
    s.stop()


# --- for the sessions / chat-history e2e tests (tests/e2e/test_sessions.py and friends) ---
# `conftest` is not importable from test modules (tests/store has a conftest too), so the plain
# helpers above are handed out as fixtures.


@pytest.fixture
def chat_llm_env(llm: FakeLLM) -> dict[str, str]:
    """``llm_env`` of this test's (reset) fake LLM: pass as ``server_factory(..., env=...)``."""
    return llm_env(llm)


@pytest.fixture(scope="session")
def db_service_url() -> Callable[[str], str]:
    """``db_service_url("FLOWHOST_TEST_MYSQL_URL")``: ``service_url`` (skip locally, fail in CI)."""
    return service_url


@pytest.fixture(scope="module")
def module_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Server]]:
    """``server_factory`` for servers that the tests of one module share (stopped at its end)."""
    tmp = tmp_path_factory.mktemp("shared")
    servers: list[Server] = []

    def make(path: Path = EXAMPLES, *args: str, **kw: object) -> Server:
        s = start_server(path, tmp, *args, **kw)  # type: ignore[arg-type]
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def memory_server(fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The examples with the fake LLM; memory extraction uses the model 'memory-extractor'."""
    env = {**llm_env(fake_llm), "FLOWHOST_MEMORY_MODEL": "memory-extractor"}
    s = start_server(EXAMPLES, tmp_path_factory.mktemp("mem"), token="secret", env=env)
    yield s
    s.stop()
