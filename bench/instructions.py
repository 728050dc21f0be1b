"""Instructions per request of the echo app, counted by valgrind: an A/B that noise cannot move.

``python -m bench.instructions [--requests N] [--targets bare,off,on,floor]``

Timings on a shared machine drift by 20-50% between runs (see RESULTS.md), far more than most
changes to the request path are worth. Instructions executed do not drift: the same code, input
and environment give the same count within ~1%, whatever else the machine is doing. Each target
runs in a process of its own under ``valgrind --tool=callgrind`` with instrumentation off; the
app is called in-process as an ASGI app by 32 coroutines (no HTTP server, no sockets), warmed
up, and the parent turns counting on (``callgrind_control``) for exactly ``N`` requests:

- ``bare``: ``bench/baseline_app.py`` (Starlette);
- ``off``: ``flowhost serve examples/flows/echo --no-history`` with tracing off;
- ``on``: the same with tracing on; every measured run's spans are written to the local store
  inside the counted window;
- ``floor``: ``bench/floor_app.py``, the echo request's durable work with no framework (its
  trace rows, too, are written inside the window).

Under valgrind a request lasts ~50x longer, so three wall-clock mechanisms are set to what they
do at full speed: the disconnect watcher (started 20 ms into a request, which no echo request
reaches) is off; the echo function stays on the event loop (``InlinePolicy`` sends a sync
function back to the thread pool when a call takes over 2 ms of wall time, which valgrind and a
busy machine together made common: counts then rose by half); and the span pipeline (the
floor's writer too) writes its batches at the end of the window (1,000 runs a transaction;
the floor's: all of them) rather than every 20 ms (which valgrind's slowness would shrink to
1-run batches). What the count leaves out: uvicorn and
httptools (the same under both apps), and time spent waiting. A count is the whole process's,
all threads.

Exit status 0, or 2 when valgrind is missing or a target failed. The figures are for comparing
two commits on one machine; they are not targets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["count", "main"]

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("bare", "off", "on", "floor")
CONCURRENCY = 32
WARMUP_PER_TASK = 100
BODY = b'{"question": "hi"}'
_COLLECTED = re.compile(r"Collected : (\d+)")


# --- the child: one app, in-process, under valgrind ----------------------------------------------


def _scope() -> dict[str, Any]:
    from flowhost.server.middleware import BODY_COMPLETE

    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        # as flowhost's protocol marks a request whose whole body has arrived (an app that
        # does not know the key ignores it)
        BODY_COMPLETE: True,
    }


def _build(target: str, data_dir: Path) -> Any:
    if target == "bare":
        from bench.baseline_app import app

        return app
    if target == "floor":
        from bench.floor_app import Floor

        return Floor(data_dir)
    import flowhost.wire.http
    from flowhost.config import Settings
    from flowhost.nodes.python import InlinePolicy
    from flowhost.server.app import create_app

    flowhost.wire.http.WATCH_AFTER = 1e9  # see the module: no echo request reaches 20 ms
    # ... and the echo function, a few µs at full speed, stays inline (see the module)
    InlinePolicy.QUICK_S = InlinePolicy.SLOW_S = 1e9  # type: ignore[misc]
    settings = Settings(
        flows=ROOT / "examples" / "flows" / "echo",
        history=False,
        data_dir=data_dir,
        enable_tracing=target == "on",
    )
    return create_app(settings)


async def _child(target: str, requests: int, warmup: int, sync: Path) -> None:
    app = _build(target, Path(tempfile.mkdtemp(prefix="flowhost-instr-")))
    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"] == "lifespan.startup.failed":
            raise SystemExit(f"startup failed: {message.get('message')}")

    await lifespan.put({"type": "lifespan.startup"})
    running = asyncio.create_task(
        app(
            {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
            lifespan.get,
            lifespan_send,
        )
    )
    await started.wait()
    pipeline: Any = None  # what writes the traces: flowhost's span pipeline, or the floor
    if target == "floor":
        pipeline = app
    elif target != "bare":
        tracing = getattr(app.state, "tracing", None)
        pipeline = tracing.pipeline if tracing is not None else None
    if pipeline is not None:
        pipeline.batch_window = 3600.0  # written by the flushes below (see the module)
    statuses: list[int] = []
    hang = asyncio.Event()  # never set: a request's second receive waits, as for a live client
    scope = _scope()  # built once (it imports): each request gets a copy, as each gets its own

    async def one() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await hang.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app({**scope, "headers": list(scope["headers"])}, receive, send)

    async def load(per_task: int) -> None:
        async def task() -> None:
            for _ in range(per_task):
                await one()

        await asyncio.gather(*(task() for _ in range(CONCURRENCY)))

    await load(warmup)
    if pipeline is not None:
        await pipeline.flush()
    statuses.clear()
    (sync / "ready").touch()
    _await_file(sync / "go", 600)
    await load(requests // CONCURRENCY)
    if pipeline is not None:
        await pipeline.flush()  # the counted runs' spans are stored inside the window
    (sync / "done").touch()
    _await_file(sync / "stop", 600)
    if set(statuses) != {200}:
        raise SystemExit(f"{target}: statuses {sorted(set(statuses))}, expected only 200")
    await lifespan.put({"type": "lifespan.shutdown"})
    await running


# --- the parent ----------------------------------------------------------------------------------


def count(target: str, requests: int, warmup: int = WARMUP_PER_TASK) -> float:
    """Instructions per request of ``target`` (see the module)."""
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if valgrind is None or control is None:
        raise RuntimeError("valgrind is not installed (apt-get install -y valgrind)")
    with tempfile.TemporaryDirectory(prefix="flowhost-instr-") as tmp:
        sync, log = Path(tmp), Path(tmp) / "valgrind.log"
        cmd = [
            valgrind,
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={tmp}/callgrind.out",
            f"--log-file={log}",
            sys.executable,
            "-m",
            "bench.instructions",
            "--child",
            target,
            "--requests",
            str(requests),
            "--warmup",
            str(warmup),
            "--sync",
            str(sync),
        ]
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        with subprocess.Popen(cmd, cwd=ROOT, env=env) as proc:
            try:
                _await_file(sync / "ready", 900, proc)
                _control(control, "on", proc.pid)
                (sync / "go").touch()
                _await_file(sync / "done", 900, proc)
                _control(control, "off", proc.pid)
                (sync / "stop").touch()
                if proc.wait(timeout=600) != 0:
                    raise RuntimeError(f"{target}: exit status {proc.returncode}")
            finally:
                if proc.poll() is None:
                    proc.kill()
        match = _COLLECTED.search(log.read_text(encoding="utf-8", errors="replace"))
        if match is None:
            raise RuntimeError(f"{target}: no instruction count in valgrind's log")
        return int(match.group(1)) / (requests // CONCURRENCY * CONCURRENCY)


def _control(control: str, state: str, pid: int) -> None:
    """Turn callgrind's counting on or off in process ``pid``."""
    subprocess.run([control, "-i", state, str(pid)], check=True, capture_output=True)


def _await_file(path: Path, limit_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``path`` exists (the child: the whole process, so nothing runs meanwhile);
    the parent also stops waiting when the child ``proc`` has exited."""
    deadline = time.monotonic() + limit_s
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the child exited ({proc.returncode}) before {path.name}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {path.name} within {limit_s:g} s")
        time.sleep(0.02)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("--requests", type=int, default=3200, help="counted requests per target")
    parser.add_argument("--targets", default=",".join(TARGETS), help="of bare, off, on, floor")
    parser.add_argument(
        "--warmup", type=int, default=WARMUP_PER_TASK, help="uncounted requests per coroutine"
    )
    parser.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--sync", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        import uvloop  # the server's loop (uvicorn's, with uvicorn[standard])

        uvloop.run(_child(args.child, args.requests, args.warmup, args.sync))
        return 0
    targets = [t for t in args.targets.split(",") if t]
    if not set(targets) <= set(TARGETS):
        parser.error(f"--targets: choose from {', '.join(TARGETS)}")
    results: dict[str, float] = {}
    # counts do not depend on timing: the targets run side by side, one per CPU
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {t: pool.submit(count, t, args.requests, args.warmup) for t in targets}
        try:
            for target, future in futures.items():
                results[target] = future.result()
                print(f"{target}: {results[target]:,.0f} instructions a request", flush=True)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if "bare" in results:
        for target in ("off", "on", "floor"):
            if target in results:
                print(f"{target}/bare: {results[target] / results['bare']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
