"""Soak test: many concurrent streams for a long time; the server's RSS and open fds stay flat.

    python -m bench.soak --minutes 30 --streams 200      (``make soak``)

Starts the fake LLM (``python -m flowhost.testing.fake_llm``) and ``flowhost serve
examples/flows/chat`` (defaults: chat history and tracing on) on free 127.0.0.1 ports, then keeps
``--streams`` streaming clients going (``POST /apps/chat``, ``Accept: text/event-stream``; each
reply is ``--chunks`` pieces ``--chunk-delay`` s apart; every 10th client hangs up after the first
event, to exercise the cancellation path) until ``--minutes`` have passed. Every ``--interval`` s
it samples the server's VmRSS (/proc/PID/status) and open file descriptors (/proc/PID/fd).

Verdict (exit 0 / 1): flat means the mean of the last quarter of the samples is within +10% of
the mean of the second quarter (the first quarter is warm-up), for RSS and for fds; the server
must also still be running and fewer than 1% of the streams may fail. Under load most fds are
the sockets of streams in flight, so the sockets are also compared idle: before the load (after
a few warm-up streams) and after it, once the clients are gone; more than ``IDLE_FD_SLACK``
extra sockets left behind is a leak. (Idle file fds may rise by the SQL connection pool's
growth, up to its size: 3 -> 10 connections to the SQLite file with WAL; reported, not judged.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.procs import EXAMPLES, HOST, Pinning, ServerProc, Servers

TOKEN = "soak-token"
GROWTH = 0.10  # allowed growth of the last quarter over the second quarter
IDLE_FD_SLACK = 5
KEEPALIVE = 5.0  # httpx's default keep-alive expiry (the openai SDK's too)


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss_kib: int
    fds: int
    sockets: int
    done: int
    failed: int
    aborted: int


@dataclass
class Counters:
    done: int = 0
    failed: int = 0
    aborted: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        self.failed += 1
        self.errors[what] = self.errors.get(what, 0) + 1


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> tuple[int, int]:
    """(open fds, of which sockets)."""
    fds = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile
            fds -= 1
    return fds, sockets


async def client(
    http: httpx.AsyncClient, n: int, question: str, until: float, counters: Counters
) -> None:
    """One client: stream after stream until ``until`` (monotonic)."""
    i = 0
    while time.monotonic() < until:
        i += 1
        hang_up = (n + i) % 10 == 0
        try:
            async with http.stream("POST", "/apps/chat", json={"question": question}) as r:
                if r.status_code != 200:
                    await r.aread()
                    counters.fail(f"HTTP {r.status_code}: {r.text[:120]}")
                    continue
                events = 0
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        events += 1
                        if hang_up:
                            break
                if hang_up:
                    counters.aborted += 1
                elif events == 0:
                    counters.fail("a stream without events")
                else:
                    counters.done += 1
        except httpx.HTTPError as exc:
            counters.fail(f"{type(exc).__name__}: {exc}"[:160])


async def sampler(
    server: ServerProc, started: float, until: float, interval: float, counters: Counters
) -> list[Sample]:
    samples: list[Sample] = []
    next_at = started + interval
    while next_at <= until + 0.001 and server.proc.poll() is None:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        try:
            rss, (fds, sockets) = rss_kib(server.pid), open_fds(server.pid)
        except OSError:
            break
        now = time.monotonic() - started
        s = Sample(now, rss, fds, sockets, counters.done, counters.failed, counters.aborted)
        samples.append(s)
        print(
            f"{s.t:7.0f} s  RSS {s.rss_kib / 1024:8.1f} MiB  fds {s.fds:5d} ({s.sockets:4d} sockets)  "
            f"streams done {s.done:7d}  hung up {s.aborted:6d}  failed {s.failed:5d}",
            flush=True,
        )
        next_at += interval
    return samples


async def idle_fds(
    server: ServerProc, at_most: int | None = None, timeout: float = 15.0
) -> tuple[int, int]:
    """The server's (fds, sockets) once its connections have drained: polled until the sockets
    are ``at_most`` (or until they stop falling) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    fds, sockets = open_fds(server.pid)
    while time.monotonic() < deadline and (at_most is None or sockets > at_most):
        await asyncio.sleep(0.5)
        now = open_fds(server.pid)
        if at_most is None and now[1] >= sockets:
            return now
        fds, sockets = now
    return fds, sockets


@dataclass
class Result:
    samples: list[Sample]
    counters: Counters
    idle_before: tuple[int, int]  # (fds, sockets)
    idle_after: tuple[int, int]


async def warm_up(server: ServerProc, question: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as http:
        for _ in range(5):
            r = await http.post("/apps/chat", json={"question": question})
            r.raise_for_status()


async def load(server: ServerProc, args: argparse.Namespace) -> Result:
    chunks = "|".join(f"w{i}" for i in range(args.chunks))
    question = f"[[fake:chunks={chunks}]][[fake:chunk_delay={args.chunk_delay:g}]] soak"
    await warm_up(server, question)
    before = await idle_fds(server)
    counters = Counters()
    # httpx's default expiry: under flowhost's keep-alive timeout (75 s) the client closes an
    # idle connection first. (With uvicorn's 5 s, even a 3 s expiry here saw ~0.05% of the
    # streams fail unsent, ReadError, on a connection the server had just closed.)
    limits = httpx.Limits(
        max_connections=args.streams + 8,
        max_keepalive_connections=args.streams,
        keepalive_expiry=KEEPALIVE,
    )
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    timeout = httpx.Timeout(60.0, connect=10.0)
    async with httpx.AsyncClient(
        base_url=server.url, headers=headers, limits=limits, timeout=timeout
    ) as http:
        started = time.monotonic()
        until = started + args.minutes * 60
        clients = [
            asyncio.create_task(client(http, n, question, until, counters))
            for n in range(args.streams)
        ]
        samples = await sampler(server, started, until, args.interval, counters)
        await asyncio.wait_for(asyncio.gather(*clients), timeout=120)
    # Idle again: flowhost's pooled upstream connections are closed once they have been idle
    # for their keep-alive expiry (4 s) and the pool is used again; the clients' connections
    # closed with their pool. So: wait past that (KEEPALIVE + 1 s), run the warm-up again,
    # then count.
    await asyncio.sleep(KEEPALIVE + 1)
    if server.proc.poll() is None:
        await warm_up(server, question)
    after = (
        await idle_fds(server, at_most=before[1] + IDLE_FD_SLACK)
        if server.proc.poll() is None
        else (-1, -1)
    )
    return Result(samples, counters, before, after)


def quarter_means(values: list[float]) -> tuple[float, float]:
    """(mean of the second quarter, mean of the last quarter)."""
    q = len(values) // 4
    return statistics.fmean(values[q : 2 * q]), statistics.fmean(values[-q:])


def verdict(result: Result, server_alive: bool) -> bool:
    samples, counters = result.samples, result.counters
    ok = True
    print()
    if len(samples) < 4:
        print(f"FAIL: only {len(samples)} samples; run longer than 4 intervals")
        return False
    for name, values in (
        ("RSS (MiB)", [s.rss_kib / 1024 for s in samples]),
        ("open fds", [float(s.fds) for s in samples]),
    ):
        second, last = quarter_means(values)
        growth = (last - second) / second if second else 0.0
        flat = last <= second * (1 + GROWTH)
        ok &= flat
        print(
            f"{name:10s} second quarter {second:9.1f}  last quarter {last:9.1f}  "
            f"growth {growth:+6.1%}  min {min(values):9.1f}  max {max(values):9.1f}  "
            f"{'flat' if flat else 'GROWING'}"
        )
    (fds0, sockets0), (fds1, sockets1) = result.idle_before, result.idle_after
    leaked = sockets1 - sockets0
    print(
        f"idle       before the load {fds0} fds ({sockets0} sockets), after it {fds1} fds "
        f"({sockets1} sockets): {'no socket leak' if leaked <= IDLE_FD_SLACK else 'SOCKET LEAK'}"
    )
    ok &= leaked <= IDLE_FD_SLACK
    total = counters.done + counters.failed + counters.aborted
    rate = counters.failed / total if total else 1.0
    print(
        f"streams: {counters.done} complete, {counters.aborted} hung up on purpose, "
        f"{counters.failed} failed ({rate:.2%})"
    )
    for what, count in sorted(counters.errors.items(), key=lambda e: -e[1])[:10]:
        print(f"  {count:6d} x {what}")
    if rate >= 0.01:
        print("FAIL: 1% or more of the streams failed")
        ok = False
    if not server_alive:
        print("FAIL: the server exited during the soak")
        ok = False
    print("VERDICT:", "PASS (flat)" if ok else "FAIL")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--chunks", type=int, default=20, help="content pieces per reply")
    p.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between pieces")
    args = p.parse_args(argv)
    with Servers(Pinning(None, None)) as servers:
        fake = servers.start(
            "fake-llm", ["-m", "flowhost.testing.fake_llm", "--host", HOST], cpus=None
        )
        env = {
            "OPENAI_BASE_URL": f"{fake.url}/v1",
            "OPENAI_API_KEY": "sk-soak",
            "OPENAI_MODEL": "fake-chat",
            "FLOWHOST_LLM_MAX_RETRIES": "0",
        }
        argv_srv = ["-m", "flowhost", "serve", str(EXAMPLES / "chat"), "--token", TOKEN]
        server = servers.start("flowhost-chat", argv_srv, cpus=None, env=env, timeout=60)
        print(
            f"soak: {args.streams} streams for {args.minutes:g} min against {server.url} "
            f"(pid {server.pid}); {args.chunks} pieces {args.chunk_delay:g} s apart per reply",
            flush=True,
        )
        result = asyncio.run(load(server, args))
        alive = server.proc.poll() is None
        log = server.output().splitlines()
        problems = [ln for ln in log if ln.startswith(("WARNING", "ERROR", "CRITICAL"))]
        if problems:
            print(f"\nserver log: {len(problems)} warnings/errors; the first distinct ones:")
            for line in list(dict.fromkeys(problems))[:10]:
                print("  ", line[:200])
        if not alive:
            print(server.output()[-3000:], file=sys.stderr)
    return 0 if verdict(result, alive) else 1


if __name__ == "__main__":
    sys.exit(main())
