"""Benchmark ``history``: the p50 latency a chat-history turn adds, on SQLite and MariaDB.

``python -m bench.history [--samples N] [--warmup N] [--mysql-url URL | --no-mysql] [--no-pin]``

Per backend, two ``flowhost serve examples/flows/echo`` servers run side by side on the same CPU:
one with chat history (SQLite in its data dir, or MariaDB under a fresh service name whose tables
are dropped at the end) and one with ``--no-history``. One sequential client, one keep-alive
connection per server, alternates the same request between them (``POST /`` with a
``Chat-Session-Id``; sessions of ``TURNS_PER_SESSION`` turns, so the history server loads up to
that many earlier turns and stores one per request). The added latency is p50(on) - p50(off),
measured in the same run. Targets: <= +1 ms on SQLite, <= +3 ms on MariaDB.

Wall-clock figures depend on how busy the machine is; the MariaDB round trips per turn do not.
They are counted in this process on the same statements the server sends (a store of its own,
the same session pattern): every statement, COMMIT, ROLLBACK and ping is one round trip.

Exit status: 0 when every target is met, 1 when one is missed, 2 when a measurement failed.
``run(cfg)`` gives the same as a ``bench`` scenario section.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, MetaData, event, inspect

from bench.common import Config, cpu_seconds, fmt_ms
from bench.loadgen import percentile
from bench.procs import EXAMPLES, HOST, Pinning, ServerProc, Servers
from bench.report import Check, Section, table

__all__ = ["TARGETS_MS", "main", "run"]

ECHO = EXAMPLES / "echo"
TARGETS_MS = {"sqlite": 1.0, "mariadb": 3.0}
TURNS_PER_SESSION = 10
SAMPLES = 300
WARMUP = 30
DEFAULT_MYSQL_URL = "mysql+asyncmy://root@127.0.0.1:3306/test"


@dataclass
class Result:
    backend: str
    on: list[float] = field(default_factory=list)  # ms, sorted
    off: list[float] = field(default_factory=list)
    cpu_on: float = 0.0  # server CPU ms per request (user + system, all threads)
    cpu_off: float = 0.0
    error: str | None = None

    @property
    def target(self) -> float:
        return TARGETS_MS[self.backend]

    def p(self, which: str, pct: float) -> float:
        return percentile(getattr(self, which), pct)

    @property
    def added_p50(self) -> float:
        return self.p("on", 50) - self.p("off", 50)

    @property
    def passed(self) -> bool:
        return self.error is None and self.added_p50 <= self.target


class _Client:
    """One keep-alive HTTP/1.1 connection; ``post`` returns the request's latency in ms."""

    def __init__(self, server: ServerProc) -> None:
        self.conn = http.client.HTTPConnection(HOST, server.port, timeout=30)

    def post(self, body: bytes, session_id: str) -> float:
        headers = {"Content-Type": "application/json", "Chat-Session-Id": session_id}
        t0 = time.perf_counter()
        self.conn.request("POST", "/", body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        elapsed = (time.perf_counter() - t0) * 1e3
        if resp.status != 200 or not data.startswith(b'{"answer":"echo: '):
            raise RuntimeError(f"unexpected answer {resp.status}: {data[:300]!r}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


def _measure(on: ServerProc, off: ServerProc, samples: int, warmup: int, result: Result) -> None:
    clients = {"on": _Client(on), "off": _Client(off)}
    times: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, float] = {}
    run_tag = uuid.uuid4().hex
    try:
        for i in range(warmup + samples):
            if i == warmup:
                cpu = {"on": cpu_seconds(on.pid), "off": cpu_seconds(off.pid)}
            session_id = f"bench:{run_tag}:{i // TURNS_PER_SESSION:06d}"
            body = json.dumps({"question": f"question {i}"}).encode()
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for name in order:
                elapsed = clients[name].post(body, session_id)
                if i >= warmup:
                    times[name].append(elapsed)
    finally:
        for client in clients.values():
            client.close()
    result.on, result.off = sorted(times["on"]), sorted(times["off"])
    result.cpu_on = (cpu_seconds(on.pid) - cpu["on"]) * 1e3 / samples
    result.cpu_off = (cpu_seconds(off.pid) - cpu["off"]) * 1e3 / samples


def _serve(
    servers: Servers, name: str, cpus: tuple[int, ...] | None, tracing: bool, *args: str
) -> ServerProc:
    """``flowhost serve`` the echo flow with a data dir of its own (SQLite files not shared)."""
    argv = ["-m", "flowhost", "serve", str(ECHO), *args]
    env = {"FLOWHOST_DATA_DIR": str(servers.tmp / name)}
    if not tracing:
        env["FLOWHOST_ENABLE_TRACING"] = "false"
    return servers.start(name, argv, cpus=cpus, env=env, timeout=60.0)


async def _drop_service(url: str, service: str) -> None:
    from flowhost.store.engine import create_store_engine, normalize_url

    suffix = f"_{service}"
    engine = create_store_engine(normalize_url(url))

    def drop(conn: Connection) -> None:
        names = [
            n
            for n in inspect(conn).get_table_names()
            if n.startswith("flowhost_") and n.endswith(suffix)
        ]
        metadata = MetaData()
        metadata.reflect(conn, only=names)
        metadata.drop_all(conn)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(drop)
    finally:
        await engine.dispose()


async def count_round_trips(url: str, tmp: Path, sessions: int = 5) -> dict[str, float]:
    """Round trips per chat turn on ``url`` (MariaDB/MySQL), by kind, averaged over the turns.

    The server's history path in this process: ``open_session`` with the history, then
    ``append_turn``, for sessions of ``TURNS_PER_SESSION`` turns (the first creates it).
    """
    from flowhost.store import NewTurn, Store

    service = f"bench_rt_{uuid.uuid4().hex[:8]}"
    store = await Store.open(url, data_dir=tmp, service=service)
    counts: Counter[str] = Counter()
    try:
        sync = store.engine.sync_engine
        dialect: Any = sync.dialect
        for name in ("do_commit", "do_rollback", "do_ping"):
            call: Callable[..., Any] = getattr(dialect, name)

            def counted(*args: Any, _name: str = name, _call: Callable[..., Any] = call) -> Any:
                counts[_name.removeprefix("do_").upper()] += 1
                return _call(*args)

            setattr(dialect, name, counted)

        def statement(conn: Any, cursor: Any, sql: str, *_: Any) -> None:
            counts[sql.split(None, 1)[0].upper()] += 1

        event.listen(sync, "before_cursor_execute", statement)
        run_tag = uuid.uuid4().hex
        for i in range(sessions * TURNS_PER_SESSION):
            session_id = f"bench:{run_tag}:{i // TURNS_PER_SESSION:06d}"
            await store.chats.open_session(
                session_id, app_id="echo", user_id=None, title="q", history_turns=20
            )
            question = {"question": f"question {i}"}
            answer = {"answer": f"echo: question {i}"}
            await store.chats.append_turn(
                NewTurn(session_id, uuid.uuid4().hex, "echo", question, answer)
            )
    finally:
        await store.close()
        await _drop_service(url, service)
    turns = sessions * TURNS_PER_SESSION
    return {kind: n / turns for kind, n in sorted(counts.items())}


def _round_trip_note(url: str, tmp: Path) -> str:
    try:
        per_turn = asyncio.run(count_round_trips(url, tmp))
    except Exception as exc:
        return f"MariaDB round trips per turn not counted: {type(exc).__name__}: {exc}"[:500]
    kinds = ", ".join(f"{kind} {n:.1f}" for kind, n in per_turn.items())
    return (
        f"MariaDB round trips per turn (counted in-process, sessions of {TURNS_PER_SESSION} "
        f"turns): {sum(per_turn.values()):.1f} ({kinds})."
    )


def measure_all(
    pinning: Pinning, samples: int, warmup: int, mysql_url: str | None, *, tracing: bool = False
) -> tuple[list[Result], list[str]]:
    """Both backends (MariaDB unless ``mysql_url`` is None); notes say what was left out.

    Tracing is off in every server unless ``tracing``: it is not what is measured, and its
    background span writes would land in the same database as the history.
    """
    results: list[Result] = []
    notes: list[str] = []
    cpus = pinning.server
    with Servers(pinning) as servers:
        off = _serve(servers, "flowhost-no-history", cpus, tracing, "--no-history")
        result = Result("sqlite")
        try:
            on = _serve(
                servers, "flowhost-history-sqlite", cpus, tracing, "--service-name", "bench"
            )
            _measure(on, off, samples, warmup, result)
            servers.stop(on)
        except Exception as exc:
            traceback.print_exc()
            result.error = f"{type(exc).__name__}: {exc}"[:500]
        results.append(result)

        if mysql_url is None:
            notes.append("MariaDB not measured (--no-mysql).")
            return results, notes
        service = f"bench_{uuid.uuid4().hex[:8]}"
        result = Result("mariadb")
        try:
            on = _serve(
                servers,
                "flowhost-history-mariadb",
                cpus,
                tracing,
                "--database-url",
                mysql_url,
                "--service-name",
                service,
            )
            _measure(on, off, samples, warmup, result)
            servers.stop(on)
        except Exception as exc:
            traceback.print_exc()
            result.error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            try:
                asyncio.run(_drop_service(mysql_url, service))
            except Exception as exc:
                notes.append(f"could not drop the MariaDB tables of service {service}: {exc}")
        results.append(result)
        notes.append(_round_trip_note(mysql_url, servers.tmp))
    return results, notes


def section(
    results: list[Result], notes: list[str], samples: int, pinning: Pinning, tracing: bool
) -> Section:
    sec = Section(
        "history: latency added by chat history",
        f"echo flow, `POST /` with `Chat-Session-Id` (sessions of {TURNS_PER_SESSION} turns), "
        f"{samples} sequential samples per server after a warm-up, alternating between the "
        "history server and a `--no-history` server, one keep-alive connection each "
        f"({pinning.describe()}); tracing {'on' if tracing else 'off'} in both. Times in ms; "
        "server CPU is the server process's user + system time per request (all threads), "
        "which the latency approaches on an idle machine.",
    )
    rows = [
        [
            "backend",
            "off p50",
            "on p50",
            "added p50",
            "off p90",
            "on p90",
            "server CPU off",
            "server CPU on",
            "added CPU",
        ]
    ]
    for r in results:
        if r.error is not None:
            rows.append([r.backend, *(["-"] * 8)])
            sec.notes.append(f"{r.backend}: {r.error}")
            continue
        rows.append(
            [
                r.backend,
                fmt_ms(r.p("off", 50)),
                fmt_ms(r.p("on", 50)),
                f"{r.added_p50:+.3f}",
                fmt_ms(r.p("off", 90)),
                fmt_ms(r.p("on", 90)),
                fmt_ms(r.cpu_off),
                fmt_ms(r.cpu_on),
                f"{r.cpu_on - r.cpu_off:+.3f}",
            ]
        )
        sec.checks.append(
            Check(
                f"p50 added by history ({r.backend})",
                f"{r.added_p50:+.3f} ms",
                f"<= +{r.target:g} ms",
                r.passed,
            )
        )
    sec.tables.append(rows)
    sec.notes.extend(notes)
    if any(r.error for r in results):
        sec.error = "; ".join(f"{r.backend}: {r.error}" for r in results if r.error)
    return sec


def run(cfg: Config) -> Section:
    """The ``bench`` scenario form (MariaDB from FLOWHOST_BENCH_MYSQL_URL / FLOWHOST_TEST_MYSQL_URL)."""
    samples = 100 if cfg.quick else SAMPLES
    results, notes = measure_all(cfg.pinning, samples, WARMUP, _default_mysql_url())
    return section(results, notes, samples, cfg.pinning, False)


def _default_mysql_url() -> str:
    return (
        os.environ.get("FLOWHOST_BENCH_MYSQL_URL")
        or os.environ.get("FLOWHOST_TEST_MYSQL_URL")
        or DEFAULT_MYSQL_URL
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    parser.add_argument("--samples", type=int, default=SAMPLES, help="timed requests per server")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="untimed requests per server")
    parser.add_argument(
        "--mysql-url",
        default=None,
        help="MariaDB/MySQL URL [env FLOWHOST_BENCH_MYSQL_URL, FLOWHOST_TEST_MYSQL_URL; "
        f"{DEFAULT_MYSQL_URL}]",
    )
    parser.add_argument("--no-mysql", action="store_true", help="measure SQLite only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--tracing", action="store_true", help="leave tracing on (the default of serve) in both"
    )
    args = parser.parse_args(argv)
    if args.samples < 10 or args.warmup < 0:
        parser.error("--samples must be at least 10 and --warmup not negative")
    pinning = Pinning.detect(enabled=not args.no_pin)
    pinning.pin_self_to_load()
    mysql_url = None if args.no_mysql else (args.mysql_url or _default_mysql_url())
    results, notes = measure_all(
        pinning, args.samples, args.warmup, mysql_url, tracing=args.tracing
    )
    sec = section(results, notes, args.samples, pinning, args.tracing)
    print(sec.description, "", table(sec.tables[0]), "", sep="\n")
    for check in sec.checks:
        print(f"{check.verdict}  {check.name}: {check.measured} (target {check.target})")
    for note in sec.notes:
        print(f"note: {note}")
    if sec.error:
        print(f"ERROR  {sec.error}")
        return 2
    return 0 if all(c.passed for c in sec.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
