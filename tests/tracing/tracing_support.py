"""Helpers shared by the tracing tests (not a test module).

Imported as ``tracing_support`` (pytest puts this folder on ``sys.path``); fixtures live in
``conftest.py``.
"""

from __future__ import annotations

import gzip
import shutil
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flowhost.engine.events import RunEvent
from flowhost.service import RunRequest, RunService
from flowhost.store import Store
from flowhost.tracing import Tracing

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "flows"
FIXTURES = ROOT / "tests" / "flows_fixtures"
APPS = {
    "chat": EXAMPLES / "chat",
    "branch": EXAMPLES / "branch",
    "echo": EXAMPLES / "echo",
    "context": FIXTURES / "engine" / "context",
    "fail": FIXTURES / "served" / "fail",
}
SERVER_TOKEN = "tok-SERVER-SECRET-1"
API_KEY = "sk-API-KEY-SECRET-2"


@dataclass
class Traced:
    """A RunService whose only sink is the tracing sink; spans also go to ``exporter``."""

    service: RunService
    tracing: Tracing
    exporter: InMemorySpanExporter
    store: Store | None
    last_trace_id: str = ""

    async def run(self, app_id: str, inputs: dict[str, Any], **kw: Any) -> list[RunEvent]:
        prepared = await self.service.prepare(
            RunRequest(app_id=app_id, inputs=inputs, protocol="test", **kw)
        )
        self.last_trace_id = prepared.trace_id
        return [ev async for ev in prepared.events()]

    async def spans(self) -> list[ReadableSpan]:
        """Every span finished so far, as the exporters got them."""
        await self.tracing.flush()
        return list(self.exporter.get_finished_spans())


MakeTraced = Callable[..., Awaitable[Traced]]


def apps_folder(tmp: Path) -> Path:
    """A folder of apps (copies of examples and fixtures) under ``tmp``."""
    folder = tmp / "apps"
    if not folder.exists():
        for name, src in APPS.items():
            shutil.copytree(src, folder / name)
    return folder


class OTLPReceiver:
    """A tiny real OTLP/HTTP receiver: records every ``POST /v1/traces`` body (protobuf).

    Runs uvicorn in a background thread on a free port; ``spans()`` decodes what arrived.
    """

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/v1/traces", self._traces, methods=["POST"])])
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        with self._lock:
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
        payload = ExportTraceServiceResponse().SerializeToString()
        return Response(payload, media_type="application/x-protobuf")

    def spans(self) -> list[Any]:
        """Every span received so far (``opentelemetry.proto.trace.v1.Span`` messages)."""
        out: list[Any] = []
        with self._lock:
            bodies = list(self.bodies)
        for body in bodies:
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    out.extend(ss.spans)
        return out

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the OTLP receiver did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


def attribute_values(span: Any) -> dict[str, Any]:
    """A protobuf span's attributes as a plain dict (string, int, double, bool values)."""
    out: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out
