"""The floor: what an echo request costs when the durable work flowhost does for it is all
there is, with no framework around it.

A plain ASGI app on the same uvicorn settings as ``bench/baseline_app.py``. ``POST /`` does what
``flowhost serve examples/flows/echo --no-history`` must do for ``{"question": "hi"}``, each step
in the least code: the request id (``X-Request-Id`` or a new UUIDv7), a body-size check, the
JSON body parsed and its input checked, a run id and a W3C trace id, the echo function called,
the run counted and timed in Prometheus metrics, the run's trace (run and node span, inputs and
outputs as JSON text) queued and written every 20 ms, one row per run, to a SQLite table with
flowhost's trace-table schema and indexes (``flowhost.store.traces.trace_table``) in a worker
thread, and the answer ``{"answer":"echo: hi"}`` with ``X-Request-Id`` and ``X-Trace-Id``.

It is not a server to use (no auth, no errors beyond a 400, no history, no OTLP); ``python -m
bench simple`` runs it beside flowhost and the bare app (no target) to show how much of
flowhost's cost per request is the work itself and how much the way flowhost is built.

Run: ``python -m bench.floor_app --port 8002``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from prometheus_client import Counter, Histogram
from sqlalchemy import MetaData, create_engine, insert
from sqlalchemy.dialects import sqlite

from bench.baseline_app import serve
from flowhost.ids import new_trace_id, uuid7
from flowhost.store.traces import TraceNames, sqlite_time_text, trace_table

__all__ = ["Floor", "main"]

MAX_BODY: Final = 1 << 20
BATCH_WINDOW: Final = 0.02
RUNS = Counter("floor_runs", "runs", ["app", "protocol", "status"])
DURATION = Histogram("floor_run_duration_seconds", "run duration", ["app", "protocol"])
_OK = RUNS.labels("echo", "simple", "ok")
_DURATION = DURATION.labels("echo", "simple")
_JSON: Final = [(b"content-type", b"application/json")]


def echo(question: str, chat_history: list[Any] | None = None) -> str:
    return f"echo: {question}"


class Floor:
    """The ASGI app (see the module)."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / "floor.db"
        metadata = MetaData()
        table = trace_table(TraceNames("floor"), metadata)
        engine = create_engine(f"sqlite:///{path}")
        metadata.create_all(engine)
        engine.dispose()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.insert_sql = str(insert(table).compile(dialect=sqlite.dialect()))
        self.pending: list[tuple[Any, ...]] = []
        self.wake: asyncio.Event | None = None
        self.flusher: asyncio.Task[None] | None = None
        self.batch_window = BATCH_WINDOW

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(self.insert_sql, rows)
        self.db.execute("COMMIT")

    async def _flush_forever(self) -> None:
        assert self.wake is not None
        while True:
            await self.wake.wait()
            await asyncio.sleep(self.batch_window)
            await self.flush()

    async def flush(self) -> None:
        """Write every queued run now."""
        assert self.wake is not None
        self.wake.clear()
        batch, self.pending = self.pending, []
        if batch:
            await asyncio.to_thread(self._write, [_row(*run) for run in batch])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["method"] == "GET":
            await _answer(send, 200, b'{"status":"ok"}', [])
        else:
            await self._run(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.wake = asyncio.Event()
                self.flusher = asyncio.create_task(self._flush_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.flusher is not None:
                    self.flusher.cancel()
                self.db.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _run(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        rid = b""
        length = 0
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value[:128]
            elif key == b"content-length" and value.isdigit():
                length = int(value)
        rid = rid or uuid7().encode()
        if length > MAX_BODY:
            await _answer(send, 413, b'{"code":"PayloadTooLarge"}', [(b"x-request-id", rid)])
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            given = orjson.loads(body)
            inputs = {"question": given["question"], "chat_history": given.get("chat_history", [])}
            if not isinstance(inputs["question"], str):
                raise TypeError("question")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            await _answer(send, 400, b'{"code":"InvalidInput"}', [(b"x-request-id", rid)])
            return
        start, clock = time.time_ns(), time.perf_counter()
        run_id, trace_id = uuid7(), new_trace_id()
        node_start = time.time_ns()
        answer = echo(**inputs)
        node_end = time.time_ns()
        outputs = {"answer": answer}
        self.pending.append((trace_id, run_id, rid, inputs, outputs, start, node_start, node_end))
        assert self.wake is not None
        self.wake.set()
        _DURATION.observe(time.perf_counter() - clock)
        _OK.inc()
        trace_hex = f"{trace_id:032x}".encode()
        headers = [(b"x-request-id", rid), (b"x-trace-id", trace_hex)]
        await _answer(send, 200, orjson.dumps(outputs), headers)


def _row(
    trace_id: int,
    run_id: str,
    rid: bytes,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    start: int,
    node_start: int,
    node_end: int,
) -> tuple[Any, ...]:
    """The trace table's row of one run (its node span in ``spans``)."""
    end = time.time_ns()
    inputs_json = orjson.dumps(inputs).decode()
    # as flowhost stores them: not what the columns hold (type, app, run id, status)
    attributes = {
        "flowhost.request_id": rid.decode("latin-1"),
        "input.value": inputs_json,
        "output.value": orjson.dumps(outputs).decode(),
    }
    span_id = f"{random.getrandbits(64):016x}"
    node = {
        "span_id": f"{random.getrandbits(64):016x}",
        "parent_span_id": span_id,
        "name": "echo",
        "span_type": "python",
        "status": "completed",
        "start_ns": node_start,
        "end_ns": node_end,
        "attributes": {"input.value": inputs_json, "output.value": outputs["answer"]},
    }
    return (
        f"{trace_id:032x}",
        span_id,
        None,
        "echo",
        "completed",
        run_id,
        "echo",
        None,
        sqlite_time_text(start),
        sqlite_time_text(end),
        (end - start) // 1000,
        None,
        None,
        orjson.dumps(attributes).decode(),
        orjson.dumps([node]).decode(),
    )


async def _answer(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    length = [(b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": status, "headers": _JSON + length + headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--data-dir", type=Path, help="where floor.db goes [a temporary folder]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flowhost-floor-") as tmp:
        serve(Floor(args.data_dir or Path(tmp)), args.host, args.port)


if __name__ == "__main__":
    main()
